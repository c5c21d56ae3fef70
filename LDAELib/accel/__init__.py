"""How a process runs the networks fast and within its memory: one concept per file.

``precision`` (dtypes a device computes well), ``weights`` (float16 weight storage), ``onednn``
(the CPU's small convolutions), ``memory`` (peak estimates, out-of-memory messages), ``host``
(CPU name and vector level, memory, the allocator). The pipeline uses these; nothing here knows
the pipeline.
"""

from .host import available_memory_bytes, cpu_name, cpu_vector_level, memory_gb, tune_allocator
from .memory import MemoryEstimate, MemoryFallbackWarning, estimate_peak_bytes
from .onednn import onednn_convolutions
from .precision import DTYPES, check_device, cpu_has_fast_bf16, preview_sampling_dtype, resolve_precision
from .weights import compact_weights

__all__ = [
    "DTYPES", "MemoryEstimate", "MemoryFallbackWarning", "available_memory_bytes", "check_device", "compact_weights",
    "cpu_has_fast_bf16", "cpu_name", "cpu_vector_level", "estimate_peak_bytes", "memory_gb", "onednn_convolutions",
    "preview_sampling_dtype", "resolve_precision", "tune_allocator",
]
