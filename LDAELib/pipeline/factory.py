"""``make_pipeline``: an ``LDAEPipeline`` set up for a device the way the front ends run it."""

from __future__ import annotations

import torch

from ..accel.host import available_memory_bytes
from ..accel.memory import estimate_peak_bytes
from ..accel.precision import check_device, resolve_precision
from ..errors import LDAEError
from .core import LDAEPipeline


def _short_of_memory(config, net: torch.dtype, dec: torch.dtype) -> bool:
    """True when an edit's estimated peak (plus ~0.5 GiB of process) would fill more than 80 % of the
    memory available now."""
    available = available_memory_bytes()
    return available is not None and estimate_peak_bytes(config, net, dec).total + 2**29 > 0.8 * available


def make_pipeline(model, device: str = "cpu", dtype: str = "float32", decode_dtype: str = "float32",
                  threads: int | None = None, weight_storage: str = "auto", **kwargs) -> LDAEPipeline:
    """An ``LDAEPipeline`` for ``model`` after checking the device and the precision (one LDAEError
    with what to do otherwise), as ``ldae``, ``ldae batch`` and the Slicer worker run it.

    * ``decode_dtype``: "float32" (default: the authors' numbers), "bfloat16", or "auto" (bfloat16
      where the device computes it natively: about 3× faster decodes, within SSIM 0.999).
    * ``weight_storage``: "float16" keeps the float32 ShiftUNet's weights in float16 (−1.6 GiB at
      the official size, ≈ 7 % slower per step); "auto" does so on the CPU when an edit would
      otherwise fill more than 80 % of the available memory.
    * Channels-last layout where it is faster: on CPUs, for bfloat16 networks and decoders.
    * On the CPU the float32 convolutions of up to 256 input channels go through oneDNN
      (``conv_backend="onednn"``), also where PyTorch would take its slow fallback for small batch-1
      inputs. ``LDAEPipeline`` built directly keeps PyTorch's own choice, which the reference
      checks compare bit for bit.

    Call ``accel.tune_allocator`` after this, not before: the float32 weights freed here then go
    back to the system instead of fragmenting the heap."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LDAEError(f"threads must be a whole number ≥ 1, got {threads!r}")
        torch.set_num_threads(threads)
    device = check_device(device)
    net, dec = resolve_precision(device, dtype, decode_dtype)
    cpu = not device.startswith("cuda")
    kwargs.setdefault("channels_last", cpu and net == torch.bfloat16)
    kwargs.setdefault("decoder_channels_last", cpu and dec == torch.bfloat16)
    if weight_storage not in ("auto", "float32", "float16"):
        raise LDAEError(f"unknown weight storage {weight_storage!r}; choose auto, float32 or float16")
    if weight_storage == "auto":
        weight_storage = "float16" if cpu and net == torch.float32 and _short_of_memory(model.config, net, dec) else "float32"
    kwargs.setdefault("conv_backend", "onednn" if cpu else "torch")
    return LDAEPipeline(model, device=device, dtype=net, decode_dtype=dec, weight_storage=weight_storage, **kwargs)
