"""Edits along the groups' mean difference of the training codes (normalised as the probes normalise
them), one unit = the whole gap, against the `disease` probe's direction (bundle's unit). Prints the
cosine of the two directions and, for the first visits of 4 test subjects, ventricle / hippocampus
(raw ROI measure) along alpha. usage: meandir.py RUN  (needs RUN/codes.pt from codes.py)"""
import sys, json, math, numpy as np, torch
from dataclasses import replace
from pathlib import Path
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.evaluation.similarity import ssim
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS, spearman
from LDAELib.training.data import read_cohort, visit_order
run = Path(sys.argv[1])
model = load_model(run / "bundle"); pipe = LDAEPipeline(model); sp = model.config.space
split = json.loads((run / "split.json").read_text()); csv = Path(split["settings"]["cohort_csv"])
crow = read_cohort(csv); crow.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
train = [r for r in crow if r.subject in set(split["subjects"]["train"])]
for r in crow: r.fields["_cohort_root"] = str(csv.parent)
meas = build_measure(train, sp, lambda r: ms(r), DEFAULT_LABELS, max_subjects=6)
codes = torch.load(run / "codes.pt")["train"]
d = model.directions["disease"]
yh = (codes["codes"] - d.mean) / d.std
sick = torch.tensor([g == "disease" for g in codes["group"]])
gap = yh[sick].mean(0) - yh[~sick].mean(0)
E = gap.numel()
w = d.weight / d.weight.norm()
print(f"|gap| {float(gap.norm()):.3f} (normalised code, √E = {math.sqrt(E):.2f}); cos(probe normal, gap) {float(gap @ w / gap.norm()):+.3f}; "
      f"probe unit moves the code by {d.scale * math.sqrt(E):.3f}; SD of training codes along gap {float((yh @ (gap / gap.norm())).std()):.3f}")
md = replace(d, name="disease_mean", weight=gap.clone(), scale=float(gap.norm()) / math.sqrt(E))
test = [r for r in crow if r.subject in set(split["subjects"]["test"]) and visit_order(r) == min(visit_order(q) for q in crow if q.subject == r.subject)][:4]
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
for name, direction in (("mean-gap", md), ("probe", d)):
    for r in test:
        x = ms(r)
        out = pipe.edit(x, direction, alphas, steps=10).numpy()[:, 0]
        v = [meas.raw(o) for o in out]
        ven = [round(q["ventricles"], 1) for q in v]; hip = [round(q["hippocampus"], 1) for q in v]
        print(f"{name:8s} {r.subject} {r.get('group')} rec {ssim(out[2], x, 1.0):.3f} ven {ven} rho {spearman(alphas, ven):+.2f} hip {hip} rho {spearman(alphas, hip):+.2f} |d| {np.abs(out[-1]-out[0]).mean():.4f}", flush=True)
