"""Memory: the peak an operation will need, estimated before it runs, and what to say when it is short."""

from __future__ import annotations

import torch

from ..errors import LDAEError


DECODER_PEAK_FACTOR = 3.6
"""Live full-size tensors at the decoder's peak, in units of its largest activation (channels ×
voxels of one resolution level): a residual block holds its input, the GroupNorm output and the
SiLU output, plus the convolution's output and oneDNN's reorder of its input. Calibrated on the
official float32 decode (8.47 GiB peak − 3.94 GiB weights = 4.5 GiB ≈ 3.6 × 128 ch × 128·160·128
× 4 B; docs/benchmarks.md) and checked at the small size by the test suite."""


def _bytes_per(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class MemoryEstimate(tuple):
    """(total, weights, decoder activations, ShiftUNet activations) in bytes; ``total`` is the peak of
    the operation: weights + the larger of the decode and the ShiftUNet batch (they never overlap)."""

    __slots__ = ()

    def __new__(cls, weights: int, decoder: int, unet: int):
        return super().__new__(cls, (weights + max(decoder, unet), weights, decoder, unet))

    total = property(lambda self: self[0])
    weights = property(lambda self: self[1])
    decoder = property(lambda self: self[2])
    unet = property(lambda self: self[3])

    def __repr__(self) -> str:
        g = 2.0**30
        return (f"MemoryEstimate(total={self.total / g:.2f} GiB: weights {self.weights / g:.2f}, "
                f"decoder {self.decoder / g:.2f}, ShiftUNet batch {self.unet / g:.2f})")


def _parameter_counts(model_config) -> tuple[int, int]:
    """(parameters outside the AEKL decoder, parameters of the decoder incl. post_quant_conv), counted
    on the meta device: nothing is allocated."""
    from ..model import LDAEModel

    with torch.device("meta"):
        model = LDAEModel(model_config, polyphase_decoder=False)
    ae = model.autoencoder
    dec = sum(p.numel() for m in (ae.decoder, ae.post_quant_conv) for p in m.parameters())
    return model.num_parameters() - dec, dec


def decoder_activation_bytes(model_config, decode_dtype=torch.float32) -> int:
    """Peak activation memory of one AEKL decode (batch 1; ``LDAEPipeline.decode`` decodes one latent
    at a time): DECODER_PEAK_FACTOR × the largest level's channels × voxels, plus the float32 image."""
    a = model_config.autoencoder
    n = 1
    for s in model_config.space.shape:
        n *= int(s)
    chans = list(reversed(a.num_channels))  # decoder levels, coarse → fine
    levels = len(chans)
    largest = 0
    for i, c in enumerate(chans):
        vox = n // 8 ** (levels - 1 - i)
        c_in = chans[i - 1] if i else c  # the upsampling into level i still carries level i−1's channels
        largest = max(largest, max(c, c_in) * vox)
    return int(DECODER_PEAK_FACTOR * largest * _bytes_per(decode_dtype)) + 2 * n * 4 * a.out_channels


def unet_activation_bytes(model_config, dtype=torch.float32, batch: int = 1) -> int:
    """Activation memory of one ShiftUNet call on ``batch`` latents: the skip tensors of the encoder
    half, a working set of the widest level for both branches, and the attention matrices."""
    u = model_config.unet
    c_lat, d, h, w = model_config.latent_shape
    e = _bytes_per(dtype)
    skips, work, attn = u.base_channel * d * h * w, 0, 0
    for level, mult in enumerate(u.channel_multiplier):
        vox = d * (h >> level) * (w >> level)
        ch = mult * u.base_channel
        skips += (u.num_residual_blocks_of_a_block + 1) * ch * vox
        work = max(work, 2 * 4 * 2 * ch * vox)  # two branches × ~4 live tensors of the concat width
        if 2**level in u.attention_resolutions or level == len(u.channel_multiplier) - 1:
            attn = max(attn, 2 * max(u.num_heads, 1) * vox * vox)
    return int(batch * ((skips + work + attn) * e))


def estimate_peak_bytes(model_config, dtype=torch.float32, decode_dtype=None, batch: int = 1) -> MemoryEstimate:
    """Peak memory of an edit, interpolation or reconstruction before it runs: the weights (the
    decoder in ``decode_dtype``, the rest in ``dtype``) plus the larger of one decode's and one
    ShiftUNet batch's activations. Not counted: the Python/torch process itself (≈ 0.3–0.5 GB RSS)
    and the encoder's activations of a cold edit (smaller than the decoder's). Dtypes may be names.

    Accuracy: the decoder term was calibrated on the official float32 decode (total + 0.45 GiB of
    process = 8.44 GiB against 8.47 GiB measured); on the small grid with decoder widths 64–96 the
    measured growth of ru_maxrss during a decode is 1.02–1.16 × the estimate in a quiet process,
    up to 1.8 × in some runs (the allocator keeps more than the tensors need): read the figure as
    a lower bound with ~2× headroom (tested: 0.8–2.0 ×, Testing/test_preview.py)."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    decode_dtype = dtype if decode_dtype is None else (getattr(torch, decode_dtype) if isinstance(decode_dtype, str) else decode_dtype)
    rest, dec = _parameter_counts(model_config)
    weights = rest * _bytes_per(dtype) + dec * _bytes_per(decode_dtype)
    return MemoryEstimate(weights, decoder_activation_bytes(model_config, decode_dtype),
                          unet_activation_bytes(model_config, dtype, max(1, int(batch))))


class MemoryFallbackWarning(UserWarning):
    """The operation ran out of GPU memory and was retried with a smaller batch or on the CPU."""


def is_cuda_oom(err: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or (isinstance(err, RuntimeError) and "CUDA out of memory" in str(err))


def is_cpu_oom(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and not is_cuda_oom(err) and (
        "DefaultCPUAllocator" in str(err) or "not enough memory" in str(err)))


def out_of_memory_error(model_config, dtype: torch.dtype, decode_dtype: torch.dtype, what: str, batch: int = 1) -> LDAEError:
    """The LDAEError for a CPU out-of-memory: how much the operation needs and what to do."""
    est = estimate_peak_bytes(model_config, dtype, decode_dtype, batch)
    g = 2.0**30
    hint = "use --dtype bfloat16 (half the weight memory, but less faithful: docs/benchmarks.md), " if dtype == torch.float32 else ""
    return LDAEError(
        f"out of memory during the {what}: it needs about {est.total / g:.1f} GiB "
        f"({est.weights / g:.1f} GiB of weights, {max(est.decoder, est.unet) / g:.1f} GiB of working memory); "
        f"close other programs, {hint}run fewer alphas or frames at once (batch size 1), or use a GPU (--device cuda)")

