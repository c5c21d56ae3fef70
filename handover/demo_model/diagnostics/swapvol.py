"""Code swap on test subjects: invert scan A with its own code, then sample with the code moved
towards scan B's (alpha 0, 0.5, 1, 1.5; 1 = B's code). Prints ventricles / hippocampus (raw ROI
measure) of the outputs and of both inputs. usage: swapvol.py RUN"""
import sys, json, math, numpy as np, torch
from dataclasses import replace
from pathlib import Path
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS
from LDAELib.training.data import read_cohort, visit_order
run = Path(sys.argv[1])
model = load_model(run / "bundle"); pipe = LDAEPipeline(model); sp = model.config.space
split = json.loads((run / "split.json").read_text()); csv = Path(split["settings"]["cohort_csv"])
crow = read_cohort(csv); crow.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
for r in crow: r.fields["_cohort_root"] = str(csv.parent)
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
train = [r for r in crow if r.subject in set(split["subjects"]["train"])]
meas = build_measure(train, sp, lambda r: ms(r), DEFAULT_LABELS, max_subjects=6)
test = {r.subject: r for r in crow if r.subject in set(split["subjects"]["test"]) and visit_order(r) == 1}
d = model.directions["disease"]; E = d.weight.numel()
alphas = [0.0, 0.5, 1.0, 1.5]
for a, b in (("sub-0014", "sub-0016"), ("sub-0016", "sub-0014"), ("sub-0001", "sub-0016"), ("sub-0016", "sub-0001")):
    xa, xb = ms(test[a]), ms(test[b])
    ya, yb = pipe.embed(xa).float()[0], pipe.embed(xb).float()[0]
    delta = (yb - ya) / d.std
    sw = replace(d, name="swap", weight=delta, scale=float(delta.norm()) / math.sqrt(E))
    out = pipe.edit(xa, sw, alphas, steps=10).numpy()[:, 0]
    ven = [round(meas.raw(o)["ventricles"], 1) for o in out]; hip = [round(meas.raw(o)["hippocampus"], 1) for o in out]
    print(f"{a} → code of {b}: inputs ven {meas.raw(xa)['ventricles']:.1f} / {meas.raw(xb)['ventricles']:.1f}, hip {meas.raw(xa)['hippocampus']:.1f} / {meas.raw(xb)['hippocampus']:.1f}; "
          f"alpha {alphas}: ven {ven} hip {hip} |d| {np.abs(out[2]-out[0]).mean():.4f}", flush=True)
