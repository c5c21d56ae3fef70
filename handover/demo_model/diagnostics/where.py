"""Where an edit changes the image, by tissue: mean change (edit(+A) − edit(−A)) inside each cohort
label (its model-space fraction ≥ 0.5), and how smooth the change is (share of its energy left after a
Gaussian blur of σ 2 voxels = 6 mm). usage: where.py BUNDLE COHORT_DIR SUBJECT [SUBJECT ...]"""
import sys, numpy as np
from pathlib import Path
from scipy import ndimage as ndi
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.evaluation.volumes import region_fractions
bundle, cohort, subjects = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
model = load_model(bundle); pipe = LDAEPipeline(model); sp = model.config.space
regions = {"csf": (1,), "grey": (2,), "white": (3,), "ventricles": (4,), "hippocampus": (5, 6)}
for s in subjects:
    img = cohort / s / f"{s}_visit-1_T1w.nii.gz"; lab = cohort / s / f"{s}_visit-1_labels.nii.gz"
    v = read_image(img); x, _ = to_model_space(v.data, v.affine, sp)
    out = pipe.edit(x, model.directions["disease"], [-2.0, 0.0, 2.0], steps=10).numpy()[:, 0]
    d = out[2] - out[0]
    fr = region_fractions(lab, sp, regions)
    parts = [f"{r} {d[f >= 0.5].mean():+.4f} (n {int((f >= 0.5).sum())})" for r, f in fr.items()]
    brain = sum(fr.values()) >= 0.5
    smooth = ndi.gaussian_filter(d, 2.0)
    share = float((smooth[brain] ** 2).sum() / (d[brain] ** 2).sum())
    print(f"{s}: mean Δ inside " + ", ".join(parts) + f"; brain {d[brain].mean():+.4f}; |Δ| {np.abs(d[brain]).mean():.4f}; energy kept by a 6 mm blur {share:.2f}", flush=True)
