"""The worker's line protocol: one JSON object per line, UTF-8, in both directions.

Requests (Slicer process -> worker, on the worker's stdin)::

    {"op": "edit", "id": 7, "source": {"path": ".../src.nii", "key": "ab12"}, "direction": "cn",
     "alphas": [2.0], "steps": 10, "out_dir": ".../job7", "latent_seed": null, "input_space": "mni"}
    {"op": "interpolate", "id": 8, "a": {...}, "b": {...}, "fractions": [0.25, 0.5], "steps": 10, "out_dir": ...}
    {"op": "vary", "id": 9, "source": {...}, "n": 4, "seed": 0, "steps": 10, "out_dir": ...}
    {"op": "reconstruct", "id": 10, "source": {...}, "steps": 10, "out_dir": ...}
    {"op": "encode", "id": 11, "source": {...}, "steps": 10}          warm the cache, no output
    {"op": "info", "id": 12}                                          model, diagnostics, cache
    {"op": "cancel", "id": 7}            stop request 7 at the next network call (no id: all)
    {"op": "shutdown"}

An edit may carry ``"region": {"point": [R, A, S], "planes": ["axial", "coronal", "sagittal"]}``:
a preview of the slices on screen (the views' planes through ``point``, RAS mm). Only the model
slabs under those planes are decoded; elsewhere the output holds the source. ``"preview_dtype"``
("auto", "float32" or "bfloat16") sets the precision of that preview's DDIM sampling (default
float32; auto: bfloat16 where the device computes it natively).

An edit may carry ``"difference_reference": "reconstruction"`` (default "source"): its outputs then
end with ``{"kind": "reference", "path": ...}``, the scan's DDIM reconstruction at the same step
count (for a preview of the slices on screen: inside the slabs; the source elsewhere), so that
result − reference shows the edit's own change without the autoencoder's loss. The worker computes
it once per scan and step count.

``direction`` is a direction name of the model or {"file": "probe.safetensors"}. ``input_space``:
"mni" (registered to MNI: resampled into model space, the default), "model" (already in model
space: used as stored), "raw" (registered first, by LDAELib.registration, when installed).

Replies (worker -> Slicer process, on the worker's stdout; nothing else is written there)::

    {"type": "ready", "model": {...}, "diagnostics": {...}}                      once, after loading
    {"type": "progress", "id": 7, "done": 3, "total": 22, "stage": "inversion",
     "elapsed": 1.2, "eta": 7.6}
    {"type": "result", "id": 7, "op": "edit", "outputs": [{"path": ..., "kind": "edit", "alpha": 2.0}],
     "provenance": {...}, "seconds": 4.1, "cache": {"encoded": true, "inverted": true}}
    {"type": "error", "id": 7, "message": "...", "kind": "LDAEError"}           id null: start-up failed
    {"type": "cancelled", "id": 7}

Volumes travel as NIfTI files in a folder the Slicer process owns; arrays on disk are in nibabel's
I,J,K order with the affine (voxel -> RAS mm) in the header.
"""

from __future__ import annotations

import json
import math
from typing import Any

PROTOCOL_VERSION = 1

OPS = ("edit", "interpolate", "vary", "reconstruct", "encode", "info", "cancel", "shutdown")
FINAL_TYPES = ("result", "error", "cancelled")
"""Reply types that end a request."""

INPUT_SPACES = ("mni", "model", "raw")
PLANES = ("axial", "coronal", "sagittal")


def dumps(message: dict[str, Any]) -> str:
    """One message as one line (no newline inside; non-finite floats become null)."""
    return json.dumps(_finite(message), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def loads(line: str) -> dict[str, Any]:
    """Parse one line; raises ValueError for anything that is not a JSON object."""
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError(f"a protocol line must be a JSON object, got {type(msg).__name__}")
    return msg


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def format_eta(seconds: float | None) -> str:
    """'12 s', '3 min 05 s', '1 h 02 min'; '' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def progress_text(msg: dict[str, Any]) -> str:
    """The status line for a progress message: 'inversion: step 3/22, about 8 s left'."""
    done, total = msg.get("done", 0), msg.get("total", 0)
    text = f"{msg.get('stage', 'working')}: step {done}/{total}"
    eta = format_eta(msg.get("eta"))
    if eta and done < total:
        text += f", about {eta} left"
    return text
