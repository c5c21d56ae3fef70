"""How much of a code swap's target the gradient estimator delivers. For pairs of scans (A, B), z_t
from A and seeded noise: the pair objective asks c_t·(g(z_t, y_B) − g(z_t, y_A)) to equal
√snr_t · L(z0_B − z0_A) (L: mean over pool³ latent voxels, spread back). Printed per t: the gain
<c_t·Δg, T>/<T, T> (1 = all of it, 0 = nothing) and the cosine of c_t·Δg with T; training and
validation pairs. usage: pairgain.py RUN CKPT_DIR [POOL]"""
import sys, json, numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
from LDAELib.model import LDAEConfig
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.nets.semantic_encoder import SemanticEncoder
from LDAELib.nets.unet import ShiftUNet
from LDAELib.training.autoencoder import Latents
from LDAELib.training.data import read_cohort, visit_order, semantic_input
from LDAELib.training.representation import shift_coefficients, coarse_part
from LDAELib.training.ddpm import alphas_cumprod_tensor
torch.set_grad_enabled(False)
run, ck = Path(sys.argv[1]), Path(sys.argv[2]); pool = int(sys.argv[3]) if len(sys.argv) > 3 else 2
recipe = json.loads((run / "recipe.json").read_text()); cfg = LDAEConfig.from_dict(recipe["model"])
lat = Latents.load(run / "latents"); split = json.loads((run / "split.json").read_text())
csv = Path(split["settings"]["cohort_csv"])
crow = read_cohort(csv); crow.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
w = load_file(str(ck / "weights.safetensors"))
enc = SemanticEncoder.from_config(cfg.encoder); su = ShiftUNet(cfg.unet)
enc.load_state_dict({k[12:]: v for k, v in w.items() if k.startswith("ema.encoder.")})
su.load_state_dict({k[15:]: v for k, v in w.items() if k.startswith("ema.shift_unet.")}); enc.eval(); su.eval()
coef, wt = shift_coefficients(cfg.num_timesteps); ab = alphas_cumprod_tensor(cfg.num_timesteps)
def ms(p):
    v = read_image(p); x, _ = to_model_space(v.data, v.affine, cfg.space); return torch.as_tensor(np.asarray(x, np.float32)).reshape(1, 1, *cfg.space.shape)
for part in ("train", "val"):
    subj = set(split["subjects"][part])
    rows = [i for i, r in enumerate(crow) if r.subject in subj and lat.has(i)][::7][:10]
    z0 = lat.scaled_means(rows)
    x = torch.cat([ms(csv.parent / crow[i].path) for i in rows])
    y = enc(semantic_input(x, cfg.slicing_plane)).float()
    perm = list(range(1, len(rows))) + [0]
    zB = z0[perm]; yB = y[perm]
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    for t in (900, 700, 500, 300, 200):
        zt = ab[t].sqrt() * z0 + (1 - ab[t]).sqrt() * noise
        tt = torch.full((len(rows),), t)
        _, gA = su(zt, tt, y); _, gB = su(zt, tt, yB)
        d = (coef[t] * (gB.float() - gA.float())).flatten(1)
        T = ((ab[t] / (1 - ab[t])).sqrt() * coarse_part(zB - z0, pool)).flatten(1)
        gain = (d * T).sum(1) / T.pow(2).sum(1)
        cos = (d * T).sum(1) / (d.norm(dim=1) * T.norm(dim=1))
        print(f"{part:5s} t {t:3d}  gain median {float(gain.median()):+.3f} (range {float(gain.min()):+.3f} … {float(gain.max()):+.3f})  cos median {float(cos.median()):+.3f}  |Δg|/|T| {float((d.norm(dim=1) / T.norm(dim=1)).median()):.3f}", flush=True)
