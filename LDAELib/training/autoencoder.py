"""Stage (a): the AutoencoderKL, and the latents (and latent scale) that the later stages train on.

Loss per batch: mean |x̂ − x| + kl_weight · KL, with x̂ = decode(μ + σ·ε) and
KL = ½ Σ (μ² + σ² − log σ² − 1) summed over the latent of a volume, averaged over the batch (the
MONAI generative-models convention). The authors add a perceptual (LPIPS-style) loss and a patch
adversarial loss; we leave both out (see docs/training.md).

After the stage, every training and validation volume is encoded once by the EMA autoencoder;
μ and σ are stored in ``latents.safetensors`` and the latent scale = 1 / std of the training
latents (sampled μ + σ·ε with a fixed seed; the authors took the std of their first training batch)
in ``latents.json``. The diffusion stages draw z0 = scale · (μ + σ·ε) from these.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LDAEError
from ..nets.autoencoder import build_autoencoder
from .augment import augment_volume
from .checkpoint import write_json_atomic
from .config import AutoencoderStageConfig
from .data import TrainingData
from .distributed import item_generator
from .trainer import Objective

STAGE_ID = 1


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    r = int(truncate * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    return k / k.sum()


def ssim_3d(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Differentiable mean SSIM of B×1×A×B×S volumes ``a`` against ``b``: the evaluation's definition
    (``LDAELib.evaluation.similarity.ssim``: Gaussian σ 1.5, 11-voxel window, K1 0.01, K2 0.03, 5-voxel border
    left out), except that the window is cut at the edges instead of mirrored. float32."""
    k = _gaussian_window().to(a.device)

    def blur(v: torch.Tensor) -> torch.Tensor:
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = k.numel()
            v = F.conv3d(v, k.view(shape))
        return v

    a, b = a.float(), b.float()
    ua, ub = blur(a), blur(b)
    va, vb, vab = blur(a * a) - ua * ua, blur(b * b) - ub * ub, blur(a * b) - ua * ub
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.mean()


def edge_difference(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean |∇rec − ∇x| over the three axes (forward differences, float32): what an image term of L1
    and SSIM lets a decoder trade away under uncertainty, the sharpness of edges."""
    r, t = rec.float(), x.float()
    total = r.new_zeros(())
    for axis in (-3, -2, -1):
        total = total + (torch.diff(r, dim=axis) - torch.diff(t, dim=axis)).abs().mean()
    return total / 3


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, ssim_weight: float, edge_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """mean |rec − x| + ``ssim_weight`` · (1 − SSIM(rec, x)) + ``edge_weight`` · mean |∇rec − ∇x| and
    its logged parts: the image term of the autoencoder stage and of the decoder stage."""
    l1 = (rec.float() - x.float()).abs().mean()
    loss, parts = l1, {"l1": l1.detach()}
    if ssim_weight > 0:
        s = ssim_3d(rec, x)
        loss = loss + ssim_weight * (1.0 - s)
        parts["ssim"] = s.detach()
    if edge_weight > 0:
        e = edge_difference(rec, x)
        loss = loss + edge_weight * e
        parts["edge"] = e.detach()
    return loss, parts


class AutoencoderLoss(nn.Module):
    """Wraps the AutoencoderKL so that DDP sees one forward: (x, eps) → (loss, parts)."""

    def __init__(self, autoencoder: nn.Module, kl_weight: float, ssim_weight: float = 0.0, edge_weight: float = 0.0) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.kl_weight = float(kl_weight)
        self.ssim_weight = float(ssim_weight)
        self.edge_weight = float(edge_weight)

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        mu, sigma = self.autoencoder.encode(x)
        z = mu + sigma * eps.to(mu.dtype)
        rec = self.autoencoder.decode(z)
        loss, parts = reconstruction_loss(rec, x, self.ssim_weight, self.edge_weight)
        mu, sigma = mu.float(), sigma.float()
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-30)) - 1).flatten(1).sum(1).mean()
        return loss + self.kl_weight * kl, {**parts, "kl": kl.detach()}


class AutoencoderObjective(Objective):
    name, stage_id = "autoencoder", STAGE_ID

    def __init__(self, model_config, config: AutoencoderStageConfig, data: TrainingData, device: torch.device) -> None:
        self.config, self.data, self.device = config, data, torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            ae = build_autoencoder(model_config.autoencoder)
        self.module = AutoencoderLoss(ae, config.kl_weight, config.ssim_weight, config.edge_weight).to(self.device)
        f = self.downsampling = model_config.autoencoder.downsampling
        self.shape = tuple(model_config.space.shape)
        self.crop = tuple(int(c) for c in config.crop) if config.crop else None
        if self.crop is not None and (len(self.crop) != 3 or any(c % f or c < f or c > s for c, s in zip(self.crop, self.shape))):
            raise LDAEError(f"autoencoder crop {config.crop} must be three sizes, multiples of {f}, no larger than the model grid {self.shape}")
        self.latent_channels = model_config.autoencoder.latent_channels
        self.items = list(data.indices["train"])

    def n_items(self) -> int:
        return len(self.items)

    def _batch_rows(self, rows: list[int], step: int, crop: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor]:
        xs, eps = [], []
        size = crop or self.shape
        f = self.downsampling
        for r in rows:
            g = item_generator(self.config.seed, STAGE_ID, step, r)
            x = torch.from_numpy(self.data.volumes[r])
            if crop is not None:  # offsets on the latent grid, so crops see the same voxel phases as whole volumes
                o = [int(torch.randint(0, (s - c) // f + 1, (1,), generator=g)) * f for s, c in zip(self.shape, crop)]
                x = x[o[0]:o[0] + crop[0], o[1]:o[1] + crop[1], o[2]:o[2] + crop[2]]
            if step >= 0 and self.config.augment > 0 and float(torch.rand((), generator=g)) < self.config.augment:
                x = augment_volume(x.to(self.device), g)  # training steps only: the fixed validation batches stay as stored
            xs.append(x)
            eps.append(torch.randn((self.latent_channels, *(c // f for c in size)), generator=g))
        return {"x": torch.stack([x.to(self.device) for x in xs])[:, None], "eps": torch.stack(eps).to(self.device)}

    def batch(self, items: list[int], step: int) -> dict[str, torch.Tensor]:
        return self._batch_rows([self.items[i] for i in items], step, self.crop)

    def fixed_batches(self) -> dict:
        return self.fixed_from(self._batch_rows, self.items, self.data.indices["val"])


@torch.inference_mode()
def encode_latents(autoencoder: nn.Module, data: TrainingData, rows: list[int], device: torch.device, batch_size: int = 4, progress=None,
                   transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """μ, σ (N×C×d×h×w float32, CPU) of the given rows, in order; ``transform`` (optional) maps each
    stored volume (numpy) before it is encoded."""
    autoencoder.eval()
    mus, sigmas = [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        if transform is None:
            batch = data.volumes.batch(chunk, device)
        else:
            batch = torch.from_numpy(np.stack([transform(data.volumes[r]) for r in chunk]))[:, None].to(device)
        mu, sigma = autoencoder.encode(batch)
        mus.append(mu.float().cpu())
        sigmas.append(sigma.float().cpu())
        if progress is not None:
            progress(min(i + batch_size, len(rows)), len(rows))
    return torch.cat(mus), torch.cat(sigmas)


def latent_scale_of(mu: torch.Tensor, sigma: torch.Tensor, seed: int, shift: torch.Tensor | None = None) -> float:
    """1 / std of sampled latents μ + σ·ε (ε from ``seed``), less ``shift`` when given: the scale
    that makes z0 about unit variance."""
    g = torch.Generator().manual_seed(int(seed))
    z = mu + sigma * torch.randn(mu.shape, generator=g)
    if shift is not None:
        z = z - shift
    return float(1.0 / z.float().std().clamp_min(1e-8))


def channel_usage(mu: torch.Tensor, sigma: torch.Tensor) -> list[float]:
    """Per latent channel: the spread of μ (std over volumes and voxels) over the mean posterior σ.

    A channel whose ratio is below 1 is drowned by its own sampling noise: the decoder, trained on
    μ + σ·ε, learns to ignore it, and the autoencoder works with fewer channels than it has (the sign
    of a KL weight too strong for the reconstruction loss; lower ``autoencoder.kl_weight``).
    """
    mu, sigma = mu.float(), sigma.float()
    return [float(mu[:, c].std() / sigma[:, c].mean().clamp_min(1e-12)) for c in range(mu.shape[1])]


class Latents:
    """The encoded training/validation latents: ``mu[row]``, ``sigma[row]`` by cohort row index.

    ``shift`` (C×d×h×w, or None): the mean training μ that a model with ``latent_shift`` subtracts
    before scaling, so the diffusion stages see z0 = (z − shift) · scale.
    """

    FILE, META = "latents.safetensors", "latents.json"

    def __init__(self, rows: list[int], mu: torch.Tensor, sigma: torch.Tensor, scale: float, meta: dict, shift: torch.Tensor | None = None) -> None:
        self.rows, self.mu, self.sigma, self.scale, self.meta, self.shift = list(rows), mu, sigma, float(scale), meta, shift
        self._pos = {r: i for i, r in enumerate(self.rows)}

    def position(self, row: int) -> int:
        return self._pos[row]

    def has(self, row: int) -> bool:
        return row in self._pos

    def to_z0(self, z: torch.Tensor) -> torch.Tensor:
        """Autoencoder latent(s) → the diffusion's z0: (z − shift) · scale, as ``LDAEModel.scale_latent``."""
        if self.shift is not None:
            z = z - self.shift
        return z * self.scale

    def scaled_means(self, rows: list[int]) -> torch.Tensor:
        """The deterministic z0 of each volume, (μ − shift) × latent scale (N×C×d×h×w float32)."""
        return self.to_z0(torch.stack([self.mu[self._pos[r]] for r in rows]).float())

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file
        import os
        import tempfile

        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".latents.", suffix=".safetensors", dir=folder)
        os.close(fd)
        tensors = {"mu": self.mu.contiguous(), "sigma": self.sigma.contiguous(), "rows": torch.tensor(self.rows, dtype=torch.int64)}
        if self.shift is not None:
            tensors["shift"] = self.shift.float().contiguous()
        try:
            save_file(tensors, tmp)
            os.replace(tmp, folder / self.FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        write_json_atomic(folder / self.META, {"latent_scale": self.scale, **self.meta})

    @classmethod
    def load(cls, folder: Path) -> "Latents | None":
        from safetensors.torch import load_file

        if not (folder / cls.META).is_file() or not (folder / cls.FILE).is_file():
            return None
        meta = json.loads((folder / cls.META).read_text())
        t = load_file(str(folder / cls.FILE))
        scale = meta.pop("latent_scale")
        return cls(t["rows"].tolist(), t["mu"], t["sigma"], scale, meta, t.get("shift"))
