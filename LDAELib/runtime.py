"""How a process runs the networks: device, precision, threads and the memory allocator.

One place for what the ``ldae`` command line, the Slicer worker and ``ldae batch`` share, so the
three run a model the same way and fail with the same messages.

Precision. The DDIM loop (inversion and sampling) amplifies rounding: its first inversion step
multiplies the error of every latent voxel by up to ~100 (SPEC §5.5), so networks inside the loop
(the ShiftUNet) and before it (the AEKL encoder, the semantic encoder) run in ``dtype``, float32
unless asked otherwise. The AEKL **decoder** runs once, after the loop, and nothing amplifies its
error, so it can run in bfloat16 where the hardware has fast bfloat16 (``decode_dtype="auto"``):
on this project's 2-core CPU that makes the decode 3× faster and halves its activation memory
while the edit stays within SSIM 0.999 of the all-float32 result (docs/benchmarks.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

from .errors import LDAEError

__all__ = ["cpu_has_fast_bf16", "resolve_precision", "make_pipeline", "onednn_convolutions", "tune_allocator", "DTYPES"]

DTYPES = ("float32", "bfloat16", "float16")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def _check_device(device: str) -> str:
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LDAEError(f"device {device} was asked for but this torch has no CUDA device; use cpu")
    return device


def resolve_precision(device: str, dtype: str = "float32", decode_dtype: str = "auto") -> tuple[torch.dtype, torch.dtype]:
    """(network dtype, decoder dtype) for a device: checks what the device can do and resolves "auto"
    (bfloat16 decode on GPUs with bfloat16 and on CPUs with native bfloat16, else ``dtype``)."""
    cuda = str(device).startswith("cuda")
    for name, value in (("dtype", dtype), ("decode dtype", decode_dtype)):
        if value not in DTYPES and not (name == "decode dtype" and value == "auto"):
            raise LDAEError(f"unknown {name} {value!r}; choose one of {', '.join(DTYPES)}" + (" or auto" if name != "dtype" else ""))
        if value == "float16" and not cuda:
            raise LDAEError("float16 runs on GPUs only; on the CPU use bfloat16 or float32")
    net = getattr(torch, dtype)
    if decode_dtype == "auto":
        if net != torch.float32:
            dec = net
        elif cuda:
            dec = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        else:
            dec = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    else:
        dec = getattr(torch, decode_dtype)
    return net, dec


def preview_sampling_dtype(device: str, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a preview's DDIM sampling (None: the pipeline's own precision).

    "auto" picks bfloat16 where the device computes it natively (as the decoder's "auto" does):
    about twice as fast for the ShiftUNet. A preview is a quick look that the full-quality result
    replaces, so it may trade fidelity for speed; the results themselves never do."""
    if requested == "float32":
        return None
    if requested == "bfloat16":
        return torch.bfloat16
    if requested != "auto":
        raise LDAEError(f"unknown preview precision {requested!r}; choose auto, float32 or bfloat16")
    cuda = str(device).startswith("cuda")
    fast = torch.cuda.is_bf16_supported() if cuda else cpu_has_fast_bf16()
    return torch.bfloat16 if fast else None


_WEIGHTED = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


def _widen_weight(module, _args) -> None:
    module.weight = module.weight_stored.to(module.weight_compute_dtype)


def _drop_weight(module, _args, _out) -> None:
    module.weight = None


def compact_weights(module: torch.nn.Module, storage: torch.dtype = torch.float16) -> int:
    """Keep the weights of ``module``'s convolution and linear layers in ``storage`` (float16: half
    the memory of float32) and widen each to its compute dtype just before its layer runs, one
    layer at a time; biases and norms stay as they are. The arithmetic is unchanged; only the
    weights are rounded once, to float16's 11-bit mantissa. Returns the bytes saved.

    At the official size this halves the ShiftUNet's 3.3 GiB of weights. An edit stays within SSIM
    0.99999 of float32 (official size, random weights, T = 10; docs/benchmarks.md)."""
    saved = 0
    for m in module.modules():
        w = m._parameters.get("weight") if isinstance(m, _WEIGHTED) else None
        if w is None or not w.is_floating_point() or w.dtype == storage:
            continue
        del m._parameters["weight"]
        m.register_buffer("weight_stored", w.detach().to(storage), persistent=False)
        m.weight_compute_dtype = w.dtype
        m.weight = None
        m.register_forward_pre_hook(_widen_weight)
        m.register_forward_hook(_drop_weight)
        saved += w.numel() * (w.element_size() - m.weight_stored.element_size())
    return saved


def _onednn_conv_forward(self, input, weight, bias):
    """``_conv_forward`` of a Conv2d/Conv3d that always takes oneDNN on the CPU (see ``onednn_convolutions``)."""
    if input.device.type == "cpu" and input.dtype == weight.dtype == torch.float32 and torch._C._get_mkldnn_enabled():
        return torch.ops.aten.mkldnn_convolution(input, weight, bias, self.padding, self.stride, self.dilation, self.groups)
    return type(self)._conv_forward(self, input, weight, bias)


ONEDNN_MAX_CHANNELS = 256


def onednn_convolutions(module: torch.nn.Module, max_channels: int = ONEDNN_MAX_CHANNELS) -> int:
    """Route the float32 CPU convolutions of ``module`` with at most ``max_channels`` input channels
    through oneDNN; returns how many were switched (other dtypes keep PyTorch's own dispatch, which
    already takes oneDNN for bfloat16 where the CPU has it).

    PyTorch sends a float32 convolution with a 3×3×3 kernel and batch 1 to its im2col fallback
    (``slow_conv3d``) whenever batch × channels × depth × height ≤ 20,480: a rule tuned for 2-D
    images that catches most of a small latent UNet at 16×20×16. Measured on a 2-core AVX2 EPYC
    (median of 7 calls, 2 threads), oneDNN is faster for every width up to 256 channels (7.8× for
    32 channels at 16×20×16, 2.3× for 64 at 8×10×8, 1.25× for 256 at 4×5×4), while the fallback
    wins for 768–1024 channels at 4×5×4 and below (oneDNN 1.7–4.8× slower): wider layers keep
    PyTorch's choice. Same arithmetic, another summation order: results agree to float32 rounding
    (tested), not bit for bit, so the plain modules are kept for the reference checks. Convolutions
    with string padding or a padding mode other than zeros are left alone.
    """
    import types

    if not torch.backends.mkldnn.is_available():
        return 0
    n = 0
    for m in module.modules():
        if (type(m) in (torch.nn.Conv3d, torch.nn.Conv2d) and m.in_channels <= max_channels
                and m.padding_mode == "zeros" and not isinstance(m.padding, str)):
            m._conv_forward = types.MethodType(_onednn_conv_forward, m)
            n += 1
    return n


def available_memory_bytes() -> int | None:
    """MemAvailable of this Linux machine (None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _short_of_memory(config, net: torch.dtype, dec: torch.dtype) -> bool:
    """True when an edit's estimated peak (plus ~0.5 GiB of process) would fill more than 80 % of the
    memory available now."""
    available = available_memory_bytes()
    return available is not None and estimate_peak_bytes(config, net, dec).total + 2**29 > 0.8 * available


def make_pipeline(model, device: str = "cpu", dtype: str = "float32", decode_dtype: str = "auto",
                  threads: int | None = None, weight_storage: str = "auto", **kwargs):
    """An ``LDAEPipeline`` for ``model`` after checking the device and the precision (one LDAEError
    with what to do otherwise). ``weight_storage`` "float16" keeps the float32 ShiftUNet's weights
    in float16 (``compact_weights``: −1.6 GiB at the official size, ≈ 7 % slower per step); "auto"
    does so on the CPU when an edit would otherwise fill more than 80 % of the available memory.
    Call ``tune_allocator`` after this, not before: the float32 weights freed here then go back to
    the system instead of fragmenting the heap. Channels-last layout is used where it is faster: on CPUs with
    native bfloat16 for bfloat16 networks (float32 networks run within 5–12 % of each other in
    either). On the CPU the float32 convolutions of up to 256 input channels go through oneDNN
    (``onednn_convolutions``), also where PyTorch would take its slow fallback for small batch-1
    inputs; ``LDAEPipeline`` built directly keeps PyTorch's own choice, which the reference checks
    compare bit for bit."""
    from .pipeline import LDAEPipeline

    if threads:
        torch.set_num_threads(int(threads))
    device = _check_device(device)
    net, dec = resolve_precision(device, dtype, decode_dtype)
    cpu = not device.startswith("cuda")
    kwargs.setdefault("channels_last", cpu and net == torch.bfloat16)
    kwargs.setdefault("decoder_channels_last", cpu and dec == torch.bfloat16)
    if weight_storage not in ("auto", "float32", "float16"):
        raise LDAEError(f"unknown weight storage {weight_storage!r}; choose auto, float32 or float16")
    if weight_storage == "auto":
        weight_storage = "float16" if cpu and net == torch.float32 and _short_of_memory(model.config, net, dec) else "float32"
    pipe = LDAEPipeline(model, device=device, dtype=net, decode_dtype=dec, **kwargs)
    if weight_storage == "float16" and net == torch.float32:
        compact_weights(pipe.model.shift_unet, torch.float16)
    if cpu and onednn_convolutions(pipe.model):
        pipe.conv_backend = "onednn"
    pipe.weight_storage = weight_storage if net == torch.float32 else str(net).replace("torch.", "")
    return pipe


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the system after every call.

    With glibc's defaults each ShiftUNet call at the official size maps and unmaps its large
    activation buffers (hundreds of thousands of page faults, about a second of kernel time per
    float32 step on this project's CPU). Serving large blocks from the heap and not trimming it
    removes that; the price is that the process keeps its peak memory until it exits, which is
    what a model server (the Slicer worker, ``ldae`` on many scans) does anyway. glibc only; set
    LDAE_TUNE_MALLOC=0 to leave the allocator alone. Returns whether anything was changed."""
    if os.environ.get("LDAE_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, …)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = (mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1) and ok
    return ok


# ------------------------------------------------------------------ memory (issue #6)
# Appended: a memory estimate made before a run, and the out-of-memory fallback of the ShiftUNet batch.

DECODER_PEAK_FACTOR = 3.6
"""Live full-size tensors at the decoder's peak, in units of its largest activation (channels ×
voxels of one resolution level): a residual block holds its input, the GroupNorm output and the
SiLU output, plus the convolution's output and oneDNN's reorder of its input. Calibrated on the
official float32 decode (8.47 GiB peak − 3.94 GiB weights = 4.5 GiB ≈ 3.6 × 128 ch × 128·160·128
× 4 B; docs/benchmarks.md) and checked at the small size by Testing/test_preview.py."""


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
    from .model import LDAEModel

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


def _is_cuda_oom(err: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or (isinstance(err, RuntimeError) and "CUDA out of memory" in str(err))


def _is_cpu_oom(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and not _is_cuda_oom(err) and (
        "DefaultCPUAllocator" in str(err) or "not enough memory" in str(err)))


def out_of_memory_error(pipeline, what: str, batch: int = 1) -> LDAEError:
    """The LDAEError for a CPU out-of-memory: how much the operation needs and what to do."""
    est = estimate_peak_bytes(pipeline.model.config, pipeline.dtype, pipeline.decode_dtype, batch)
    g = 2.0**30
    hint = "use --dtype bfloat16 (half the weight memory, but less faithful: docs/benchmarks.md), " if pipeline.dtype == torch.float32 else ""
    return LDAEError(
        f"out of memory during the {what}: it needs about {est.total / g:.1f} GiB "
        f"({est.weights / g:.1f} GiB of weights, {max(est.decoder, est.unet) / g:.1f} GiB of working memory); "
        f"close other programs, {hint}run fewer alphas or frames at once (batch size 1), or use a GPU (--device cuda)")


def _cpu_shift_unet(pipeline):
    """A CPU copy of the pipeline's ShiftUNet (float32, or bfloat16 if the networks are bfloat16),
    built from CPU copies of its tensors one by one (no second copy on the GPU), kept for reuse."""
    cached = getattr(pipeline, "_cpu_shift_unet", None)
    if cached is not None:
        return cached
    from .nets.unet import ShiftUNet

    dt = torch.bfloat16 if pipeline.dtype == torch.bfloat16 else torch.float32
    unet = ShiftUNet(pipeline.model.config.unet).eval()
    unet.load_state_dict({k: v.detach().to("cpu", dt) for k, v in pipeline.model.shift_unet.state_dict().items()})
    unet.to(dt)
    for p in unet.parameters():
        p.requires_grad_(False)
    pipeline._cpu_shift_unet = unet
    return unet


def sample_with_fallback(pipeline, sample_chunk, z_t: torch.Tensor, y: torch.Tensor, progress=None) -> torch.Tensor:
    """Run ``sample_chunk(unet_fn, z_chunk, y_chunk)`` over the batch in chunks of the pipeline's
    ``batch_size``. A CUDA out-of-memory in a chunk halves the batch size (kept for the rest of the
    pipeline's life) and retries; at batch size 1 the chunk runs on the CPU. Each fallback warns
    (``MemoryFallbackWarning``) in one plain sentence. On the CPU, running out of memory raises an
    LDAEError with the estimated need. ``progress`` (a pipeline ``_Progress``) is rewound for retries."""
    import warnings

    outs, i, n = [], 0, z_t.shape[0]
    on_cpu = False
    while i < n:
        bs = pipeline.batch_size
        done = progress.done if progress is not None else 0
        try:
            if on_cpu:
                unet = _cpu_shift_unet(pipeline)
                dt = next(unet.parameters()).dtype

                def cpu_fn(x, t, yy):
                    eps, g = unet(x.to("cpu", dt), t.to("cpu"), yy.to("cpu", dt))
                    return eps.float(), g.float()

                out = sample_chunk(cpu_fn, z_t[i : i + bs].to("cpu"), y[i : i + bs].to("cpu")).to(z_t.device)
            else:
                out = sample_chunk(pipeline._unet, z_t[i : i + bs], y[i : i + bs])
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are handled, the rest re-raised
            if _is_cuda_oom(err) and not on_cpu:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if progress is not None:
                    progress.done = done
                if bs > 1:
                    pipeline.batch_size = max(1, bs // 2)
                    warnings.warn(f"the GPU ran out of memory with {bs} latents at once; retrying with "
                                  f"{pipeline.batch_size} at a time", MemoryFallbackWarning, stacklevel=3)
                else:
                    on_cpu = True
                    warnings.warn("the GPU ran out of memory even with one latent at a time; this part of the "
                                  "operation continues on the CPU (slower)", MemoryFallbackWarning, stacklevel=3)
                continue
            if _is_cpu_oom(err):
                raise out_of_memory_error(pipeline, "DDIM sampling", bs) from err
            raise
        outs.append(out)
        i += bs
    return torch.cat(outs)


def cpu_vector_level(flags: str | None = None) -> str:
    """The widest vector instructions this CPU offers, as a short label: "AVX-512 BF16", "AVX-512",
    "AVX2", "AVX" or "" (none found, or no /proc/cpuinfo). Two CPUs of one model name can differ
    here (the same "AMD EPYC" is sold with AVX2 only or with AVX-512 BF16), and with it their speed."""
    if flags is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
        except OSError:
            flags = ""
    have = set(flags.split(":", 1)[-1].split())
    if "avx512f" in have:
        return "AVX-512 BF16" if "avx512_bf16" in have or "amx_bf16" in have else "AVX-512"
    return next((label for flag, label in (("avx2", "AVX2"), ("avx", "AVX")) if flag in have), "")


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else platform.processor(), else "CPU"), with
    its vector level in brackets where known, e.g. "AMD EPYC (AVX2)"."""
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or "CPU"
    level = cpu_vector_level()
    return f"{name} ({level})" if level else name
