"""How the codes of the training and test visits lie along a bundle's directions, in units of alpha:
their SD, the gap between the groups' means (disease), the change per 10 years of age (age), and
the probe's AUC / age MAE. usage: dirstats.py RUN  (RUN/bundle, RUN/split.json)"""
import sys, json, math, numpy as np, torch
from pathlib import Path
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.training.data import read_cohort
from LDAELib.training.probes import position, auc, predicted_age
run = Path(sys.argv[1])
model = load_model(run / "bundle"); pipe = LDAEPipeline(model); sp = model.config.space
split = json.loads((run / "split.json").read_text()); rows = read_cohort(Path(split["settings"]["cohort_csv"]))
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
for part in ("train", "test"):
    sub = [r for r in rows if r.subject in set(split["subjects"][part])]
    codes = torch.cat([pipe.embed(ms(r)) for r in sub]).float()
    sick = torch.tensor([r.get("group") == "disease" for r in sub]); age = torch.tensor([r.number("age") for r in sub], dtype=torch.float64)
    for name, d in model.directions.items():
        unit = d.scale * math.sqrt(codes.shape[1])
        pos = position(d, codes) / unit
        if name == "disease":
            what = f"group gap {float(pos[sick].mean() - pos[~sick].mean()):+.3f} α, AUC {auc(d.score(codes).numpy(), sick.numpy()):.3f}"
        else:
            slope = float(((pos - pos.mean()) * (age - age.mean())).sum() / ((age - age.mean()) ** 2).sum())
            what = f"{10 * slope:+.3f} α per 10 years, MAE {float((predicted_age(d, codes) - age).abs().mean()):.2f} y (ages {float(age.mean()):.1f} ± {float(age.std()):.1f})"
        print(f"{part:5s} n {len(sub):3d} {name:7s} unit {d.alpha_unit!r}: SD {float(pos.std()):.3f} α, {what}", flush=True)
