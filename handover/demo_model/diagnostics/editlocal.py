"""Where an edit changes the image: around the ventricles, or everywhere at once?
usage: editlocal.py RUN BUNDLE N_TRAIN [SEED]   (RUN holds split.json; T = 10)

For the bundle as it is and with ``code_guidance_mean_free`` switched the other way (a copy, through
``annotate_bundle``), on the first visits of N training subjects (the `ldae orient` draw with SEED):
Δ = edit(α = +2) − edit(α = −2) along `disease` and `age`, and over the input's brain (> 0.05)
  near   the share of Σ|Δ| within 2 voxels of the reconstruction's ventricles (voxels darker than its
         CSF / grey-matter midpoint in the box around the lateral ventricles), against the share of
         the brain's voxels there;
  smooth the share of Σ Δ² that a Gaussian of σ = 3 voxels keeps (a change spread over the brain
         keeps most; sharp edges around a structure keep little);
  mean   the mean of Δ (the global brightening or darkening).
Medians over the subjects."""
import shutil, sys, tempfile, numpy as np, torch
from pathlib import Path
from scipy.ndimage import binary_dilation, gaussian_filter
from LDAELib.evaluation.orient import first_visits
from LDAELib.evaluation.sections import EvalSettings, Loader, read_inputs
from LDAELib.evaluation.volumes import tissue_levels
from LDAELib.pipeline import LDAEPipeline
from LDAELib.weights import load_model
from LDAELib.weights.bundle import annotate_bundle
torch.set_grad_enabled(False)
torch.set_num_threads(2)
run, bundle, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
tmp = Path(tempfile.mkdtemp()) / "other"
shutil.copytree(bundle, tmp)
annotate_bundle(tmp, inference={"code_guidance_mean_free": not load_model(bundle).config.code_guidance_mean_free})
inp = read_inputs(EvalSettings(workdir=run, output="/tmp/none", model=str(bundle)))
load = Loader(inp.rows, load_model(bundle).config.space, run)  # both copies share the model space
scans = [np.asarray(load(r), dtype=np.float32).squeeze() for r in first_visits(inp.train_rows, n, seed)]
for path in (bundle, tmp):
    model = load_model(path); pipe = LDAEPipeline(model, cache_size=4)
    for dname in ("disease", "age"):
        near, area, smooth, mean = [], [], [], []
        for x in scans:
            out = pipe.edit(x, model.directions[dname], [-2.0, 0.0, 2.0], steps=10).numpy()[:, 0]
            d, rec, brain = out[2] - out[0], out[1], x > 0.05
            csf, gm, _ = tissue_levels(rec)
            box = np.zeros_like(brain); box[22:42, 25:55, 25:45] = True
            roi = binary_dilation(box & brain & (rec < (csf + gm) / 2), iterations=2) & brain
            a = np.abs(d)[brain]
            near.append(float(np.abs(d)[roi].sum() / a.sum())); area.append(float(roi.sum() / brain.sum()))
            smooth.append(float((gaussian_filter(d, 3.0)[brain] ** 2).sum() / (d[brain] ** 2).sum()))
            mean.append(float(d[brain].mean()))
        print(f"mean-free {model.config.code_guidance_mean_free!s:5s} {dname:7s} near {np.median(near):.3f} "
              f"(brain share {np.median(area):.3f}); smooth {np.median(smooth):.3f}; mean {np.median(mean):+.3f}", flush=True)
shutil.rmtree(tmp.parent)
