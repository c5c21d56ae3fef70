"""Quick look at a bundle on the two shipped example visits (sub-0058, a test subject): reconstruction,
disease/age edits (dark voxels around the ventricles), variations. usage: quick.py BUNDLE [STEPS]"""
import sys, time, numpy as np, torch
from LDAELib.resources import example_scans
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.pipeline import LDAEPipeline
from LDAELib.evaluation.similarity import ssim
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
model = load_model(sys.argv[1]); pipe = LDAEPipeline(model)
alphas = [-2.0, -1.0, 0.0, 1.0, 2.0]
for scan in example_scans():
    v = read_image(scan.path); x, _ = to_model_space(v.data, v.affine, model.config.space)
    x = np.asarray(x, np.float32).squeeze()
    t0 = time.time(); enc = pipe.encode(x, steps=steps)
    rec = pipe.reconstruct(x, steps=steps)[0, 0].numpy()
    brain = x > 0.05
    line = [scan.path.name]
    if rec is not None:
        line.append(f"recon {ssim(rec, x, 1.0):.3f}/{ssim(np.where(brain, rec, 0), np.where(brain, x, 0), 1.0):.3f}")
    for name in ("disease", "age"):
        out = pipe.edit(x, model.directions[name], alphas, steps=steps).numpy()[:, 0]
        c = out[:, 22:42, 25:55, 25:45]
        dark = (c < 0.25).sum(axis=(1, 2, 3))
        line.append(f"{name}: dark {dark.tolist()} |d(+2,-2)| {np.abs(out[-1]-out[0]).mean():.4f}")
    ref = pipe.decode(enc.z0)[0, 0].numpy()
    sims = []
    for seed in (0, 1):
        noise = torch.randn(enc.z0.shape, generator=torch.Generator().manual_seed(seed))
        s = pipe.sample(enc.y_sem, noise, steps=steps)[0, 0].numpy(); sims.append(round(ssim(s, ref, 1.0), 3))
    line.append(f"vary {sims}  ({time.time()-t0:.0f}s)")
    print(" | ".join(line), flush=True)
