"""Previews of an edit on the slices on screen: DDIM sampling in the latent, then a slab decode.

``preview_slabs`` is what the Slicer slider runs while it is dragged: the scan's cached inversion,
the moved y_sem, one sampling, and a decode of only the model slabs under the views
(``nets.slab``), with the GroupNorm statistics of the decode of the scan's own reconstruction.
Decoders with attention are global: they are decoded fully and cut (the default) or refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import LDAEError
from ..nets.slab import GroupNormStats, has_attention
from .progress import Progress

STATS_SOURCES = ("source", "reconstruction", "none", "exact")


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
                 slices: int | range | Sequence[int] | tuple[int, int], **kwargs) -> SlabPreview:
    """Preview of an edit on consecutive model-space ``slices`` along ``axis`` (one index, a
    ``range`` or indices: the preview covers min … max); the options are ``preview_slabs``'."""
    start, stop = _slices(slices)
    return preview_slabs(pipeline, enc_or_x, direction, alpha, steps, [(axis, start, stop)], **kwargs)[0]


@torch.inference_mode()
def preview_slabs(pipeline, enc_or_x, direction, alpha: float | Sequence[float], steps: int,
                  slabs: Sequence[tuple[int, int, int]], *, stats: str = "source", exact_levels: int = 1,
                  full_decode_fallback: bool = True, latent_seed: int | None = None, autocast: torch.dtype | None = None,
                  progress=None, cancel=None) -> list[SlabPreview]:
    """An edit on several slabs (axis, start, stop) at once, e.g. the axial, coronal and sagittal
    slices on screen: one DDIM sampling (the scan's cached inversion at ``steps``), one slab decode
    per slab.

    stats: "source" (GroupNorm statistics of the decode of the scan's latent, its autoencoder
        reconstruction, recorded once per scan; the levels below ``exact_levels`` use the edit's
        own), "reconstruction" (the same from the scan's DDIM reconstruction at ``steps``: ``steps``
        more ShiftUNet calls once per scan), "none" (slab statistics; rough), or "exact" (a full
        decode of the edit: as slow as a full edit, for checking).
    autocast: run the sampling's ShiftUNet calls under autocast to this dtype (e.g. bfloat16 on a
        CPU that computes it natively: about twice as fast, and less faithful). The inversion stays
        in the pipeline's dtype.
    """
    if stats not in STATS_SOURCES:
        raise LDAEError(f"stats must be one of {', '.join(STATS_SOURCES)}; got {stats!r}")
    if not slabs:
        raise LDAEError("no slices to preview")
    alphas = [float(a) for a in (alpha if isinstance(alpha, (list, tuple)) else [alpha])]
    n = len(alphas)
    # checked before the encoding, which may be the expensive part
    f = pipeline.model.config.autoencoder.downsampling
    shape = [s * f for s in enc_or_x.z0.shape[2:]] if hasattr(enc_or_x, "z0") else list(pipeline.as_input(enc_or_x).shape[2:])
    for axis, start, stop in slabs:
        if axis not in (0, 1, 2):
            raise LDAEError(f"axis must be 0, 1 or 2 (model-space A, B, S); got {axis}")
        if not 0 <= start < stop <= shape[axis]:
            raise LDAEError(f"slices {start}…{stop - 1} are outside the volume's 0…{shape[axis] - 1} along axis {axis}")
    p = Progress(pipeline.encode_cost(enc_or_x, steps) + pipeline.sample_cost(n, steps) - n + n * len(slabs), progress, cancel)
    enc = pipeline.ensure(enc_or_x, steps, p, latent_seed)
    if autocast is not None:
        with torch.autocast(pipeline.device.type, dtype=autocast):
            z0, _ = pipeline.edited_latents(enc, direction, alphas, steps, p)
        z0 = z0.float()
    else:
        z0, _ = pipeline.edited_latents(enc, direction, alphas, steps, p)
    attn = has_attention(pipeline.model.autoencoder)
    if attn and not full_decode_fallback:
        raise LDAEError("this model's decoder has attention layers: a preview of a few slices would need "
                        "the whole volume decoded; use the full edit")
    if attn or stats == "exact":
        full = pipeline.decode(z0, p)
        return [SlabPreview(full.narrow(2 + a, s, e - s).contiguous(), a, s, e, True, "full decode", z0) for a, s, e in slabs]
    st = None if stats == "none" else pipeline.source_stats(enc, steps if stats == "reconstruction" else None)
    if st is not None:
        st = GroupNormStats({k: v.expand(n, -1) for k, v in st.mean.items()}, {k: v.expand(n, -1) for k, v in st.var.items()})
    out = []
    for axis, start, stop in slabs:
        p.check()
        image = pipeline.decode_slab(z0, axis, (start, stop), st, exact_levels=exact_levels)
        p.advance("decode", n)
        out.append(SlabPreview(image, axis, start, stop, False, stats, z0))
    return out
