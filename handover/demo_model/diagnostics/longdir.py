"""`age` along the codes' within-subject change with age (a longitudinal direction), against the shipped probe.
usage: longdir.py RUN BUNDLE N_TRAIN [GROUP | diff]   (RUN holds split.json; edits use the bundle's guidance, T = 10)

Between subjects, the cohort's codes differ mostly by what ageing does not change (template, contrast,
size), so a probe of age on them finds little ageing. Within one subject, only time changes. Here the
direction is the pooled within-subject slope of the normalised codes on age (training subjects, or
one GROUP's), one unit = 5 years of it. With "diff": the disease group's slope minus the healthy
group's (what the disease adds per year), one unit = 5 years of that. Prints its cosine with the shipped directions and the code
spread along it, then edits α −2 … 2 of the first visits of N_TRAIN training subjects (the same draw
as `ldae orient`): ventricles / hippocampus mL (the evaluation's image measure) and Spearman ρ."""
import sys, json, math, numpy as np, torch
from pathlib import Path
from LDAELib.directions import Direction
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.volumes import build_measure, label_values, spearman
from LDAELib.pipeline import LDAEPipeline
from LDAELib.weights import load_model
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]); group = sys.argv[4] if len(sys.argv) > 4 else None
model = load_model(bundle); pipe = LDAEPipeline(model, cache_size=64); sp = model.config.space
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, sp, run)
da, dd = model.directions["age"], model.directions["disease"]
mu, sd = da.mean.double(), da.std.double()
def within_slope(rows):
    codes = torch.cat([pipe.embed(load(r)) for r in rows]).double(); yn = (codes - mu) / sd
    age = torch.tensor([r.number("age") for r in rows], dtype=torch.float64)
    sxy, sxx = torch.zeros(yn.shape[1], dtype=torch.float64), 0.0
    subj = [r.subject for r in rows]
    for s in sorted(set(subj)):
        i = [k for k, x in enumerate(subj) if x == s]
        if len(i) < 2: continue
        a, y = age[i], yn[i]
        sxy += ((a - a.mean())[:, None] * (y - y.mean(0))).sum(0); sxx += float(((a - a.mean()) ** 2).sum())
    return sxy / sxx, yn, subj  # normalised code per year
if group == "diff":
    sd_, yn, subj = within_slope([r for r in inp.train_rows if r.get("group") == "disease"])
    sh_, _, _ = within_slope([r for r in inp.train_rows if r.get("group") != "disease"])
    slope = sd_ - sh_; train = [r for r in inp.train_rows if r.get("group") == "disease"]
    print(f"cos(disease slope, healthy slope) {float(sd_ @ sh_ / sd_.norm() / sh_.norm()):+.3f}; |disease| {float(sd_.norm()):.4f} |healthy| {float(sh_.norm()):.4f}")
else:
    train = [r for r in inp.train_rows if group is None or r.get("group") == group]
    slope, yn, subj = within_slope(train)
E = slope.numel()
d = Direction("age", slope.float(), mu.float(), sd.float(), positive="older", negative="younger", scale=5 * float(slope.norm()) / math.sqrt(E),
              alpha_unit="5 years of within-subject code change")
u = lambda w: w.double() / w.double().norm()
pos = yn @ u(slope)
print(f"{len(set(subj))} subjects, {len(train)} visits; |slope| {float(slope.norm()):.4f} normalised units per year; "
      f"code SD along it {float(pos.std()):.3f} = {float(pos.std()) / (5 * float(slope.norm())):.2f} units of alpha")
print(f"cos with age probe {float(u(slope) @ u(da.weight)):+.3f}, with disease probe {float(u(slope) @ u(dd.weight)):+.3f}")
meas = build_measure(inp.train_rows, sp, load, label_values(inp.cohort_csv.parent / "cohort.json"), max_subjects=16, rng=np.random.default_rng(0))
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
for r in first_visits(inp.train_rows, n, 0):
    out = pipe.edit(load(r), d, alphas, steps=10).numpy()[:, 0]
    v = [meas.measure(o) for o in out]
    vv = [round(q["ventricles"], 2) for q in v]; hh = [round(q["hippocampus"], 2) for q in v]
    print(f"{r.subject} {r.get('group'):8s} ven {vv} rho {spearman(alphas, vv):+.2f} hip {hh} rho {spearman(alphas, hh):+.2f} |d| {np.abs(out[-1] - out[0]).mean():.4f}", flush=True)
