"""Preview of the visible slices: decode only the latent slab under the slices on screen (issue #6).

The AEKL decoder without attention is a stack of 3×3×3 convolutions, nearest ×2 upsamplings,
pointwise SiLU and GroupNorm. Everything but GroupNorm is local, so the image slices [a, b) along
one axis depend only on the latent slab under them plus the decoder's receptive field as a halo
(``receptive_field``: 10 latent voxels for the authors' decoder, 9 for ``small_config``). Here the
halo shrinks level by level: each block is computed only on the window its successors need
(``required_windows``), so the expensive full-resolution levels run on the visible slices plus a
few voxels (for one axial slice of the official model: 11 of 128 slices at full resolution, 15 of
64 at the next level), and the cheap latent-resolution blocks on what is left of the volume.

GroupNorm is the one non-local operation: its per-sample, per-group mean and variance are taken
over the whole volume. A slab decode therefore takes the statistics of every GroupNorm from
somewhere (``GroupNormStats``):

* from a full decode of the *same* latent: the slab then equals the full decode inside the slab up
  to float rounding (exact; used for tests and when the full decode exists anyway);
* from a full decode of the *source's* latent (its reconstruction), recorded once per scan: the
  preview of an edit is approximate, because the edit shifts the statistics a little;
* ``exact_levels=k`` (the default is 1 for previews): the first k resolution levels run on the
  whole volume, so their GroupNorms see the edited latent's exact statistics (cheap: the latent
  level is ~1 % of the decode's work); only the finer levels use the source's statistics;
* none (``stats=None``): GroupNorm over the slab window alone — the rough fallback.

``preview_edit`` puts it together for the Slicer slider: DDIM sampling in the latent (the cached
inversion of the scan, the moved y_sem) and a slab decode of the slices asked for. Decoders with
attention (``with_decoder_nonlocal_attn`` or an attention level) are global: they are refused
(``full_decode_fallback=False``) or decoded fully and cut (the default).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LDAEError

__all__ = [
    "GroupNormStats", "SlabPreview", "decoder_blocks", "receptive_field", "required_windows",
    "record_stats", "decode_slab", "preview_edit", "preview_slabs", "source_stats", "has_attention", "slice_ssim",
    "PLANE_NORMALS", "visible_slab",
]


# ---------------------------------------------------------------------------------------------- blocks
def _kind(block: nn.Module) -> str:
    from monai.networks.blocks.upsample import UpSample
    from monai.networks.nets.autoencoderkl import AEKLResBlock

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
def record_stats(pipeline, z0: torch.Tensor) -> tuple[torch.Tensor, GroupNormStats]:
    """Full decode of scaled latents z0 (B×C×d×h×w) with the pipeline's decoder, recording the
    statistics of every GroupNorm input → (images B×1×A×B×S, stats)."""
    ae = pipeline.model.autoencoder
    names = _norm_names(ae)
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
        for i in range(z0.shape[0]):  # pipeline.decode decodes one latent at a time too
            current[0] = i
            images.append(pipeline.decode(z0[i : i + 1]))
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
    from .nets.autoencoder import polyphase_upsample_conv

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
def decode_slab(pipeline, z0: torch.Tensor, axis: int, index_range: tuple[int, int],
                stats: GroupNormStats | None = None, exact_levels: int = 0) -> torch.Tensor:
    """Decode model-space slices ``index_range`` = [start, stop) along ``axis`` (0, 1, 2 = A, B, S)
    of the scaled latents z0 (B×C×d×h×w) → B×1×…×(stop−start)×… (other axes whole).

    With ``stats`` from ``record_stats`` of the same z0 the result equals the full decode's slices
    up to float rounding; with another latent's statistics (or none) it is an approximation, which
    ``exact_levels`` (resolution levels computed on the whole volume) makes closer.
    Runs in the pipeline's decode dtype and layout."""
    ae = pipeline.model.autoencoder
    if has_attention(ae):
        raise LDAEError("this model's decoder has attention layers, which see the whole volume: "
                        "a slab of it cannot be decoded on its own; decode the whole volume")
    if axis not in (0, 1, 2):
        raise LDAEError(f"axis must be 0, 1 or 2 (model-space A, B, S); got {axis}")
    f = pipeline.model.config.autoencoder.downsampling
    n_img = z0.shape[2 + axis] * f
    start, stop = int(index_range[0]), int(index_range[1])
    if not 0 <= start < stop <= n_img:
        raise LDAEError(f"slices [{start}, {stop}) are outside the volume's 0…{n_img - 1} along axis {axis}")
    blocks = decoder_blocks(ae)
    sizes = _sizes(ae, z0.shape[2 + axis])
    wins = required_windows(ae, axis, z0.shape[2 + axis], start, stop, exact_levels)
    names = _norm_names(ae)
    # The slab runs with the sliced axis moved last (weights permuted alike): PyTorch picks its slow
    # convolution instead of oneDNN for inputs whose N·C·D·H is small, i.e. when D or H is thin.
    perm = {0: (0, 1, 4, 3, 2), 1: (0, 1, 2, 4, 3), 2: (0, 1, 2, 3, 4)}[axis]
    dim = 4
    out = []
    for i in range(z0.shape[0]):
        st = stats.select(i) if stats is not None else None
        z = pipeline.model.unscale_latent(z0[i : i + 1]).permute(perm)
        x = _crop(z, dim, (0, sizes[0]), wins[0])
        x = pipeline._net_in(x, pipeline.decode_dtype, pipeline.decoder_channels_last)
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


# ---------------------------------------------------------------------------------------------- preview
@dataclass
class SlabPreview:
    """Slices [start, stop) along ``axis`` of an edit, in model space.

    image: B×1×… with extent stop − start along ``axis`` (one row per alpha); axis: 0, 1, 2 (A, B, S);
    start, stop: model-space indices along ``axis``; exact: decoded without approximation (attention
    fallback, or a full decode); stats: where the GroupNorm statistics came from; z0: the sampled latents.
    """

    image: torch.Tensor
    axis: int
    start: int
    stop: int
    exact: bool
    stats: str
    z0: torch.Tensor

    def slice(self, index: int, row: int = 0) -> torch.Tensor:
        """The 2-D image of model-space slice ``index`` (one of start … stop−1)."""
        if not self.start <= index < self.stop:
            raise IndexError(f"slice {index} is not in this preview ({self.start}…{self.stop - 1})")
        return self.image[row, 0].select(self.axis, index - self.start)


_STATS_CACHE_ATTR = "_slice_preview_stats"


def source_stats(pipeline, enc, steps: int | None = None, cache_size: int = 4) -> GroupNormStats:
    """GroupNorm statistics of a full decode of the scan: of its latent z0 (the autoencoder
    reconstruction; one decode) or, with ``steps``, of its DDIM reconstruction at that step count
    (``steps`` ShiftUNet calls more, closer to an edit's sampling path). Computed once per scan,
    kind and decode dtype and kept on the pipeline (LRU of ``cache_size``)."""
    cache = getattr(pipeline, _STATS_CACHE_ATTR, None)
    if cache is None:
        cache = OrderedDict()
        setattr(pipeline, _STATS_CACHE_ATTR, cache)
    key = (enc.key, steps, str(pipeline.decode_dtype))
    if key not in cache:
        if steps is None:
            z = enc.z0
        else:
            from .pipeline import _Progress

            pipeline._ensure(enc, steps, _Progress(steps, None, None))
            z = pipeline.sample_latents(enc.z_T[steps], enc.y_sem, steps, _Progress(steps, None, None))
        cache[key] = record_stats(pipeline, z)[1]
        while len(cache) > cache_size:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def _slices(slices) -> tuple[int, int]:
    if isinstance(slices, int):
        return slices, slices + 1
    if isinstance(slices, range):
        if slices.step != 1:
            raise LDAEError("previewed slices must be consecutive")
        return slices.start, slices.stop
    s = sorted(int(i) for i in slices)
    if not s:
        raise LDAEError("no slices to preview")
    return s[0], s[-1] + 1


@torch.inference_mode()
def preview_edit(pipeline, enc_or_x, direction, alpha: float | Sequence[float], steps: int, axis: int,
                 slices: int | range | Sequence[int] | tuple[int, int], *, stats: str = "source",
                 exact_levels: int = 1, full_decode_fallback: bool = True, latent_seed: int | None = None,
                 autocast: torch.dtype | None = None, progress=None, cancel=None) -> SlabPreview:
    """Preview of an edit on the slices on screen: DDIM sampling in the latent (the scan's cached
    inversion at ``steps``), then a slab decode of model-space ``slices`` along ``axis``.

    slices: one index, a ``range``, or indices (the preview covers min … max).
    stats: "source" (GroupNorm statistics of the decode of the scan's latent, its autoencoder
        reconstruction, recorded once per scan; the levels below ``exact_levels`` use the edit's
        own), "reconstruction" (the same from the scan's DDIM reconstruction at ``steps``: ``steps``
        more ShiftUNet calls once per scan), "none" (slab statistics; rough), or "exact" (a full
        decode of the edit: as slow as a full edit, for checking).
    autocast: run the sampling's ShiftUNet calls under autocast to this dtype (e.g. bfloat16 on a
        CPU that computes it natively: about twice as fast, and less faithful; see
        ``preview_slabs``). The inversion stays in the pipeline's dtype.
    A decoder with attention is decoded fully and cut (``full_decode_fallback``) or refused.
    """
    start, stop = _slices(slices)
    return preview_slabs(pipeline, enc_or_x, direction, alpha, steps, [(axis, start, stop)], stats=stats,
                         exact_levels=exact_levels, full_decode_fallback=full_decode_fallback, latent_seed=latent_seed,
                         autocast=autocast, progress=progress, cancel=cancel)[0]


@torch.inference_mode()
def preview_slabs(pipeline, enc_or_x, direction, alpha: float | Sequence[float], steps: int,
                  slabs: Sequence[tuple[int, int, int]], *, stats: str = "source", exact_levels: int = 1,
                  full_decode_fallback: bool = True, latent_seed: int | None = None, autocast: torch.dtype | None = None,
                  progress=None, cancel=None) -> list[SlabPreview]:
    """``preview_edit`` for several slabs (axis, start, stop) at once, e.g. the axial, coronal and
    sagittal slices on screen: one DDIM sampling, one slab decode per slab."""
    from .pipeline import _Progress

    if stats not in ("source", "reconstruction", "none", "exact"):
        raise LDAEError(f"stats must be 'source', 'reconstruction', 'none' or 'exact'; got {stats!r}")
    if not slabs:
        raise LDAEError("no slices to preview")
    alphas = [float(a) for a in (alpha if isinstance(alpha, (list, tuple)) else [alpha])]
    n = len(alphas)
    # checked before the encoding, which may be the expensive part
    f = pipeline.model.config.autoencoder.downsampling
    shape = [s * f for s in enc_or_x.z0.shape[2:]] if hasattr(enc_or_x, "z0") else list(pipeline._as_input(enc_or_x).shape[2:])
    for axis, start, stop in slabs:
        if axis not in (0, 1, 2):
            raise LDAEError(f"axis must be 0, 1 or 2 (model-space A, B, S); got {axis}")
        if not 0 <= start < stop <= shape[axis]:
            raise LDAEError(f"slices {start}…{stop - 1} are outside the volume's 0…{shape[axis] - 1} along axis {axis}")
    p = _Progress(pipeline._cost(enc_or_x, steps) + pipeline._n_chunks(n) * steps + n * len(slabs), progress, cancel)
    enc = pipeline._ensure(enc_or_x, steps, p, latent_seed)
    if autocast is not None:
        with torch.autocast(pipeline.device.type, dtype=autocast):
            z0, _ = pipeline._edited_latents(enc, direction, alphas, steps, p)
        z0 = z0.float()
    else:
        z0, _ = pipeline._edited_latents(enc, direction, alphas, steps, p)
    attn = has_attention(pipeline.model.autoencoder)
    if attn and not full_decode_fallback:
        raise LDAEError("this model's decoder has attention layers: a preview of a few slices would need "
                        "the whole volume decoded; use the full edit")
    if attn or stats == "exact":
        full = pipeline.decode(z0, p)
        return [SlabPreview(full.narrow(2 + a, s, e - s).contiguous(), a, s, e, True, "full decode", z0) for a, s, e in slabs]
    st = None if stats == "none" else source_stats(pipeline, enc, steps if stats == "reconstruction" else None)
    if st is not None:
        st = GroupNormStats({k: v.expand(n, -1) for k, v in st.mean.items()}, {k: v.expand(n, -1) for k, v in st.var.items()})
    out = []
    for axis, start, stop in slabs:
        p.check()
        image = decode_slab(pipeline, z0, axis, (start, stop), st, exact_levels=exact_levels)
        p.advance("decode", n)
        out.append(SlabPreview(image, axis, start, stop, False, stats, z0))
    return out


# ---------------------------------------------------------------------------------------------- on screen
PLANE_NORMALS = {"sagittal": 0, "coronal": 1, "axial": 2}
"""The RAS axis each slice view's plane is normal to (Slicer's Yellow, Green and Red views)."""


def visible_slab(plane: str, point_ras, source_shape, source_affine, ras_to_model, model_shape,
                 margin: int = 1, samples: int = 33) -> tuple[int, int, int] | None:
    """The model-space slab (axis, start, stop) under one slice view.

    A view of ``plane`` ("axial", "coronal", "sagittal") shows the plane through ``point_ras`` (its
    slice offset) across the source volume. Points of that plane inside the source volume are
    mapped to model-space voxel coordinates by ``ras_to_model`` (N×3 RAS mm → N×3 continuous
    indices); the slab is the model axis along which they spread least, over their extent plus
    ``margin`` voxels (for the trilinear resampling back). None when the plane misses the source
    or the model's field of view."""
    import numpy as np

    if plane not in PLANE_NORMALS:
        raise LDAEError(f"plane must be one of {', '.join(PLANE_NORMALS)}; got {plane!r}")
    k = PLANE_NORMALS[plane]
    aff = np.asarray(source_affine, dtype=np.float64)
    shape = np.asarray(source_shape[:3], dtype=np.float64)
    corners = np.array([[i, j, l] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for l in (-0.5, shape[2] - 0.5)])
    ras_corners = corners @ aff[:3, :3].T + aff[:3, 3]
    lo, hi = ras_corners.min(0), ras_corners.max(0)
    u, v = [a for a in range(3) if a != k]
    gu, gv = np.meshgrid(np.linspace(lo[u], hi[u], samples), np.linspace(lo[v], hi[v], samples), indexing="ij")
    pts = np.zeros((gu.size, 3))
    pts[:, u], pts[:, v], pts[:, k] = gu.ravel(), gv.ravel(), float(np.asarray(point_ras, dtype=np.float64)[k])
    ijk = np.linalg.solve(aff, np.c_[pts, np.ones(len(pts))].T).T[:, :3]
    pts = pts[np.all((ijk >= -0.5) & (ijk <= shape - 0.5), axis=1)]
    if not len(pts):
        return None
    m = np.asarray(ras_to_model(pts), dtype=np.float64)
    ms = np.asarray(model_shape[:3], dtype=np.float64)
    m = m[np.all((m >= -0.5) & (m <= ms - 0.5), axis=1)]
    if not len(m):
        return None
    axis = int(np.argmin(m.max(0) - m.min(0)))
    start = max(0, int(np.floor(m[:, axis].min())) - margin)
    stop = min(int(ms[axis]), int(np.floor(m[:, axis].max())) + 1 + margin + 1)
    return axis, start, stop


# ---------------------------------------------------------------------------------------------- fidelity
def slice_ssim(a, b, data_range: float) -> float:
    """SSIM of 2-D image ``a`` against the reference ``b`` with the conventions of
    ``LDAELib.metrics.ssim`` (Gaussian σ 1.5, 11-voxel window, 5-pixel border left out)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from .metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_TRUNCATE

    x = np.asarray(a.detach().cpu().double() if hasattr(a, "detach") else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu().double() if hasattr(b, "detach") else b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"slice_ssim takes two 2-D images of one shape, got {x.shape} and {y.shape}")

    def blur(v):
        return gaussian_filter(v, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx, vy, vxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return float(s[pad:-pad, pad:-pad].mean())
