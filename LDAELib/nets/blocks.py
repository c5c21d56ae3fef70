"""Building blocks of the latent UNet and the ShiftUNet gradient estimator.

Key names follow the authors' state dicts (guided-diffusion style): ``in_layers``, ``emb_layers``,
``out_layers``, ``skip_connection``, ``emb_z_layers`` for residual blocks; ``norm``, ``qkv``,
``proj_out`` for attention. Tensors are B×C×D×H×W; 3-D resampling acts only on the last two axes
(the first latent axis is never resampled).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of DDPM timesteps.

    Args:
        t: (B,) integer or float timesteps.
        dim: embedding size (even).
    Returns:
        (B, dim) float32, cosine half first, then sine.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (as the authors' blocks do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Average-pool by 2 on the last two spatial axes: B×C×D×H×W → B×C×D×H/2×W/2.

    Written as a 2-D pool over (B, C·D) planes: the same numbers as a (1,2,2) 3-D pool, and it also
    runs in bfloat16 on the CPU, where the 3-D pool has no kernel.
    """
    b, c, d, h, w = x.shape
    return F.avg_pool2d(x.reshape(b, c * d, h, w), 2).reshape(b, c, d, h // 2, w // 2)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour ×2 on the last two spatial axes: B×C×D×H×W → B×C×D×2H×2W."""
    d, h, w = x.shape[-3:]
    return F.interpolate(x, size=(d, 2 * h, 2 * w), mode="nearest")


class ResBlock(nn.Module):
    """Residual block with adaptive GroupNorm from the timestep embedding.

    h = Conv(SiLU(GN(x)));  (scale, shift) = Linear(SiLU(emb));  h = GN(h)·(1+scale) + shift;
    h = Conv(Dropout(SiLU(h)));  out = skip(x) + h.
    With ``resample`` = "down"/"up" the hidden path is resampled between the first GN-SiLU and its
    conv, and x by the same operation for the skip path. With ``shift=True`` (ResBlockShift of the
    gradient estimator) a second modulation from the semantic embedding z is applied:
    h = (1+zs)·(GN(h)·(1+scale)+shift) + zb.

    Args:
        channels: input channels; out_channels: output channels (default = channels).
        emb_channels: size of the timestep (and semantic) embedding.
        norm_groups: GroupNorm groups (the authors hard-code 32).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        resample: str | None = None,
        shift: bool = False,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.resample = resample
        self.shift = shift
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_groups, channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        if shift:
            self.emb_z_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(norm_groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv3d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if self.resample is None:
            h = self.in_layers(x)
        else:
            op = downsample if self.resample == "down" else upsample
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](op(h))
            x = op(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, 1, 1, 1)
        scale, shift = emb_out.chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        if self.shift:
            assert z is not None, "a ResBlockShift needs the semantic embedding"
            z_out = self.emb_z_layers(z).type(h.dtype)
            z_out = z_out.reshape(*z_out.shape, 1, 1, 1)
            z_scale, z_shift = z_out.chunk(2, dim=1)
            h = (1 + z_scale) * h + z_shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, guided-diffusion "legacy" head layout.

    x: B×C×(spatial) → same shape. qkv is a 1×1 Conv1d (weight 3C×C×1); with H heads the qkv
    channels are split per head first, then into q|k|v; logits are scaled by 1/√(C/H).
    """

    def __init__(self, channels: int, num_heads: int = 1, head_channels: int = -1, norm_groups: int = 32) -> None:
        super().__init__()
        if head_channels == -1:
            self.num_heads = num_heads
        else:
            assert channels % head_channels == 0
            self.num_heads = channels // head_channels
        self.norm = GroupNorm32(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        spatial = x.shape[2:]
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
        h = self.proj_out(a)
        return (x + h).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """A sequence of blocks; residual blocks receive the embeddings, other blocks only x."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, z)
            elif isinstance(layer, AttentionBlock):
                x = layer(x)
            else:
                x = layer(x)
        return x
