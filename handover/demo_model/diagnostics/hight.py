"""ε-MSE of a DDPM checkpoint's EMA ε-branch at fixed t on validation latents (z0 = μ, seeded noise).
usage: hight.py RUN CKPT_DIR"""
import sys, json, torch
from pathlib import Path
from safetensors.torch import load_file
from LDAELib.model import LDAEConfig
from LDAELib.nets.unet import UNet
from LDAELib.training.autoencoder import Latents
from LDAELib.training.ddpm import alphas_cumprod_tensor
run, ck = Path(sys.argv[1]), Path(sys.argv[2])
recipe = json.loads((run / "recipe.json").read_text())
cfg = LDAEConfig.from_dict(recipe["model"])
w = load_file(str(ck / "weights.safetensors"))
pre = "ema.unet."
net = UNet(cfg.unet); net.load_state_dict({k[len(pre):]: v for k, v in w.items() if k.startswith(pre)}); net.eval()
lat = Latents.load(run / "latents")
split = json.loads((run / "split.json").read_text())
from LDAELib.training.data import read_cohort, visit_order
crow = read_cohort(split["settings"]["cohort_csv"]); crow.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
val_subj = set(split["subjects"]["val"])
rows = [i for i, r in enumerate(crow) if r.subject in val_subj and lat.has(i)][::7][:4]
z0 = lat.scaled_means(rows)
ab = alphas_cumprod_tensor(cfg.num_timesteps)
g = torch.Generator().manual_seed(0)
noise = torch.randn(z0.shape, generator=g)
out = {}
with torch.no_grad():
    for t in (999, 800, 600, 400, 200, 50):
        a = ab[t]
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        eps = net(zt, torch.full((len(rows),), t, dtype=torch.int64)).float()
        mse = float((eps - noise).pow(2).mean())
        slope = float((eps * noise).sum() / (noise * noise).sum())
        out[t] = (round(mse, 4), round(slope, 3))
print(ck.name, "rows", rows, {t: f"mse {m} slope {s}" for t, (m, s) in out.items()})
