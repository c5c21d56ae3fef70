"""ε-MSE of a DDPM checkpoint's EMA ε-branch at fixed t (999 … 50), training against validation latents
(the error at t = 999, where 4·10⁻⁵ is possible, and memorisation).
usage: memo.py RUN CKPT_DIR"""
import sys, json, torch
from pathlib import Path
from safetensors.torch import load_file
from LDAELib.model import LDAEConfig
from LDAELib.nets.unet import UNet
from LDAELib.training.autoencoder import Latents
from LDAELib.training.ddpm import alphas_cumprod_tensor
from LDAELib.training.data import read_cohort, visit_order
torch.set_num_threads(1)
run, ck = Path(sys.argv[1]), Path(sys.argv[2])
recipe = json.loads((run / "recipe.json").read_text())
cfg = LDAEConfig.from_dict(recipe["model"])
w = load_file(str(ck / "weights.safetensors"))
pre = "ema.unet."
net = UNet(cfg.unet); net.load_state_dict({k[len(pre):]: v for k, v in w.items() if k.startswith(pre)}); net.eval()
lat = Latents.load(run / "latents")
split = json.loads((run / "split.json").read_text())
crow = read_cohort(split["settings"]["cohort_csv"]); crow.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
ab = alphas_cumprod_tensor(cfg.num_timesteps)
for part in ("train", "val"):
    subj = set(split["subjects"][part])
    rows = [i for i, r in enumerate(crow) if r.subject in subj and lat.has(i)][::5][:8]
    z0 = lat.scaled_means(rows)
    out = {}
    with torch.no_grad():
        for t in (999, 800, 600, 400, 200, 50):
            m = []
            for seed in (0, 1):
                noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
                a = ab[t]
                zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
                eps = net(zt, torch.full((len(rows),), t, dtype=torch.int64)).float()
                m.append(float((eps - noise).pow(2).mean()))
            out[t] = round(sum(m) / 2, 4)
    print(part, len(rows), out, flush=True)
