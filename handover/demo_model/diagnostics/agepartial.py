"""`age` along each subject's own code change with age, at fixed scan brightness.
usage: agepartial.py RUN BUNDLE N_TRAIN [SEED] [COVARIATES]   (RUN holds split.json; the bundle's guidance, T = 10)

The shipped `age` direction is the pooled within-subject slope of the normalised codes on age
(``fit_longitudinal_direction``). The cohort's visits differ in brightness (a gain and a bias field
per visit: the brain's mean varies with SD 0.037 over the training visits, while ageing darkens it by
0.0014 a year within a subject), so over 0–3 years of follow-up that slope can carry brightness.
Here the within-subject regression of the codes has the visit's brightness beside age (COVARIATES,
comma-separated, default "mean": the brain's mean intensity, voxels above 0.05; "levels" adds the
CSF, grey- and white-matter k-means levels); the age coefficients are the axis. It is edited with
the shipped direction's step (normalised code units per alpha) on the first visits of N training
subjects (the `ldae orient` draw with SEED) and on the example visits: the evaluation's measure of
the ventricles and hippocampus with their ρ, the mean brain change, and on the example visits the
guard test's count (Testing/test_demo_model.py)."""
import sys, numpy as np, torch
from pathlib import Path
from LDAELib.directions import Direction
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.volumes import build_measure, label_values, spearman, tissue_levels
from LDAELib.pipeline import LDAEPipeline
from LDAELib.resources import example_scans
from LDAELib.weights import load_model
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "Testing"))
from test_demo_model import _example, _ventricle_voxels  # noqa: E402
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
covs = (sys.argv[5] if len(sys.argv) > 5 else "mean").split(",")
model = load_model(bundle); pipe = LDAEPipeline(model, cache_size=64); sp = model.config.space
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, sp, run)
train = inp.train_rows
def covariates(x):
    x = np.asarray(x).squeeze(); out = []
    if "mean" in covs: out.append(float(x[x > 0.05].mean()))
    if "levels" in covs: out.extend(tissue_levels(x))
    return out
codes, cv = [], []
for r in train:
    x = load(r); codes.append(pipe.embed(x)); cv.append(covariates(x))
y = torch.cat(codes).double(); C = torch.tensor(cv, dtype=torch.float64)
d0 = model.directions["age"]; mu, sd = d0.mean.double(), d0.std.double()
yn = (y - mu) / sd
ages = torch.tensor([r.number("age") for r in train], dtype=torch.float64)
subjects = [r.subject for r in train]
X = torch.cat([ages[:, None], C], 1)
Xc, Yc = torch.zeros_like(X), torch.zeros_like(yn)
for s in sorted(set(subjects)):
    i = torch.tensor([k for k, v in enumerate(subjects) if v == s])
    Xc[i] = X[i] - X[i].mean(0); Yc[i] = yn[i] - yn[i].mean(0)
coef = torch.linalg.lstsq(Xc, Yc).solution          # (1 + k) × E
plain = (Xc[:, :1] * Yc).sum(0) / (Xc[:, 0] ** 2).sum()
unit = lambda w: w / w.norm()
u_ship = unit(d0.weight.double()) * d0.edit_sign
print(f"covariates {covs}: |age coef| {float(coef[0].norm()):.4f} per year (without them {float(plain.norm()):.4f}); "
      f"cos(partial, plain) {float(unit(coef[0]) @ unit(plain)):+.3f}; cos(plain, shipped) {float(unit(plain) @ u_ship):+.3f}; "
      f"within-subject brightness change per year {float((Xc[:, 0] * Xc[:, 1]).sum() / (Xc[:, 0] ** 2).sum()):+.5f}", flush=True)
d = Direction("age", unit(coef[0]).float(), mu.float(), sd.float(), 0.0, "older", "younger", "", {}, d0.scale, 1)
meas = build_measure(train, sp, load, label_values(inp.cohort_csv.parent / "cohort.json"), max_subjects=16, rng=np.random.default_rng(0))
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]; good = 0; dv = []
for r in first_visits(train, n, seed):
    x = load(r); out = pipe.edit(x, d, alphas, steps=10).numpy()[:, 0]
    v = [meas.measure(o) for o in out]
    vv = [round(q["ventricles"], 1) for q in v]; hh = [round(q["hippocampus"], 2) for q in v]
    rv, rh = spearman(alphas, vv), spearman(alphas, hh); good += rv >= 0.9 - 1e-9 and rh <= -0.7 + 1e-9; dv.append(vv[-1] - vv[0])
    print(f"{r.subject} partial ven {vv} rho {rv:+.2f} hip {hh} rho {rh:+.2f} brain {float((out[-1] - out[0])[x > 0.05].mean()):+.4f}", flush=True)
print(f"partial: ventricles ρ ≥ 0.9 and hippocampus ρ ≤ −0.7 on {good} of {n}; median ventricle change {float(np.median(dv)):+.2f} mL", flush=True)
for sc in example_scans():
    x = _example(model, sc); out = pipe.edit(x, d, alphas, steps=10).numpy()[:, 0]
    print(f"{sc.path.name} partial guard count {[int(c) for c in _ventricle_voxels(out)]} measure "
          f"{[round(meas.measure(o)['ventricles'], 1) for o in out]} brain {float((out[-1] - out[0])[x > 0.05].mean()):+.4f}", flush=True)
