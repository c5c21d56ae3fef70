"""Per-t: where the gradient estimator's loss gain comes from (own code vs another subject's code).
usage: ygain.py RUN CKPT_DIR"""
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
from LDAELib.training.representation import shift_coefficients
from LDAELib.training.ddpm import alphas_cumprod_tensor
torch.set_grad_enabled(False); torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
run, ck = Path(sys.argv[1]), Path(sys.argv[2])
recipe = json.loads((run / "recipe.json").read_text()); cfg = LDAEConfig.from_dict(recipe["model"])
lat = Latents.load(run / "latents"); split = json.loads((run / "split.json").read_text())
csv = Path(split["settings"]["cohort_csv"])
crow = read_cohort(csv); crow.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
subj = set(split["subjects"]["train"])
rows = [i for i, r in enumerate(crow) if r.subject in subj and lat.has(i)][::21][:12]
z0 = lat.scaled_means(rows)
def ms(p):
    v = read_image(p); x, _ = to_model_space(v.data, v.affine, cfg.space); return torch.as_tensor(np.asarray(x, np.float32)).reshape(1, 1, *cfg.space.shape)
x = torch.cat([ms(csv.parent / crow[i].path) for i in rows])
w = load_file(str(ck / "weights.safetensors"))
enc = SemanticEncoder.from_config(cfg.encoder); su = ShiftUNet(cfg.unet)
enc.load_state_dict({k[12:]: v for k, v in w.items() if k.startswith("ema.encoder.")})
su.load_state_dict({k[15:]: v for k, v in w.items() if k.startswith("ema.shift_unet.")}); enc.eval(); su.eval()
y = enc(semantic_input(x, cfg.slicing_plane)).float()
yo = y.roll(1, 0)
print("code norm", float(y.norm(dim=1).mean()), "spread between items", float((y - yo).norm(dim=1).mean()))
coef, wt = shift_coefficients(cfg.num_timesteps); ab = alphas_cumprod_tensor(cfg.num_timesteps)
noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
tot = np.zeros(3)
for t in (999, 900, 800, 700, 600, 500, 400, 300, 200, 100, 50, 10):
    zt = ab[t].sqrt() * z0 + (1 - ab[t]).sqrt() * noise
    tt = torch.full((len(rows),), t)
    e, g = su(zt, tt, y); _, go = su(zt, tt, yo)
    m = [float((a - noise).pow(2).mean()) for a in (e.float(), e.float() + coef[t] * g.float(), e.float() + coef[t] * go.float())]
    tot += float(wt[t]) * np.array(m)
    print(f"t {t:4d} w {float(wt[t]):.3f} c {float(coef[t]):+.3f}  eps {m[0]:.4f}  own-y {m[1]:.4f}  other-y {m[2]:.4f}  y-part gain {m[2]-m[1]:+.5f}", flush=True)
print("w-weighted sums", tot.round(4))
