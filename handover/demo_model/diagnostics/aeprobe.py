"""An autoencoder checkpoint on validation visits: reconstruction SSIM (volume / brain, decode(μ)), and how
much of the latent μ's between-visit variance is coarse (pooled 4× in latent space) against the same
share in the image (pooled 16×, the same extent). usage: aeprobe.py RUN WEIGHTS PREFIX"""
import sys, json, numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
from LDAELib.model import LDAEConfig
from LDAELib.nets.autoencoder import build_autoencoder
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.evaluation.similarity import ssim
from LDAELib.training.data import read_cohort, visit_order
torch.set_grad_enabled(False)
run, wpath, pre = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = LDAEConfig.from_dict(json.loads((run / "recipe.json").read_text())["model"])
ae = build_autoencoder(cfg.autoencoder); w = load_file(wpath)
ae.load_state_dict({k[len(pre):]: v.float() for k, v in w.items() if k.startswith(pre)}); ae.eval()
split = json.loads((run / "split.json").read_text()); csv = Path(split["settings"]["cohort_csv"])
crow = read_cohort(csv); crow.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
val = [r for r in crow if r.subject in set(split["subjects"]["val"])][::4][:16]
def ms(r):
    v = read_image(r.path); x, _ = to_model_space(v.data, v.affine, cfg.space); return torch.as_tensor(np.asarray(x, np.float32)).reshape(1, 1, *cfg.space.shape)
xs, mus, sv, sb = [], [], [], []
for r in val:
    x = ms(r); mu, sig = ae.encode(x); rec = ae.decode(mu).clamp(0, 1)[0, 0].numpy(); xn = x[0, 0].numpy(); b = xn > 0.05
    sv.append(ssim(rec, xn, 1.0)); sb.append(ssim(np.where(b, rec, 0), np.where(b, xn, 0), 1.0)); xs.append(x); mus.append(mu)
mu = torch.cat(mus); X = torch.cat(xs)
lv = float(mu.var(0).mean()); lc = float(torch.nn.functional.avg_pool3d(mu, 4, ceil_mode=True).var(0).mean())
iv = float(X.var(0).mean()); ic = float(torch.nn.functional.avg_pool3d(X, 16, ceil_mode=True).var(0).mean())
print(f"{wpath}: {len(val)} val visits, SSIM volume {np.median(sv):.3f} / brain {np.median(sb):.3f} (medians); "
      f"latent {tuple(mu.shape[1:])}: coarse share {lc/lv:.3f} (white {1/64:.4f}); image coarse share {ic/iv:.3f}; per-channel var {[round(float(v),3) for v in mu.var(0).mean((1,2,3))]}")
