"""`disease` along what the disease adds to each subject's own code change per year, against the shipped direction.
usage: diseasedir.py RUN BUNDLE N_TRAIN [SEED]   (RUN holds split.json; edits use the bundle's guidance, T = 10)

"diff": the disease group's pooled within-subject slope of the normalised codes on age minus the
healthy group's (training subjects), one unit = the gap between the groups' mean positions along it
(the shipped direction's unit, `calibration: cohort`) when that gap is positive, else 5 years of
the extra change. Edits α −2 … 2 of the first visits of N training subjects (the `ldae orient`
draw with SEED), image measure: ventricles / hippocampus ρ per subject and a count of subjects
with ventricles ρ ≥ 0.9 and hippocampus ρ ≤ −0.7, for the shipped `disease` and for "diff"."""
import sys, math, numpy as np, torch
from pathlib import Path
from LDAELib.directions import Direction
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.volumes import build_measure, label_values, spearman
from LDAELib.pipeline import LDAEPipeline
from LDAELib.weights import load_model
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]); seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
model = load_model(bundle); pipe = LDAEPipeline(model, cache_size=64); sp = model.config.space
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, sp, run)
rows = inp.train_rows
dd = model.directions["disease"]; mu, sd = dd.mean.double(), dd.std.double()
yn = (torch.cat([pipe.embed(load(r)) for r in rows]).double() - mu) / sd
age = torch.tensor([r.number("age") for r in rows], dtype=torch.float64)
sick = torch.tensor([r.get("group") == "disease" for r in rows])
subj = [r.subject for r in rows]
def slope(mask):
    sxy, sxx = torch.zeros(yn.shape[1], dtype=torch.float64), 0.0
    for s in sorted(set(subj)):
        i = [k for k, x in enumerate(subj) if x == s and bool(mask[k])]
        if len(i) < 2: continue
        a, y = age[i], yn[i]
        sxy += ((a - a.mean())[:, None] * (y - y.mean(0))).sum(0); sxx += float(((a - a.mean()) ** 2).sum())
    return sxy / sxx
diff = slope(sick) - slope(~sick)
u = diff / diff.norm(); pos = yn @ u
gap = float(pos[sick].mean() - pos[~sick].mean()); E = u.numel()
unit = gap if gap > 0 else 5 * float(diff.norm())
d_diff = Direction("disease", diff.float(), mu.float(), sd.float(), positive="atrophy", negative="healthy", scale=unit / math.sqrt(E))
w = dd.weight.double() / dd.weight.double().norm()
print(f"|diff| {float(diff.norm()):.4f} per year; groups' gap along it {gap:+.3f} (shipped disease: {dd.scale * math.sqrt(E):.3f}); "
      f"unit {unit:.3f}; code SD along it {float(pos.std()) / unit:.2f} units; cos with shipped disease {float(u @ w):+.3f}")
meas = build_measure(rows, sp, load, label_values(inp.cohort_csv.parent / "cohort.json"), max_subjects=16, rng=np.random.default_rng(0))
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
good = {"shipped": 0, "diff": 0}
for r in first_visits(rows, n, seed):
    x = load(r)
    for name, d in (("shipped", dd), ("diff", d_diff)):
        out = pipe.edit(x, d, alphas, steps=10).numpy()[:, 0]
        v = [meas.measure(o) for o in out]
        vv = [round(q["ventricles"], 1) for q in v]; hh = [round(q["hippocampus"], 2) for q in v]
        rv, rh = spearman(alphas, vv), spearman(alphas, hh)
        good[name] += rv >= 0.9 and rh <= -0.7
        print(f"{r.subject} {r.get('group'):8s} {name:7s} ven {vv} rho {rv:+.2f} hip {hh} rho {rh:+.2f} |d| {np.abs(out[-1] - out[0]).mean():.4f}", flush=True)
print("subjects with ventricles rho >= 0.9 and hippocampus rho <= -0.7:", good)
