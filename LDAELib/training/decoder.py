"""Stage (a′), optional: the autoencoder's decoder refined on the posterior means μ.

The autoencoder stage trains its decoder on sampled latents μ + σ·ε. With a weak KL term σ is as
large as the spread of μ between scans, so that decoder learns to undo a great deal of noise and
blurs. At inference it only ever sees μ-like latents: the pipeline encodes μ, and a DDIM inversion
and sampling come back to it closely (the demo model's LDAE reconstruction scores SSIM 0.939 where
decode(μ) scores 0.941). This stage freezes the encoder and
trains the decoder (and its post-quantisation convolution) on decode(μ) with the autoencoder
stage's loss (L1 + ``ssim_weight`` × (1 − SSIM)) and augmentation. The encoder, and so μ, the
latent scale, the latent shift and everything the diffusion stages learnt on them, stay valid:
the stage may run before or after the DDPM and the representation stage, and the bundle takes
its decoder when it is complete. (Stable Diffusion's released VAE decoders were refined the same
way, the encoder frozen to keep the latent space.)
"""

from __future__ import annotations

import torch
from torch import nn

from ..nets.autoencoder import build_autoencoder
from .augment import augment_volume
from .autoencoder import reconstruction_loss
from .config import DecoderStageConfig
from .data import TrainingData
from .distributed import item_generator
from .trainer import Objective

STAGE_ID = 5
DECODER_PREFIXES = ("post_quant_conv.", "decoder.")
"""The autoencoder's parameters this stage trains (state-dict key prefixes)."""


def is_decoder_parameter(name: str) -> bool:
    return name.startswith(DECODER_PREFIXES)


class DecoderLoss(nn.Module):
    """x → (loss, parts): decode(μ(x)) against x, the encoder frozen and run without gradients."""

    def __init__(self, autoencoder: nn.Module, ssim_weight: float = 0.0, edge_weight: float = 0.0) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.ssim_weight = float(ssim_weight)
        self.edge_weight = float(edge_weight)
        for name, p in autoencoder.named_parameters():
            p.requires_grad_(is_decoder_parameter(name))

    def forward(self, x: torch.Tensor):
        with torch.no_grad():
            mu, _ = self.autoencoder.encode(x)
        return reconstruction_loss(self.autoencoder.decode(mu.detach()), x, self.ssim_weight, self.edge_weight)


class DecoderObjective(Objective):
    name, stage_id = "decoder", STAGE_ID

    def __init__(self, model_config, config: DecoderStageConfig, data: TrainingData, autoencoder_state: dict,
                 device: torch.device, upstream: dict) -> None:
        self.config, self.data, self.device, self._upstream = config, data, torch.device(device), dict(upstream)
        ae = build_autoencoder(model_config.autoencoder)
        ae.load_state_dict(autoencoder_state)
        self.module = DecoderLoss(ae, config.ssim_weight, config.edge_weight).to(self.device)
        self.items = list(data.indices["train"])

    def n_items(self) -> int:
        return len(self.items)

    def set_train_mode(self, module: nn.Module) -> None:
        module.train()
        inner = getattr(module, "module", module).autoencoder  # DDP wraps the loss module
        for part in (inner.encoder, inner.quant_conv_mu, inner.quant_conv_log_sigma):
            part.eval()

    def _batch_rows(self, rows: list[int], step: int) -> dict[str, torch.Tensor]:
        xs = []
        for r in rows:
            g = item_generator(self.config.seed, STAGE_ID, step, r)
            x = torch.from_numpy(self.data.volumes[r])
            if step >= 0 and self.config.augment > 0 and float(torch.rand((), generator=g)) < self.config.augment:
                x = augment_volume(x, g)
            xs.append(x)
        return {"x": torch.stack(xs)[:, None].to(self.device)}

    def batch(self, items: list[int], step: int) -> dict[str, torch.Tensor]:
        return self._batch_rows([self.items[i] for i in items], step)

    def fixed_batches(self) -> dict:
        return self.fixed_from(self._batch_rows, self.items, self.data.indices["val"])

    def upstream(self) -> dict:
        return self._upstream


def decoder_state(ema_state: dict) -> dict:
    """The refined decoder's tensors (autoencoder state-dict keys) from the stage's EMA group."""
    prefix = "autoencoder."
    return {k[len(prefix):]: v for k, v in ema_state.items() if k.startswith(prefix) and is_decoder_parameter(k[len(prefix):])}
