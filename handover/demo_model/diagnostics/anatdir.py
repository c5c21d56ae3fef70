"""`age` directions read off the anatomy instead of the age label, against the shipped age probe.
usage: anatdir.py RUN BUNDLE [N_TEST]   (RUN holds split.json; edits use the bundle's guidance, T = 10)

The cohort's age says little about a scan (its constitutional spread is larger than what ageing does),
so a probe of the codes on age finds no ageing to edit along. Here the target is the anatomy's age:
a ridge regression of age on the cohort table's true regional volumes (training visits) gives each
visit an "anatomical age"; a ridge probe of the codes on it is the direction ("anat"), one unit = 5
years of anatomical age along the training codes (slope of position on it). "ven": a probe of the
codes on the ventricle volume, one unit = what 5 years of ageing add to the ventricles in the cohort
(slope of ventricles on age). Prints cosines and guided edits α −2 … 2 on the first visits of
N_TEST test subjects: ventricles / hippocampus mL (raw measure) and Spearman ρ."""
import sys, json, math, numpy as np, torch
from pathlib import Path
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.directions import fit_linear_probe
from LDAELib.evaluation.volumes import build_measure, DEFAULT_LABELS, spearman
from LDAELib.training.data import read_cohort, visit_order
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle = Path(sys.argv[1]), sys.argv[2]; n_test = int(sys.argv[3]) if len(sys.argv) > 3 else 4
model = load_model(bundle); pipe = LDAEPipeline(model); sp = model.config.space
split = json.loads((run / "split.json").read_text()); csv = Path(split["settings"]["cohort_csv"])
rows = read_cohort(csv); rows.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
for r in rows: r.fields['_cohort_root'] = str(csv.parent)
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, sp); return np.asarray(x, np.float32).squeeze()
train = [r for r in rows if r.subject in set(split["subjects"]["train"])]
codes = torch.cat([pipe.embed(ms(r)) for r in train]).double()
E = codes.shape[1]
COLS = ["ventricles_ml", "hippocampus_l_ml", "hippocampus_r_ml", "grey_matter_ml", "csf_ml", "whole_brain_ml"]
V = np.array([[r.number(c) for c in COLS] for r in train]); age = np.array([r.number("age") for r in train])
Vz = (V - V.mean(0)) / V.std(0); A = np.c_[Vz, np.ones(len(Vz))]
coef = np.linalg.solve(A.T @ A + 1.0 * np.diag([1] * len(COLS) + [0]), A.T @ age); anat = A @ coef
print("anatomical age: r with age %.3f, MAE %.2f y (mean predictor %.2f); weights per SD %s" % (
    np.corrcoef(anat, age)[0, 1], np.abs(anat - age).mean(), np.abs(age - age.mean()).mean(), dict(zip(COLS, np.round(coef[:-1], 2)))))
def probe(target, name, l2=0.01):
    return fit_linear_probe(codes.float(), torch.tensor(target), name, "continuous", l2=l2, positive="older", negative="younger")
def posn(d): w = d.weight.double(); return ((codes - d.mean.double()) / d.std.double()) @ (w / w.norm())
def slope(p, t): t = torch.tensor(t, dtype=torch.float64); return float(((p - p.mean()) * (t - t.mean())).sum() / ((t - t.mean()) ** 2).sum())
da = model.directions["age"]; dd = model.directions["disease"]
d_anat = probe(anat, "age"); p = posn(d_anat); per_year = slope(p, anat)
d_anat.scale = 5 * per_year / math.sqrt(E); d_anat.alpha_unit = "5.0 years of anatomical age"
ven = V[:, 0]; ven_per_year = slope(torch.tensor(ven), age)
d_ven = probe(ven, "age"); pv = posn(d_ven); d_ven.scale = 5 * ven_per_year * slope(pv, ven) / math.sqrt(E)
u = lambda d: d.weight.double() / d.weight.double().norm()
print(f"position fit: anat R² {np.corrcoef(p.numpy(), anat)[0,1]**2:.3f}, ven R² {np.corrcoef(pv.numpy(), ven)[0,1]**2:.3f}; "
      f"ventricles per year of age {ven_per_year:+.3f} mL")
print(f"cos: anat·age-probe {float(u(d_anat) @ u(da)):+.3f}, anat·disease {float(u(d_anat) @ u(dd)):+.3f}, ven·disease {float(u(d_ven) @ u(dd)):+.3f}, anat·ven {float(u(d_anat) @ u(d_ven)):+.3f}")
print(f"scale (normalised units per alpha): shipped age {da.scale*math.sqrt(E):.3f}, anat {d_anat.scale*math.sqrt(E):.3f}, ven {d_ven.scale*math.sqrt(E):.3f}, disease {dd.scale*math.sqrt(E):.3f}")
meas = build_measure(train, sp, ms, DEFAULT_LABELS, max_subjects=6)
firsts = {}
for r in rows:
    if r.subject in set(split["subjects"]["test"]): firsts.setdefault(r.subject, r)
test = list(firsts.values())[:n_test]
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
names = sys.argv[4].split(",") if len(sys.argv) > 4 else ["probe", "anat", "ven"]
dirs = {"probe": da, "anat": d_anat, "ven": d_ven}
for r in test:
    x = ms(r)
    for name in names:
        out = pipe.edit(x, dirs[name], alphas, steps=10).numpy()[:, 0]
        v = [meas.raw(o) for o in out]
        vv = [round(q["ventricles"], 1) for q in v]; hh = [round(q["hippocampus"], 1) for q in v]
        print(f"{r.subject} {r.get('group')} {name:5s} ven {vv} rho {spearman(alphas, vv):+.2f} hip {hh} rho {spearman(alphas, hh):+.2f} |d| {np.abs(out[-1] - out[0]).mean():.4f}", flush=True)
