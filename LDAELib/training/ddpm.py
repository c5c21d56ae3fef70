"""Stage (b): the latent DDPM UNet (the ε-branch of the later ShiftUNet), trained with plain MSE on ε.

z0 = scale · (μ + σ·ε_lat) of a training volume (or scale · μ), t ~ U{0 … T−1}, noise ~ N(0, I),
z_t = √ᾱ_t · z0 + √(1−ᾱ_t) · noise on the authors' 1000-step linear schedule; loss = mean (ε_θ(z_t, t) − noise)².
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..diffusion.schedule import linear_alphas_cumprod
from ..nets.blocks import AttentionBlock, ResBlock
from ..nets.unet import UNet
from .autoencoder import Latents
from .config import DDPMStageConfig
from .data import TrainingData
from .distributed import item_generator
from .trainer import Objective

STAGE_ID = 2


def zero_init_outputs(module: nn.Module) -> nn.Module:
    """guided-diffusion initialisation: the last conv of every residual branch, every attention
    projection and the output convs start at zero, so each block starts as the identity."""
    for m in module.modules():
        if isinstance(m, ResBlock):
            conv = m.out_layers[-1]
        elif isinstance(m, AttentionBlock):
            conv = m.proj_out
        else:
            continue
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    for name in ("out", "shift_out"):
        seq = getattr(module, name, None)
        if seq is not None:
            nn.init.zeros_(seq[-1].weight)
            nn.init.zeros_(seq[-1].bias)
    return module


def alphas_cumprod_tensor(num_timesteps: int) -> torch.Tensor:
    return torch.from_numpy(np.asarray(linear_alphas_cumprod(num_timesteps), dtype=np.float32).copy())


def diffusion_draws(shape: tuple, num_timesteps: int, *key: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(t, noise, latent ε) for one item at one step, from its own generator (same on every rank)."""
    g = item_generator(*key)
    t = int(torch.randint(0, num_timesteps, (1,), generator=g))
    noise = torch.randn(shape, generator=g)
    eps_lat = torch.randn(shape, generator=g)
    return t, noise, eps_lat


class LatentBatches:
    """Batches of (z0, t, noise) from the stored latents, shared by the DDPM and representation stages."""

    def __init__(self, latents: Latents, num_timesteps: int, latent_mode: str, seed: int, stage_id: int, device: torch.device) -> None:
        self.latents, self.T, self.mode, self.seed, self.stage_id, self.device = latents, num_timesteps, latent_mode, seed, stage_id, device
        self.shape = tuple(latents.mu.shape[1:])

    def __call__(self, rows: list[int], step: int) -> dict[str, torch.Tensor]:
        z0s, ts, noises = [], [], []
        for r in rows:
            t, noise, eps_lat = diffusion_draws(self.shape, self.T, self.seed, self.stage_id, step, r)
            p = self.latents.position(r)
            z = self.latents.mu[p]
            if self.mode == "sample":
                z = z + self.latents.sigma[p] * eps_lat
            z0s.append(self.latents.to_z0(z))
            ts.append(t)
            noises.append(noise)
        dev = self.device
        return {"z0": torch.stack(z0s).to(dev), "t": torch.tensor(ts, dtype=torch.int64, device=dev), "noise": torch.stack(noises).to(dev)}


class DDPMLoss(nn.Module):
    """(z0, t, noise) → (mean squared ε error, parts)."""

    def __init__(self, unet: UNet, num_timesteps: int) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod_tensor(num_timesteps), persistent=False)

    def forward(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        ab = self.alphas_cumprod[t].view(-1, *([1] * (z0.dim() - 1)))
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
        eps = self.unet(zt, t)
        loss = (eps.float() - noise.float()).pow(2).mean()
        return loss, {}


class DDPMObjective(Objective):
    name, stage_id = "ddpm", STAGE_ID

    def __init__(self, model_config, config: DDPMStageConfig, data: TrainingData, latents: Latents, device: torch.device, upstream: dict) -> None:
        self.config, self.data, self.device, self._upstream = config, data, torch.device(device), upstream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            unet = zero_init_outputs(UNet(model_config.unet))
        self.module = DDPMLoss(unet, model_config.num_timesteps).to(self.device)
        self.items = [r for r in data.indices["train"]]
        self.val_rows = [r for r in data.indices["val"] if latents.has(r)]
        self.draw = LatentBatches(latents, model_config.num_timesteps, config.latent, config.seed, STAGE_ID, self.device)

    def n_items(self) -> int:
        return len(self.items)

    def batch(self, items: list[int], step: int) -> dict[str, torch.Tensor]:
        return self.draw([self.items[i] for i in items], step)

    def fixed_batches(self) -> dict:
        return self.fixed_from(self.draw, self.items, self.val_rows)

    def upstream(self) -> dict:
        return self._upstream
