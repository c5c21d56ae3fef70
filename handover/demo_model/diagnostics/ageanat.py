"""`age` along the codes' regression on the anatomy's age, combined with the shipped (longitudinal) direction.
usage: ageanat.py RUN BUNDLE N_TRAIN [SEED] [L2]   (RUN holds split.json; edits use the bundle's guidance, T = 10)

The `disease` contrast axis (`ldae orient --disease-axis contrast`) asked for `age`: "anat" is a ridge
probe of the codes on each training visit's anatomical age (a ridge regression of age on the cohort
table's true regional volumes); "comb" is the sum of the shipped direction's and anat's unit normals,
each in the sense it renders ageing in on most of the N training subjects (the median ventricle change
from α −2 to +2, as `ldae orient` decides). Every direction keeps the shipped direction's step (its
normalised code units per alpha). Prints the age
MAE of the anatomical age on the test visits (the ceiling from the true volumes), then per subject
α −2 … 2 the image measure's ventricles and hippocampus, their ρ, and the mean brain change α −2 → 2;
the first visits of N training subjects (the `ldae orient` draw with SEED)."""
import sys, numpy as np, torch
from pathlib import Path
from LDAELib.cohort.cohort import VOLUME_COLUMNS
from LDAELib.directions import Direction, fit_linear_probe
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.volumes import build_measure, label_values, spearman
from LDAELib.pipeline import LDAEPipeline
from LDAELib.training.probes import predicted_age
from LDAELib.weights import load_model
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0; l2 = float(sys.argv[5]) if len(sys.argv) > 5 else 0.01
model = load_model(bundle); pipe = LDAEPipeline(model, cache_size=64); sp = model.config.space
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=bundle)); load = Loader(inp.rows, sp, run)
train = inp.train_rows
test = [r for rows in inp.test_rows.values() for r in rows]
def vols(rows): return torch.tensor([[r.number(c) for c in VOLUME_COLUMNS] for r in rows], dtype=torch.float64)
def ages(rows): return torch.tensor([r.number("age") for r in rows], dtype=torch.float64)
anat = fit_linear_probe(vols(train), ages(train), "age", "continuous", l2=l2)   # the anatomy's age, in years by predicted_age
s_tr = predicted_age(anat, vols(train).float())
print(f"anatomical age (true volumes): MAE training {float((s_tr - ages(train)).abs().mean()):.2f} y, "
      f"test {float((predicted_age(anat, vols(test).float()) - ages(test)).abs().mean()):.2f} y", flush=True)
ytr = torch.cat([pipe.embed(load(r)) for r in train]).double()
da = model.directions["age"]; mu, sd = da.mean.double(), da.std.double()
d_anat = fit_linear_probe(ytr, s_tr, "age", "continuous", l2=l2)
unit = lambda w: w / w.norm()
u_long = unit(da.weight.double()) * da.edit_sign
u_anat = unit(d_anat.weight.double() / d_anat.std.double() * sd)
print(f"cos(shipped age, anat) {float(u_long @ u_anat):+.3f}; shipped step {da.scale:.4f}", flush=True)
mk = lambda w: Direction("age", w.float(), mu.float(), sd.float(), 0.0, "older", "younger", "", {}, da.scale, 1)
meas = build_measure(train, sp, load, label_values(inp.cohort_csv.parent / "cohort.json"), max_subjects=16, rng=np.random.default_rng(0))
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
scans = [(r, load(r)) for r in first_visits(train, n, seed)]
def run_dir(name, d):
    dvs, good = [], 0
    for r, x in scans:
        out = pipe.edit(x, d, alphas, steps=10).numpy()[:, 0]
        v = [meas.measure(o) for o in out]
        vv = [round(q["ventricles"], 1) for q in v]; hh = [round(q["hippocampus"], 2) for q in v]
        rv, rh = spearman(alphas, vv), spearman(alphas, hh); brain = x > 0.05
        dvs.append(vv[-1] - vv[0]); good += rv >= 0.9
        print(f"{r.subject} {r.get('group'):8s} {name:5s} ven {vv} rho {rv:+.2f} hip {hh} rho {rh:+.2f} "
              f"brain {float((out[-1] - out[0])[brain].mean()):+.4f}", flush=True)
    med = float(np.median(dvs)); print(f"{name}: median ventricle change {med:+.2f} mL; ventricles rho >= 0.9 on {good} of {len(scans)}", flush=True)
    return med
senses = {"long": np.sign(run_dir("long", mk(u_long))), "anat": np.sign(run_dir("anat", mk(u_anat)))}
run_dir("comb", mk(unit(senses["long"] * u_long + senses["anat"] * u_anat)))
