"""`disease` along the codes' regression on the disease's anatomy, against the shipped direction.
usage: diseaseanat.py RUN BUNDLE N_TRAIN [SEED] [L2] [NAMES] [COMB_UNIT]   (RUN holds split.json; edits use the bundle's guidance, T = 10)

"anat": a logistic regression of the group on the training visits' true regional volumes (the cohort
table's label columns, standardised) gives each visit an anatomical disease score (its logit); a ridge
probe of the codes on that score is the direction, one unit = the gap between the groups' mean
positions along it (the shipped direction's unit, `calibration: cohort`). Prints the test visits' AUC
of the anatomical score itself (the ceiling from the true volumes), of the shipped direction's
reading and of the position along "anat"; then edits α −2 … 2 of the first visits of N training
subjects (the `ldae orient` draw with SEED), image measure: ventricles / hippocampus ρ per subject,
and how many subjects go the disease's way (ventricles ρ ≥ 0.9 and hippocampus ρ ≤ −0.7) under each
sign of each direction (`ldae orient` picks the sign from the median ventricle change). NAMES
(comma-separated, default shipped,anat) may add "comb": the shipped direction's unit vector minus
anat's (the sense each renders the disease in on most subjects), same unit rule as anat unless
COMB_UNIT gives its length in normalised code units (the shipped direction's is printed as its unit);
and "combo": comb made orthogonal to a ridge probe of the codes on each visit's mean brain intensity
(voxels above 0.05), same unit. Every edit line ends with the mean change α −2 → 2 over the brain."""
import sys, math, numpy as np, torch
from pathlib import Path
from LDAELib.directions import Direction, fit_linear_probe
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.volumes import build_measure, label_values, spearman
from LDAELib.pipeline import LDAEPipeline
from LDAELib.training.probes import auc
from LDAELib.weights import load_model
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0; l2 = float(sys.argv[5]) if len(sys.argv) > 5 else 0.01
model = load_model(bundle); pipe = LDAEPipeline(model, cache_size=64); sp = model.config.space
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, sp, run)
train = inp.train_rows
test = [r for rows in inp.test_rows.values() for r in rows]
COLS = ["ventricles_ml", "hippocampus_l_ml", "hippocampus_r_ml", "grey_matter_ml", "white_matter_ml", "csf_ml", "whole_brain_ml"]
def vols(rows): return torch.tensor([[r.number(c) for c in COLS] for r in rows], dtype=torch.float64)
def groups(rows): return torch.tensor([float(r.get("group") == "disease") for r in rows], dtype=torch.float64)
Vtr, Vte, gtr, gte = vols(train), vols(test), groups(train), groups(test)
anat = fit_linear_probe(Vtr, gtr, "disease", "binary", l2=l2)   # the anatomy's logistic regression
def score(d, x): return ((x - d.mean.double()) / d.std.double()) @ d.weight.double() + float(d.meta.get("bias", 0.0))
s_tr, s_te = score(anat, Vtr), score(anat, Vte)
print("anatomical score weights per SD:", dict(zip(COLS, [round(float(v), 2) for v in anat.weight])))
print(f"AUC of the anatomical score (true volumes): training {auc(s_tr, gtr.bool()):.3f}, test {auc(s_te, gte.bool()):.3f}")
ytr = torch.cat([pipe.embed(load(r)) for r in train]).double(); yte = torch.cat([pipe.embed(load(r)) for r in test]).double()
dd = model.directions["disease"]
d_anat = fit_linear_probe(ytr, s_tr, "disease", "continuous", l2=l2, positive="atrophy", negative="healthy")
def posn(d, y): w = d.weight.double(); return ((y - d.mean.double()) / d.std.double()) @ (w / w.norm())
p_tr = posn(d_anat, ytr); r2 = float(np.corrcoef(p_tr.numpy(), s_tr.numpy())[0, 1] ** 2)
gap = float(p_tr[gtr.bool()].mean() - p_tr[~gtr.bool()].mean()); E = ytr.shape[1]
d_anat.scale = abs(gap) / math.sqrt(E); d_anat.alpha_unit = "the groups' mean gap along the anatomical score's axis"
u = lambda d: d.weight.double() / d.weight.double().norm()
print(f"anat probe on codes: R² of position vs score (training) {r2:.3f}; groups' gap {gap:+.3f} (shipped disease unit {dd.scale * math.sqrt(E):.3f}); "
      f"cos with shipped disease {float(u(d_anat) @ u(dd)):+.3f}")
print(f"test AUC: shipped disease reading {auc(score(dd, yte), gte.bool()):.3f}; position along anat {auc(posn(d_anat, yte), gte.bool()):.3f}; "
      f"training: {auc(score(dd, ytr), gtr.bool()):.3f} / {auc(p_tr, gtr.bool()):.3f} ({len(test)} test, {len(train)} training visits)", flush=True)
names = sys.argv[6].split(",") if len(sys.argv) > 6 else ["shipped", "anat"]
mu, sd = dd.mean.double(), dd.std.double()
def on_shipped_codes(w):  # a direction in the shipped direction's normalised code space, unit = the groups' gap
    p = ((ytr - mu) / sd) @ (w / w.norm()); g = float(p[gtr.bool()].mean() - p[~gtr.bool()].mean())
    return Direction("disease", (w * (1 if g > 0 else -1)).float(), mu.float(), sd.float(), positive="atrophy", negative="healthy",
                     scale=abs(g) / math.sqrt(E)), g
w_anat = d_anat.weight.double() / d_anat.std.double() * sd  # anat's normal expressed on the shipped normalisation
d_comb, g_comb = on_shipped_codes(u(dd) - w_anat / w_anat.norm())
if len(sys.argv) > 7: d_comb.scale = float(sys.argv[7]) / math.sqrt(E)
print(f"comb: groups' gap {g_comb:+.3f} (sign set so that + is the disease side); unit {d_comb.scale * math.sqrt(E):.3f}; "
      f"test AUC of the position along it {auc(posn(d_comb, yte), gte.bool()):.3f}")
def brain_mean(r):
    x = np.asarray(load(r)); return float(x[x > 0.05].mean())
d_int = fit_linear_probe(ytr, torch.tensor([brain_mean(r) for r in train]), "intensity", "continuous", l2=l2)
w_int = d_int.weight.double() / d_int.std.double() * sd; w_int = w_int / w_int.norm()
wc = d_comb.weight.double() / d_comb.weight.double().norm(); wo = wc - (wc @ w_int) * w_int
d_combo = Direction("disease", wo.float(), mu.float(), sd.float(), positive="atrophy", negative="healthy", scale=d_comb.scale)
print(f"intensity probe: cos with comb {float(wc @ w_int):+.3f}, with shipped {float(u(dd) @ w_int):+.3f}; combo gap "
      f"{float((((ytr - mu) / sd) @ (wo / wo.norm()))[gtr.bool()].mean() - (((ytr - mu) / sd) @ (wo / wo.norm()))[~gtr.bool()].mean()):+.3f}")
dirs = {"shipped": dd, "anat": d_anat, "comb": d_comb, "combo": d_combo}
if n <= 0: sys.exit(0)
meas = build_measure(train, sp, load, label_values(inp.cohort_csv.parent / "cohort.json"), max_subjects=16, rng=np.random.default_rng(0))
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
good = {k + sg: 0 for k in names for sg in "+-"}; dv = {k: [] for k in names}
for r in first_visits(train, n, seed):
    x = load(r)
    for name in names:
        d = dirs[name]
        out = pipe.edit(x, d, alphas, steps=10).numpy()[:, 0]
        v = [meas.measure(o) for o in out]
        vv = [round(q["ventricles"], 1) for q in v]; hh = [round(q["hippocampus"], 2) for q in v]
        rv, rh = spearman(alphas, vv), spearman(alphas, hh)
        good[name + "+"] += rv >= 0.9 and rh <= -0.7; good[name + "-"] += rv <= -0.9 and rh >= 0.7; dv[name].append(vv[-1] - vv[0])
        brain = x > 0.05
        print(f"{r.subject} {r.get('group'):8s} {name:7s} ven {vv} rho {rv:+.2f} hip {hh} rho {rh:+.2f} |d| {np.abs(out[-1] - out[0]).mean():.4f} "
              f"brain {float((out[-1] - out[0])[brain].mean()):+.4f}", flush=True)
print("subjects going the disease's way under each sign:", good, "; median ventricle change α −2 → 2:",
      {k: round(float(np.median(v)), 2) for k, v in dv.items()})
