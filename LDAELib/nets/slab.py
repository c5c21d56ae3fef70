"""The autoencoder's decoder on a slab: the image slices [a, b) along one axis, without the rest.

The AutoencoderKL decoder without attention is a stack of 3×3×3 convolutions, nearest ×2
upsamplings, pointwise SiLU and GroupNorm. Everything but GroupNorm is local, so the image slices
[a, b) along one axis depend only on the latent slab under them plus the decoder's receptive field
as a halo (``receptive_field``: 10 latent voxels for the authors' decoder, 9 for the demo size).
Here the halo shrinks level by level: each block is computed only on the window its successors
need (``required_windows``), so the expensive full-resolution levels run on the slices asked for
plus a few voxels (for one axial slice of the official model: 11 of 128 slices at full resolution,
15 of 64 at the next level), and the cheap latent-resolution blocks on what is left of the volume.

GroupNorm is the one non-local operation: its per-sample, per-group mean and variance are taken
over the whole volume. A slab decode therefore takes the statistics of every GroupNorm from
somewhere (``GroupNormStats``, recorded by ``record_decoder_stats`` during a full decode): from a
full decode of the *same* latent the slab equals the full decode up to float rounding; from another
latent's (e.g. the scan's own reconstruction) it is an approximation, which ``exact_levels`` (the
first resolution levels computed on the whole volume, with their own statistics) makes closer;
without statistics each GroupNorm sees the slab window alone (a rough fallback).

Tensors in, tensors out: ``z`` is an *unscaled* autoencoder latent (B×C×d×h×w), already in the
dtype and memory layout the decoder runs in. ``LDAEPipeline.decode_slab`` is the entry point that
takes the diffusion's scaled latents.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.blocks.upsample import UpSample
from monai.networks.nets.autoencoderkl import AEKLResBlock
from torch import nn

from ..errors import LDAEError
from .autoencoder import polyphase_upsample_conv

__all__ = ["GroupNormStats", "decoder_blocks", "has_attention", "receptive_field", "required_windows",
           "record_decoder_stats", "decode_slab"]


# ---------------------------------------------------------------------------------------------- blocks
def _kind(block: nn.Module) -> str:
    name = type(block).__name__
    if isinstance(block, AEKLResBlock):
        return "res"
    if isinstance(block, UpSample):
        return "up"
    if isinstance(block, nn.GroupNorm):
        return "norm"
    if "Attention" in name:
        return "attn"
    conv = getattr(block, "conv", block)
    if isinstance(conv, nn.Conv3d):
        return "conv"
    raise LDAEError(f"the slab decoder does not know the decoder block {name}")


def decoder_blocks(autoencoder) -> list[tuple[str, nn.Module]]:
    """The decoder as (kind, module): post_quant_conv first, then the decoder's blocks in order.
    kinds: conv (k³, stride 1), res (AEKLResBlock: two 3³ convs), up (nearest ×2 + 3³ conv), norm, attn."""
    return [("conv", autoencoder.post_quant_conv)] + [(_kind(b), b) for b in autoencoder.decoder.blocks]


def has_attention(autoencoder) -> bool:
    """True when the decoder has an attention block (global: no slab decode can be exact)."""
    return any(k == "attn" for k, _ in decoder_blocks(autoencoder))


def _conv_radius(block: nn.Module, axis: int) -> int:
    conv = getattr(block, "conv", block)
    k, s, p, d = conv.kernel_size[axis], conv.stride[axis], conv.padding[axis], conv.dilation[axis]
    if s != 1 or d != 1 or 2 * p != k - 1:
        raise LDAEError("the slab decoder needs 'same' convolutions with stride 1")
    return p


def _res_radius(block: nn.Module, axis: int) -> int:
    return _conv_radius(block.conv1, axis) + _conv_radius(block.conv2, axis)


def _need(kind: str, block: nn.Module, axis: int, lo: int, hi: int) -> tuple[int, int]:
    """Input interval [lo', hi') (unclipped) that block outputs [lo, hi) along ``axis`` depend on."""
    if kind == "conv":
        r = _conv_radius(block, axis)
        return lo - r, hi + r
    if kind == "res":
        r = _res_radius(block, axis)
        return lo - r, hi + r
    if kind == "norm":
        return lo, hi
    if kind == "up":
        r = _conv_radius(block.postconv, axis)
        # high-resolution position p reads upsampled p−r … p+r, i.e. low-resolution (p±r)//2
        return (lo - r) // 2, (hi - 1 + r) // 2 + 1
    raise LDAEError("decoders with attention blocks are global: a slab of them cannot be decoded exactly")


def receptive_field(autoencoder, axis: int = 0) -> int:
    """Half-width, in latent voxels, of the latent region one image voxel depends on (GroupNorm
    statistics aside): counted from the decoder's 3×3×3 convolutions and ×2 upsamplings.
    Authors' decoder (4 levels, 2 residual blocks each): 10; ``small_config`` (3 levels): 9."""
    lo, hi = 0, 1
    for kind, block in reversed(decoder_blocks(autoencoder)):
        lo, hi = _need(kind, block, axis, lo, hi)
    return max(-lo, hi - 1)


def _sizes(autoencoder, n_latent: int) -> list[int]:
    """Extent along the axis of each block's input (len = number of blocks + 1, last = output)."""
    sizes = [n_latent]
    for kind, _ in decoder_blocks(autoencoder):
        sizes.append(sizes[-1] * 2 if kind == "up" else sizes[-1])
    return sizes


def required_windows(autoencoder, axis: int, n_latent: int, start: int, stop: int,
                     exact_levels: int = 0) -> list[tuple[int, int]]:
    """Window [lo, hi) of every block's input along ``axis`` (plus, last, the output window) for image
    slices [start, stop): each window is what its successors need, clipped to the volume.
    The blocks of the first ``exact_levels`` resolution levels run on the whole volume."""
    blocks = decoder_blocks(autoencoder)
    sizes = _sizes(autoencoder, n_latent)
    wins: list[tuple[int, int]] = [(start, stop)]
    lo, hi = start, stop
    for i in range(len(blocks) - 1, -1, -1):
        kind, block = blocks[i]
        lo, hi = _need(kind, block, axis, lo, hi)
        lo, hi = max(lo, 0), min(hi, sizes[i])
        wins.append((lo, hi))
    wins.reverse()
    level = 0
    for i, (kind, _) in enumerate(blocks):
        if level < exact_levels:
            wins[i] = (0, sizes[i])
        if kind == "up":
            level += 1
    return wins


# ---------------------------------------------------------------------------------------------- stats
@dataclass
class GroupNormStats:
    """Per-sample, per-group mean and (biased) variance of the input of every decoder GroupNorm,
    keyed by the GroupNorm's module name in the autoencoder (float32, B×G each)."""

    mean: dict[str, torch.Tensor] = field(default_factory=dict)
    var: dict[str, torch.Tensor] = field(default_factory=dict)

    def select(self, i: int) -> "GroupNormStats":
        return GroupNormStats({k: v[i : i + 1] for k, v in self.mean.items()}, {k: v[i : i + 1] for k, v in self.var.items()})


def _group_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per sample and group, in float64 accumulation, one group at a time."""
    b, c = x.shape[:2]
    xs = x.reshape(b, groups, c // groups, -1)
    mean = torch.empty(b, groups, dtype=torch.float32, device=x.device)
    var = torch.empty_like(mean)
    for g in range(groups):
        v = xs[:, g].reshape(b, -1).float()
        m = v.mean(dim=1, dtype=torch.float64)
        mean[:, g] = m.float()
        var[:, g] = ((v.double() - m[:, None]) ** 2).mean(dim=1).float()
    return mean, var


def _norm_names(autoencoder) -> dict[nn.Module, str]:
    return {m: n for n, m in autoencoder.named_modules() if isinstance(m, nn.GroupNorm) and n.startswith("decoder.")}


@torch.inference_mode()
def record_decoder_stats(autoencoder, z: torch.Tensor) -> tuple[torch.Tensor, GroupNormStats]:
    """Full decode of latents ``z`` (B×C×d×h×w, one at a time), recording the statistics of every
    decoder GroupNorm input → (images B×1×A×B×S float32, stats)."""
    names = _norm_names(autoencoder)
    stats = GroupNormStats()
    current: list[int] = [0]

    def hook(module, args):
        m, v = _group_moments(args[0], module.num_groups)
        name = names[module]
        if current[0] == 0:
            stats.mean[name], stats.var[name] = [m], [v]
        else:
            stats.mean[name].append(m)
            stats.var[name].append(v)

    handles = [m.register_forward_pre_hook(hook) for m in names]
    try:
        images = []
        for i in range(z.shape[0]):
            current[0] = i
            images.append(autoencoder.decode(z[i : i + 1]).float().contiguous())
    finally:
        for h in handles:
            h.remove()
    stats.mean = {k: torch.cat(v) for k, v in stats.mean.items()}
    stats.var = {k: torch.cat(v) for k, v in stats.var.items()}
    return torch.cat(images), stats


# ---------------------------------------------------------------------------------------------- slab
def _group_norm(module: nn.GroupNorm, x: torch.Tensor, name: str, stats: GroupNormStats | None, full: bool) -> torch.Tensor:
    """GroupNorm with the whole volume's statistics: computed here when the window is the whole
    volume (``full``) or no statistics are given, else taken from ``stats``."""
    if full or stats is None:
        return module(x)
    if name not in stats.mean:
        raise LDAEError(f"the GroupNorm statistics lack the decoder layer {name}")
    b, c = x.shape[:2]
    g = module.num_groups
    mean = stats.mean[name].to(x.device).reshape(b, g, 1, 1)
    rstd = torch.rsqrt(stats.var[name].to(x.device) + module.eps).reshape(b, g, 1, 1)
    shape = x.shape
    y = ((x.float().reshape(b, g, c // g, -1) - mean) * rstd).reshape(shape)
    if module.affine:
        y = y * module.weight.float().reshape(1, c, 1, 1, 1) + module.bias.float().reshape(1, c, 1, 1, 1)
    return y.to(x.dtype)


def _conv(block: nn.Module, x: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
    """A MONAI Convolution / Conv3d on x held with its spatial axes permuted by ``perm`` (the weight
    is permuted the same way, so the result is the permuted convolution). Identity passes through."""
    conv = getattr(block, "conv", block)
    if not isinstance(conv, nn.Conv3d):
        return block(x)
    if perm == (0, 1, 2, 3, 4):
        return conv(x)
    sp_perm = [perm[k] - 2 for k in (2, 3, 4)]
    w = conv.weight.permute(perm)
    return F.conv3d(x, w, conv.bias, conv.stride, tuple(conv.padding[k] for k in sp_perm), conv.dilation, conv.groups)


def _upsample(block: nn.Module, x: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:


    if perm == (0, 1, 2, 3, 4):
        return block(x)
    conv = block.postconv.conv
    if "Polyphase" in type(block).__name__:
        return polyphase_upsample_conv(x, conv.weight.permute(perm), conv.bias)
    return _conv(block.postconv, F.interpolate(x, scale_factor=2.0, mode="nearest"), perm)


def _run_res(block, x, names, stats, full, perm=(0, 1, 2, 3, 4)):
    h = F.silu(_group_norm(block.norm1, x, names[block.norm1], stats, full))
    h = _conv(block.conv1, h, perm)
    h = F.silu(_group_norm(block.norm2, h, names[block.norm2], stats, full))
    h = _conv(block.conv2, h, perm)
    return _conv(block.nin_shortcut, x, perm) + h


def _crop(x: torch.Tensor, dim: int, have: tuple[int, int], want: tuple[int, int]) -> torch.Tensor:
    if have == want:
        return x
    if want[0] < have[0] or want[1] > have[1]:
        raise AssertionError(f"window {want} is not inside {have}")  # a bug in required_windows
    return x.narrow(dim, want[0] - have[0], want[1] - want[0])


@torch.inference_mode()
def decode_slab(autoencoder, z: torch.Tensor, axis: int, index_range: tuple[int, int],
                stats: GroupNormStats | None = None, exact_levels: int = 0, channels_last: bool = False) -> torch.Tensor:
    """Decode image slices ``index_range`` = [start, stop) along ``axis`` (0, 1, 2 = A, B, S) of the
    unscaled latents ``z`` (B×C×d×h×w, in the decoder's dtype) → B×1×…×(stop−start)×… (other axes
    whole), float32.

    With ``stats`` from ``record_decoder_stats`` of the same latents the result equals the full
    decode's slices up to float rounding; with another latent's statistics (or none) it is an
    approximation, which ``exact_levels`` (resolution levels computed on the whole volume) makes
    closer. ``channels_last``: run the convolutions in channels-last layout."""
    ae = autoencoder
    if has_attention(ae):
        raise LDAEError("this model's decoder has attention layers, which see the whole volume: "
                        "a slab of it cannot be decoded on its own; decode the whole volume")
    if axis not in (0, 1, 2):
        raise LDAEError(f"axis must be 0, 1 or 2 (model-space A, B, S); got {axis}")
    n_lat = z.shape[2 + axis]
    n_img = n_lat * (2 ** sum(1 for k, _ in decoder_blocks(ae) if k == "up"))
    start, stop = int(index_range[0]), int(index_range[1])
    if not 0 <= start < stop <= n_img:
        raise LDAEError(f"slices [{start}, {stop}) are outside the volume's 0…{n_img - 1} along axis {axis}")
    blocks = decoder_blocks(ae)
    sizes = _sizes(ae, n_lat)
    wins = required_windows(ae, axis, n_lat, start, stop, exact_levels)
    names = _norm_names(ae)
    # The slab runs with the sliced axis moved last (weights permuted alike): PyTorch picks its slow
    # convolution instead of oneDNN for inputs whose N·C·D·H is small, i.e. when D or H is thin.
    perm = {0: (0, 1, 4, 3, 2), 1: (0, 1, 2, 4, 3), 2: (0, 1, 2, 3, 4)}[axis]
    dim = 4
    out = []
    for i in range(z.shape[0]):
        st = stats.select(i) if stats is not None else None
        x = _crop(z[i : i + 1].permute(perm), dim, (0, sizes[0]), wins[0])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        have = wins[0]
        for j, (kind, block) in enumerate(blocks):
            x = _crop(x, dim, have, wins[j])
            have = wins[j]
            full = have == (0, sizes[j])
            if kind == "res":
                x = _run_res(block, x, names, st, full, perm)
            elif kind == "norm":
                x = _group_norm(block, x, names[block], st, full)
            elif kind == "up":  # local; the output window follows the input's
                x = _upsample(block, x, perm)
            else:
                x = _conv(block, x, perm)
            have = (have[0] * 2, have[1] * 2) if kind == "up" else have
        out.append(_crop(x, dim, have, wins[-1]).permute(perm).float().contiguous())
    return torch.cat(out)
