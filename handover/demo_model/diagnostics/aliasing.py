"""The autoencoder alone on registered 1 mm brains, resampled to the model grid as they are and after a
Gaussian pre-smoothing: SSIM (volume / brain) of decode(μ) against its own model-space input.
usage: aliasing.py BUNDLE BRAIN_MNI.nii.gz ...   (BRAIN_MNI: what `ldae preprocess` writes as brain_mni.nii.gz)
The bundle's own `antialias` setting is ignored: the three columns are no smoothing, σ 1 mm, σ 1.27 mm."""
import sys, numpy as np, torch, nibabel as nib
from dataclasses import replace
from scipy import ndimage
from LDAELib.weights import load_model
from LDAELib.space import to_model_space
from LDAELib.evaluation.similarity import ssim, brain_mask
torch.set_num_threads(2)
model = load_model(sys.argv[1]); ae = model.autoencoder.float().eval()
cfg = replace(model.config.space, antialias=False)
def score(x):
    with torch.inference_mode():
        mu, _ = ae.encode(torch.from_numpy(x)[None, None]); r = ae.decode(mu).float().numpy()[0, 0]
    return f"{ssim(r, x, 1.0):.4f} / {ssim(r, x, 1.0, mask=brain_mask(x)):.4f}"
for path in sys.argv[2:]:
    img = nib.load(path); b = img.get_fdata(dtype=np.float32); out = []
    for tag, sigma in (("as is", 0.0), ("σ 1 mm", 1.0), ("σ 1.27 mm", 1.27)):
        v = ndimage.gaussian_filter(b, sigma) if sigma else b
        x, _ = to_model_space(v, img.affine, cfg)
        out.append(f"{tag} {score(np.asarray(x, np.float32).squeeze())}")
    print(path, " | ".join(out), flush=True)
