"""Code guidance without its spatial mean: does the brightness change of edits come from the mean of the guided shift?
usage: meanfree.py RUN BUNDLE N_TRAIN [SEED]   (RUN holds split.json; T = 10; the bundle must use code guidance)

The bundle's rule is g(ȳ) + w·(g(y) − g(ȳ)) (``code_guided_shift``). The variant subtracts from the
difference g(y) − g(ȳ) its mean over the latent grid, per channel, before scaling, so the code can
no longer move the latent's per-channel mean (a global offset that decodes as brightness). Since
2026-12-06 that variant is the setting ``code_guidance_mean_free``: this script runs the bundle with
the setting off and on (copies through ``annotate_bundle``), whichever way the bundle has it. Both
rules, inversion and sampling alike, on the first visits of N training subjects (the `ldae orient`
draw with SEED), α −2, 0, +2 along `age` and `disease`: SSIM of the α = 0 edit (the
reconstruction) against the input, the mean change over the brain from −2 to +2 and the
evaluation's ventricle change, medians over the subjects."""
import shutil, sys, tempfile, numpy as np, torch
from pathlib import Path
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.similarity import ssim
from LDAELib.evaluation.volumes import build_measure, label_values
from LDAELib.pipeline import LDAEPipeline
from LDAELib.weights import load_model
from LDAELib.weights.bundle import annotate_bundle
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
sp = load_model(bundle).config.space
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=str(bundle))); load = Loader(inp.rows, sp, run)
train = inp.train_rows
meas = build_measure(train, sp, load, label_values(inp.cohort_csv.parent / "cohort.json"), max_subjects=16, rng=np.random.default_rng(0))
scans = [load(r) for r in first_visits(train, n, seed)]
tmp = Path(tempfile.mkdtemp())
for mean_free in (False, True):
    copy = tmp / f"mean_free_{mean_free}"
    shutil.copytree(bundle, copy)
    annotate_bundle(copy, inference={"code_guidance_mean_free": mean_free})
    model = load_model(copy)
    pipe = LDAEPipeline(model, cache_size=4)
    rule_name = "mean-free" if mean_free else "bundle's rule"
    for dname in ("age", "disease"):
        rec, b, v = [], [], []
        for x in scans:
            out = pipe.edit(x, model.directions[dname], [-2.0, 0.0, 2.0], steps=10).numpy()[:, 0]
            xs = np.asarray(x).squeeze()
            rec.append(ssim(out[1], xs, 1.0)); b.append(float((out[2] - out[0])[xs > 0.05].mean()))
            v.append(meas.measure(out[2])["ventricles"] - meas.measure(out[0])["ventricles"])
        print(f"{rule_name:13s} {dname:7s} reconstruction SSIM {np.median(rec):.4f} (lowest {min(rec):.4f}); brain change "
              f"{' '.join(f'{q:+.3f}' for q in b)} (median {np.median(b):+.3f}); ventricles {' '.join(f'{q:+.1f}' for q in v)} "
              f"(median {np.median(v):+.2f} mL)", flush=True)
shutil.rmtree(tmp)
