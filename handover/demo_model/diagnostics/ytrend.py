"""How much the gradient estimator's output depends on the code, from a representation checkpoint.
usage: ytrend.py BUNDLE(for AE, shift) CKPT_DIR [CKPT_DIR ...]"""
import os, sys, numpy as np, torch
from pathlib import Path
from safetensors.torch import load_file
from LDAELib.resources import example_scans
from LDAELib.inference.image import read_image
from LDAELib.space import to_model_space
from LDAELib.weights import load_model
from LDAELib.nets.semantic_encoder import SemanticEncoder
from LDAELib.nets.unet import ShiftUNet
from LDAELib.training.data import semantic_input
from LDAELib.training.representation import shift_coefficients
from LDAELib.training.ddpm import alphas_cumprod_tensor
torch.set_grad_enabled(False)
model = load_model(sys.argv[1]); cfg = model.config; sp = cfg.space
cohort = Path(os.environ.get("LDAE_COHORT", "cohort"))  # the cohort folder the bundle was trained on
def ms(p):
    v = read_image(p); x, _ = to_model_space(v.data, v.affine, sp); return torch.as_tensor(np.asarray(x, np.float32)).reshape(1, 1, *sp.shape)
ex = example_scans()
scans = {"own": ms(ex[0].path), "v4": ms(ex[1].path), "sub1": ms(cohort / "sub-0001/sub-0001_visit-1_T1w.nii.gz"), "sub4": ms(cohort / "sub-0004/sub-0004_visit-1_T1w.nii.gz")}
mu, _ = model.autoencoder.encode(scans["own"]); z0 = model.scale_latent(mu.float())
coef, _ = shift_coefficients(cfg.num_timesteps); ab = alphas_cumprod_tensor(cfg.num_timesteps)
noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
for ck in sys.argv[2:]:
    w = load_file(str(Path(ck) / "weights.safetensors"))
    enc = SemanticEncoder.from_config(cfg.encoder); su = ShiftUNet(cfg.unet)
    enc.load_state_dict({k[12:]: v for k, v in w.items() if k.startswith("ema.encoder.")})
    su.load_state_dict({k[15:]: v for k, v in w.items() if k.startswith("ema.shift_unet.")}); enc.eval(); su.eval()
    ys = {k: enc(semantic_input(x, cfg.slicing_plane)).float() for k, x in scans.items()}
    ys["zero"] = torch.zeros_like(ys["own"])
    row = []
    for t in (800, 500, 200):
        zt = ab[t].sqrt() * z0 + (1 - ab[t]).sqrt() * noise
        tt = torch.tensor([t])
        gs = {k: float(coef[t]) * su(zt, tt, y)[1].float() for k, y in ys.items()}
        e = su(zt, tt, ys["own"])[0].float()
        rms = lambda a: float(a.pow(2).mean().sqrt())
        row.append(f"t{t}: mse {float((e-noise).pow(2).mean()):.4f}->{float((e+gs['own']-noise).pow(2).mean()):.4f} |cg| {rms(gs['own']):.3f} " +
                   " ".join(f"d_{k} {rms(gs['own']-gs[k]):.4f}" for k in ("v4", "sub1", "sub4", "zero")))
    print(Path(ck).parent.parent.parent.name, Path(ck).name, "\n  " + "\n  ".join(row), flush=True)
