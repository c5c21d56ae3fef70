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

__all__ = ["cpu_has_fast_bf16", "resolve_precision", "make_pipeline", "tune_allocator", "DTYPES"]

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


def make_pipeline(model, device: str = "cpu", dtype: str = "float32", decode_dtype: str = "auto",
                  threads: int | None = None, **kwargs):
    """An ``LDAEPipeline`` for ``model`` after checking the device and the precision (one LDAEError
    with what to do otherwise). Channels-last layout is used where it is faster: on CPUs with
    native bfloat16 for bfloat16 networks (float32 networks run at the same speed in either, and
    keeping them in the standard layout keeps the float32 DDIM loop bit-identical to the reference)."""
    from .pipeline import LDAEPipeline

    if threads:
        torch.set_num_threads(int(threads))
    device = _check_device(device)
    net, dec = resolve_precision(device, dtype, decode_dtype)
    cpu = not device.startswith("cuda")
    kwargs.setdefault("channels_last", cpu and net == torch.bfloat16)
    kwargs.setdefault("decoder_channels_last", cpu and dec == torch.bfloat16)
    return LDAEPipeline(model, device=device, dtype=net, decode_dtype=dec, **kwargs)


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
