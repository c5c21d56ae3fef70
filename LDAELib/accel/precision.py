"""Precision: which dtypes a device computes well, and the dtypes a run uses.

The DDIM loop (inversion and sampling) amplifies rounding: its first inversion step multiplies the
error of every latent voxel by up to ~100, so the networks inside the loop (the ShiftUNet) and before
it (the autoencoder's encoder, the semantic encoder) run in float32 unless asked otherwise. The
autoencoder's **decoder** runs once, after the loop, and nothing amplifies its error: in bfloat16
(where the hardware computes it natively) the decode is about 3× faster on a CPU with AVX-512 BF16
and an edit stays within SSIM 0.999 of float32, but no longer reproduces the authors' numbers bit
for bit. The default is therefore float32 everywhere; ``decode_dtype="auto"`` is the fast choice.
"""

from __future__ import annotations

import torch

from ..errors import LDAEError


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


def check_device(device: str) -> str:
    """The device name, after checking that this torch can use it (one LDAEError otherwise)."""
    device = str(device)
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        index = device[5:]
        if device != "cuda" and not (device[4] == ":" and index.isdigit()):
            raise LDAEError(f"unknown device {device!r}; use cpu, cuda or cuda:N (N a GPU number)")
        if not torch.cuda.is_available():
            raise LDAEError(f"device {device} was asked for but this torch has no CUDA device; use cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise LDAEError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 … cuda:{torch.cuda.device_count() - 1}")
        return device
    raise LDAEError(f"unknown device {device!r}; use cpu, cuda or cuda:N")


def resolve_precision(device: str, dtype: str = "float32", decode_dtype: str = "float32") -> tuple[torch.dtype, torch.dtype]:
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

