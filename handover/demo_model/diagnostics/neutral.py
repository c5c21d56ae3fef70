"""A direction made intensity-neutral by what the model renders: DIRECTION + β · (the codes' brain-intensity probe).
usage: neutral.py RUN BUNDLE DIRECTION N_TRAIN [SEED] [L2]   (RUN holds split.json; the bundle's guidance, T = 10)

The cohort's ageing and disease change anatomy, not tissue intensity, yet the demo model's `age` and
`disease` edits darken the whole brain (mean change over the brain from α −2 to +2 about −0.1 on
[0, 1]). "int" is a ridge probe of the codes on each training visit's mean brain intensity (voxels
above 0.05), expressed on DIRECTION's normalisation. Both are edited to α ±2 on the first visits of
N training subjects (the `ldae orient` draw with SEED), with DIRECTION's step; β = −(median brain
change along DIRECTION) / (median brain change along int), so that the sum renders no median
brain change if the model is linear enough over that range. Then the sum (unit normal, DIRECTION's
step) is edited α −2 … 2 on the same subjects and on the shipped example visits: the image measure's
ventricles and hippocampus with their ρ, and the mean brain change; for the example visits also
the guard test's count (Testing/test_demo_model.py: ventricle voxels against each image's own
tissue levels)."""
import sys, numpy as np, torch
from pathlib import Path
from LDAELib.directions import Direction, fit_linear_probe
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.volumes import build_measure, label_values, spearman
from LDAELib.pipeline import LDAEPipeline
from LDAELib.resources import example_scans
from LDAELib.weights import load_model
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "Testing"))
from test_demo_model import _example, _ventricle_voxels  # noqa: E402
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle, name, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0; l2 = float(sys.argv[6]) if len(sys.argv) > 6 else 0.01
model = load_model(bundle); pipe = LDAEPipeline(model, cache_size=64); sp = model.config.space
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, sp, run)
train = inp.train_rows
def brain_mean(x): x = np.asarray(x); return float(x[x > 0.05].mean())
ytr = torch.cat([pipe.embed(load(r)) for r in train]).double()
d0 = model.directions[name]; mu, sd = d0.mean.double(), d0.std.double()
unit = lambda w: w / w.norm()
u_dir = unit(d0.weight.double()) * d0.edit_sign
p_int = fit_linear_probe(ytr, torch.tensor([brain_mean(load(r)) for r in train]), "intensity", "continuous", l2=l2)
u_int = unit(p_int.weight.double() / p_int.std.double() * sd)
print(f"cos({name}, int) {float(u_dir @ u_int):+.3f}; step {d0.scale:.4f}", flush=True)
mk = lambda w: Direction(name, w.float(), mu.float(), sd.float(), 0.0, d0.positive, d0.negative, "", {}, d0.scale, 1)
meas = build_measure(train, sp, load, label_values(inp.cohort_csv.parent / "cohort.json"), max_subjects=16, rng=np.random.default_rng(0))
scans = [(r.subject, load(r)) for r in first_visits(train, n, seed)]
def two_point(d):
    b, v = [], []
    for _, x in scans:
        out = pipe.edit(x, d, [-2.0, 2.0], steps=10).numpy()[:, 0]
        b.append(float((out[1] - out[0])[x > 0.05].mean())); v.append(meas.measure(out[1])["ventricles"] - meas.measure(out[0])["ventricles"])
    return float(np.median(b)), float(np.median(v))
(b_dir, v_dir), (b_int, v_int) = two_point(mk(u_dir)), two_point(mk(u_int))
beta = -b_dir / b_int
print(f"α −2 → 2, medians: {name} brain {b_dir:+.4f}, ventricles {v_dir:+.2f} mL; int brain {b_int:+.4f}, ventricles {v_int:+.2f} mL; β {beta:+.3f}", flush=True)
d = mk(unit(u_dir + beta * u_int))
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]; good = 0
for subject, x in scans:
    out = pipe.edit(x, d, alphas, steps=10).numpy()[:, 0]
    v = [meas.measure(o) for o in out]
    vv = [round(q["ventricles"], 1) for q in v]; hh = [round(q["hippocampus"], 2) for q in v]
    rv, rh = spearman(alphas, vv), spearman(alphas, hh); good += rv >= 0.9 - 1e-9 and rh <= -0.7 + 1e-9
    print(f"{subject} neutral ven {vv} rho {rv:+.2f} hip {hh} rho {rh:+.2f} brain {float((out[-1] - out[0])[x > 0.05].mean()):+.4f}", flush=True)
print(f"neutral: ventricles ρ ≥ 0.9 and hippocampus ρ ≤ −0.7 on {good} of {len(scans)}", flush=True)
for sc in example_scans():
    x = _example(model, sc); out = pipe.edit(x, d, alphas, steps=10).numpy()[:, 0]
    print(f"{sc.path.name} neutral guard count {[int(c) for c in _ventricle_voxels(out)]} measure "
          f"{[round(meas.measure(o)['ventricles'], 1) for o in out]} brain {float((out[-1] - out[0])[x > 0.05].mean()):+.4f}", flush=True)
