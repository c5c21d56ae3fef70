"""Code guidance at sampling: g(ȳ) + w·(g(y) − g(ȳ)), ȳ = mean code of training visits; edits measured
in ventricle / hippocampus mL (raw ROI measure) on test subjects. usage: guide.py RUN W [W ...]
GUIDE_MODE=scale: w·g(y) instead (no reference code, no second call)."""
import sys, json, numpy as np, torch
from pathlib import Path
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.evaluation.similarity import ssim
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS, spearman
from LDAELib.training.data import read_cohort, visit_order
run = Path(sys.argv[1]); ws = [float(w) for w in sys.argv[2:]]
model = load_model(run / "bundle"); pipe = LDAEPipeline(model); sp = model.config.space
split = json.loads((run / "split.json").read_text()); csv = Path(split["settings"]["cohort_csv"])
crow = read_cohort(csv); crow.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
train = [r for r in crow if r.subject in set(split["subjects"]["train"])]
for r in crow: r.fields['_cohort_root'] = str(csv.parent)
meas = build_measure(train, sp, lambda r: ms(r), DEFAULT_LABELS, max_subjects=6)
ybar = torch.cat([pipe.embed(ms(r)) for r in train[::9]]).mean(0, keepdim=True)
test = [r for r in crow if r.subject in set(split["subjects"]["test"]) and visit_order(r) == min(visit_order(q) for q in crow if q.subject == r.subject)][:4]
import os; MODE = os.environ.get("GUIDE_MODE", "mean")
su = model.shift_unet; orig = su.forward; W = {"w": 1.0}
def guided(x, t, y):
    e, g = orig(x, t, y)
    if W["w"] == 1.0: return e, g
    if MODE == "scale": return e, W["w"] * g
    _, g0 = orig(x, t, ybar.to(y.dtype).expand_as(y))
    return e, g0 + W["w"] * (g - g0)
su.forward = guided
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
for w in ws:
    W["w"] = w; pipe.clear_cache()
    for r in test:
        x = ms(r)
        out = pipe.edit(x, model.directions["disease"], alphas, steps=10).numpy()[:, 0]
        v = [meas.raw(o) for o in out]
        ven = [round(d["ventricles"], 1) for d in v]; hip = [round(d["hippocampus"], 1) for d in v]
        age = pipe.edit(x, model.directions["age"], [-2.0, 2.0], steps=10).numpy()[:, 0]
        va = [round(meas.raw(o)["ventricles"], 1) for o in age]
        print(f"w {w} {r.subject} {r.get('group')} rec {ssim(out[2], x, 1.0):.3f} disease ven {ven} rho {spearman(alphas, ven):+.2f} hip {hip} rho {spearman(alphas, hip):+.2f} |d| {np.abs(out[-1]-out[0]).mean():.4f} | age ven(-2,+2) {va}", flush=True)
