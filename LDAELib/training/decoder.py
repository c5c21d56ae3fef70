"""Stage (a′), optional and not in the paper: the autoencoder's decoder alone, on the stored latents.

The autoencoder stage trains encoder and decoder together on a budget; on a small CPU budget the
decoder is what blurs (docs/training.md, "Why the demo recipe sharpens the decoder"). This stage
starts from the EMA autoencoder, freezes the encoder (so the latents, the latent scale and the
diffusion stages stay valid) and trains ``post_quant_conv`` and the decoder with the L1 loss of
stage (a) on z = μ (``latent: mean``) or μ + σ·ε (``latent: sample``) of the training volumes,
cut into crops on the latent grid. The bundle then takes the decoder of this stage's EMA.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LDAEError
from ..nets.autoencoder import build_autoencoder
from .autoencoder import Latents
from .config import DecoderStageConfig
from .data import TrainingData
from .distributed import item_generator
from .trainer import Objective

STAGE_ID = 4
DECODER_PARTS = ("post_quant_conv", "decoder")
"""Top-level AutoencoderKL children that this stage trains."""


def is_decoder_parameter(name: str) -> bool:
    return name.split(".", 1)[0] in DECODER_PARTS


class DecoderLoss(nn.Module):
    """(z, x) → (mean |decode(z) − x|, parts). Holds the whole autoencoder (its encoder frozen)."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: torch.Tensor, x: torch.Tensor):
        rec = self.autoencoder.decode(z)
        l1 = (rec.float() - x.float()).abs().mean()
        return l1, {}


class DecoderObjective(Objective):
    name, stage_id = "decoder", STAGE_ID

    def __init__(self, model_config, config: DecoderStageConfig, data: TrainingData, latents: Latents,
                 autoencoder_state: dict[str, torch.Tensor], device: torch.device, upstream: dict) -> None:
        self.config, self.data, self.latents, self.device, self._upstream = config, data, latents, torch.device(device), upstream
        ae = build_autoencoder(model_config.autoencoder)
        ae.load_state_dict(autoencoder_state)
        for name, p in ae.named_parameters():
            p.requires_grad_(is_decoder_parameter(name))
        self.module = DecoderLoss(ae).to(self.device)
        f = self.downsampling = model_config.autoencoder.downsampling
        self.shape = tuple(model_config.space.shape)
        self.crop = tuple(int(c) for c in config.crop) if config.crop else None
        if self.crop is not None and (len(self.crop) != 3 or any(c % f or c < f or c > s for c, s in zip(self.crop, self.shape))):
            raise LDAEError(f"decoder crop {config.crop} must be three sizes, multiples of {f}, no larger than the model grid {self.shape}")
        self.items = [r for r in data.indices["train"] if latents.has(r)]
        if not self.items:
            raise LDAEError("the decoder stage needs the training latents; run 'ldae train autoencoder' first")

    def set_train_mode(self, module: nn.Module) -> None:
        module.train()
        ae = module.autoencoder
        for name, child in ae.named_children():
            if name not in DECODER_PARTS:
                child.eval()

    def n_items(self) -> int:
        return len(self.items)

    def _batch_rows(self, rows: list[int], step: int, crop: tuple[int, int, int] | None) -> dict[str, torch.Tensor]:
        zs, xs = [], []
        f, lat = self.downsampling, self.latents
        for r in rows:
            g = item_generator(self.config.seed, STAGE_ID, step, r)
            p = lat.position(r)
            z = lat.mu[p]
            if self.config.latent == "sample":
                z = z + lat.sigma[p] * torch.randn(z.shape, generator=g)
            x = torch.from_numpy(self.data.volumes[r])
            if crop is not None:  # offsets on the latent grid, as in the autoencoder stage
                o = [int(torch.randint(0, (s - c) // f + 1, (1,), generator=g)) for s, c in zip(self.shape, crop)]
                z = z[:, o[0]:o[0] + crop[0] // f, o[1]:o[1] + crop[1] // f, o[2]:o[2] + crop[2] // f]
                x = x[o[0] * f:o[0] * f + crop[0], o[1] * f:o[1] * f + crop[1], o[2] * f:o[2] * f + crop[2]]
            zs.append(z)
            xs.append(x)
        return {"z": torch.stack(zs).float().to(self.device), "x": torch.stack(xs)[:, None].to(self.device)}

    def batch(self, items: list[int], step: int) -> dict[str, torch.Tensor]:
        return self._batch_rows([self.items[i] for i in items], step, self.crop)

    def fixed_batches(self) -> dict:
        n = self.config.val_volumes
        out = {"train": self._batch_rows(self.items[:n], -1, None)}
        val = [r for r in self.data.indices["val"] if self.latents.has(r)]
        if val:
            out["val"] = self._batch_rows(val[:n], -1, None)
        return out

    def upstream(self) -> dict:
        return self._upstream
