"""The LDAE worker process: loads a model once, then runs requests read line by line on stdin.

Started by the Slicer module (``PythonSlicer -m LDAELib.slicer.worker --model DIR``; the current
Python outside Slicer). It keeps the model and the pipeline warm and caches, per source volume,
the model-space input and (in the pipeline) its encoding, so moving the alpha slider repeats
neither the encoders nor the DDIM inversion. Messages are those of ``protocol``; everything else a
library prints goes to stderr, so stdout carries protocol lines only.

Threads: the main thread computes; one reader thread reads stdin and sets cancel flags. Neither
touches Qt or MRML (there are none in this process).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import protocol

_SOURCE_CACHE = 8


@dataclass
class Prepared:
    """One source volume, read and mapped into model space.

    affine: 4x4 voxel -> RAS (mm) of the source grid (nibabel convention, I,J,K voxel order).
    x: model-space float32 array.
    to_source: maps a model-space array (I,J,K) onto the source's grid and intensity range
    (``space.from_model_space``, or the registration's way back for a raw scan; keywords
    ``rescale_intensity`` and ``order`` as theirs).
    """

    key: str
    path: str
    affine: np.ndarray
    shape: tuple
    x: np.ndarray
    to_source: Callable[[np.ndarray], np.ndarray]
    encodings: dict = field(default_factory=dict)
    """latent mode (None = mean, or the latent seed) -> pipeline ``Encoding`` (its z_T per step count)."""
    ras_to_model: Callable[[np.ndarray], np.ndarray] | None = None
    """N×3 RAS points of the source's world → N×3 continuous model-space voxel indices."""
    source: np.ndarray | None = None
    """The source's own voxels (float32, I,J,K): what a preview of the slices on screen shows elsewhere."""
    slab_masks: dict = field(default_factory=dict)
    """model slabs → boolean mask of the source voxels they decide (previews of the slices on screen)."""
    references: dict = field(default_factory=dict)
    """(steps, latent mode, slabs or None, sampling dtype) → the scan's DDIM reconstruction on the
    source grid: the reference of "difference from the reconstruction" (the last few kept)."""

    def keep_reference(self, key, data: np.ndarray, size: int = 3) -> np.ndarray:
        self.references[key] = data
        while len(self.references) > size:
            self.references.pop(next(iter(self.references)))
        return data


class Emitter:
    """Writes protocol lines to the real stdout, one whole line at a time."""

    def __init__(self, stream) -> None:
        self.stream, self.lock = stream, threading.Lock()

    def __call__(self, message: dict) -> None:
        line = protocol.dumps(message)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def model_hash(identity: dict) -> str:
    """SHA-256 over the weight files' own SHA-256 (the full form of the model id)."""
    files = identity.get("files") or {}
    payload = json.dumps(files if files else {"random": identity.get("seed")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def describe_model(model) -> dict:
    ident = model.identity
    return {
        "name": model.name,
        "id": ident.get("id"),
        "hash": model_hash(ident),
        "format": ident.get("format"),
        "path": ident.get("path"),
        "files": ident.get("files") or {},
        "licence": ident.get("licence") or "",
        "random": ident.get("format") == "random",
        "parameters_m": round(model.num_parameters() / 1e6, 1),
        "limitations": model.limitations,
        "space": model.config.space.to_dict(),
        "directions": [
            {"name": d.name, "description": d.describe(), "positive": d.positive, "negative": d.negative, "alpha_unit": d.alpha_unit}
            for d in model.directions.values()
        ],
    }


def _memory_gb() -> tuple[float | None, float | None]:
    """(total, available) system memory in GiB, where the platform tells."""
    try:
        if sys.platform.startswith("linux"):
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
            kb = lambda k: float(info[k].split()[0]) / 2**20  # noqa: E731
            return round(kb("MemTotal"), 1), round(kb("MemAvailable"), 1)
        if sys.platform == "win32":
            import ctypes

            class MEMORYSTATUSEX(ctypes.Structure):
                _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong), ("ullTotalPhys", ctypes.c_ulonglong),
                            ("ullAvailPhys", ctypes.c_ulonglong), ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                            ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong), ("sullAvailExtendedVirtual", ctypes.c_ulonglong)]

            s = MEMORYSTATUSEX()
            s.dwLength = ctypes.sizeof(s)
            ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(s))
            return round(s.ullTotalPhys / 2**30, 1), round(s.ullAvailPhys / 2**30, 1)
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return round(total, 1), None
    except (OSError, ValueError, KeyError, AttributeError):
        return None, None


def diagnostics(device: str, dtype: str) -> dict:
    """What the diagnostics line shows: torch, device, memory; copyable as a report."""
    import torch

    total, avail = _memory_gb()
    d = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "device": device,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "cuda_available": bool(torch.cuda.is_available()),
        "cuda": torch.version.cuda,
        "memory_total_gb": total,
        "memory_available_gb": avail,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        free, tot = torch.cuda.mem_get_info(idx)
        cap = torch.cuda.get_device_capability(idx)
        d.update(gpu=torch.cuda.get_device_name(idx), gpu_memory_total_gb=round(tot / 2**30, 1), gpu_memory_free_gb=round(free / 2**30, 1),
                 gpu_capability=f"sm_{cap[0]}{cap[1]}", gpu_arch_supported=f"sm_{cap[0]}{cap[1]}" in torch.cuda.get_arch_list())
    return d


def choose_device(requested: str) -> str:
    import torch

    if requested in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def write_nifti(path: Path, data_ijk: np.ndarray, affine: np.ndarray, description: str) -> None:
    """float32 NIfTI with ``affine`` as qform and sform; written beside and renamed, never partial."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data_ijk, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    tmp = path.with_name(f".{path.name}.part.nii")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


class _Progress:
    """One bar over an operation's phases (encoding each input, then sampling and decoding)."""

    def __init__(self, report: Callable[[int, int, str], None], total: int) -> None:
        self.report, self.total, self.offset = report, max(1, total), 0

    def phase(self, cost: int) -> Callable[[int, int, str], None]:
        start = self.offset
        self.offset += cost

        def callback(done: int, _total: int, stage: str) -> None:
            self.report(min(start + done, self.total), self.total, stage)

        return callback


class Worker:
    """Runs requests on one loaded model. ``emit`` receives every reply message."""

    def __init__(self, model, pipe, emit: Callable[[dict], None], device: str = "cpu", dtype: str = "float32") -> None:
        self.model, self.pipe, self.emit = model, pipe, emit
        self.device, self.dtype = device, dtype
        self.sources: OrderedDict[str, Prepared] = OrderedDict()
        self._cancelled: set = set()
        self._cancel_all = threading.Event()
        self._lock = threading.Lock()
        self.info = describe_model(model)
        self._stage_a_cache = None

    # ---------------------------------------------------------------- cancel (reader thread)
    def cancel(self, request_id=None) -> None:
        with self._lock:
            if request_id is None:
                self._cancel_all.set()
            else:
                self._cancelled.add(request_id)

    def _is_cancelled(self, request_id) -> bool:
        with self._lock:
            return self._cancel_all.is_set() or request_id in self._cancelled

    # ---------------------------------------------------------------- inputs
    def _prepare(self, src: dict, input_space: str, progress=None, cancel=None) -> Prepared:
        from ..errors import LDAEError
        from ..io import read_volume
        from ..space import from_model_space, model_space_identity, to_model_space

        if not isinstance(src, dict) or not src.get("path"):
            raise LDAEError("the request names no source volume file")
        path = Path(src["path"])
        if not path.exists():
            raise LDAEError(f"the source volume file {path} does not exist")
        st = path.stat()
        key = f"{src.get('key') or path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{input_space}"
        if key in self.sources:
            self.sources.move_to_end(key)
            return self.sources[key]
        vol = read_volume(path)
        space = self.model.config.space
        if input_space == "raw":
            to_native, from_native, cache_class = registration_api()
            if self._stage_a_cache is None:
                self._stage_a_cache = cache_class()
            x, nctx = to_native(vol.data, vol.affine, space, cache=self._stage_a_cache, progress=progress, cancel=cancel)
            to_source = lambda y, c=nctx, **kw: from_native(y, c, **kw)  # noqa: E731
            ras_to_model = _registered_points(nctx)
        elif input_space in ("model", "mni"):
            x, ctx = (model_space_identity if input_space == "model" else to_model_space)(vol.data, vol.affine, space)
            to_source = lambda y, c=ctx, **kw: from_model_space(y, c, **kw)  # noqa: E731
            ras_to_model = _affine_points(ctx.model_affine)
        else:
            raise LDAEError(f"unknown input space '{input_space}'; use one of {', '.join(protocol.INPUT_SPACES)}")
        prep = Prepared(key=key, path=str(path), affine=np.asarray(vol.affine), shape=tuple(vol.data.shape), x=x, to_source=to_source,
                        ras_to_model=ras_to_model, source=np.asarray(vol.data, dtype=np.float32))
        self.sources[key] = prep
        while len(self.sources) > _SOURCE_CACHE:
            self.sources.popitem(last=False)
        return prep

    def _preview_region(self, req: dict, prep: Prepared, direction, alphas: list[float], steps: int, seed, progress, cancel,
                        save, inputs) -> dict:
        """An edit previewed on the slices on screen. Only the model slabs under the views' planes
        are decoded (``slice_preview``), with the GroupNorm statistics of the decode of the scan's
        DDIM reconstruction at the same step count: slice SSIM ≥ 0.996 against the full decode on
        the demo model at 2–3 steps, where the scan's own decode gives 0.84 at 2 steps. Every source
        voxel outside the slabs keeps the source's value, so nothing there passes for a result."""
        from ..errors import LDAEError
        from ..runtime import preview_sampling_dtype
        from ..slice_preview import preview_slabs, visible_slab

        region = req["region"]
        point = region.get("point") if isinstance(region, dict) else None
        planes = region.get("planes") if isinstance(region, dict) else None
        if not (isinstance(point, (list, tuple)) and len(point) == 3 and all(isinstance(v, (int, float)) for v in point)):
            raise LDAEError("a preview region needs a point [R, A, S] in mm")
        if not planes or any(p not in protocol.PLANES for p in planes):
            raise LDAEError(f"a preview region needs planes among {', '.join(protocol.PLANES)}")
        autocast = preview_sampling_dtype(self.device, req.get("preview_dtype") or "float32")
        found = []
        for plane in dict.fromkeys(planes):
            slab = visible_slab(plane, point, prep.shape, prep.affine, prep.ras_to_model, self.model.config.space.shape)
            if slab is not None and slab not in [s for _, s in found]:
                found.append((plane, slab))
        if not found:
            raise LDAEError("the slices on screen do not cross the model's field of view; move them into the brain")
        mask_key = tuple(s for _, s in found)
        ref_key = (steps, seed, mask_key, autocast is not None)
        want_ref = self._reference_wanted(req) and ref_key not in prep.references
        run_alphas = alphas + [0.0] if want_ref else alphas  # the reconstruction's slabs ride along in the same batch
        n = len(run_alphas)
        cost = self._encode_cost(prep, steps, seed) + self._sample_cost(n, steps) + n * (len(found) - 1)
        bar = _Progress(progress, cost)
        enc = self._encoding(prep, steps, seed, bar, cancel)
        previews = preview_slabs(self.pipe, enc, direction, run_alphas, steps, [s for _, s in found], autocast=autocast, stats="reconstruction",
                                 progress=bar.phase(cost - self._encode_cost(prep, steps, seed)), cancel=cancel)
        where = []
        for pv in previews:
            index = [slice(None)] * 3
            index[pv.axis] = slice(pv.start, pv.stop)
            where.append(tuple(index))
        if mask_key not in prep.slab_masks:  # the same views while dragging: computed once
            inside = np.zeros(prep.x.shape, dtype=np.float32)
            for index in where:
                inside[index] = 1.0
            prep.slab_masks = {mask_key: prep.to_source(inside, rescale_intensity=False, order=0) > 0.5}  # the source voxels the slabs decide
        inside = prep.slab_masks[mask_key]

        def on_source_grid(i: int) -> np.ndarray:
            vol = np.array(prep.x, dtype=np.float32, copy=True)
            for index, pv in zip(where, previews):
                vol[index] = pv.image[i, 0].detach().float().cpu().numpy()
            return np.where(inside, prep.to_source(vol), prep.source)

        outputs = []
        for i, a in enumerate(alphas):
            desc = f"LDAE preview {direction.name} alpha={a:+g} T={steps}"
            outputs.append({"kind": "edit", "alpha": a, "preview": True, "path": save(f"preview_{i:03d}.nii", on_source_grid(i), prep.affine, desc)})
        if self._reference_wanted(req):  # outside the slabs the reference is the source, as the preview is
            ref = prep.keep_reference(ref_key, on_source_grid(len(alphas))) if want_ref else prep.references[ref_key]
            outputs.append({"kind": "reference", "path": save("reference.nii", ref, prep.affine, f"LDAE preview reconstruction T={steps}")})
        slabs = [{"plane": plane, "axis": ax, "start": s0, "stop": s1} for plane, (ax, s0, s1) in found]
        prov = self._provenance("edit", req, inputs, direction=direction.name, direction_meaning=direction.describe(), alphas=alphas,
                                preview={"kind": "slices on screen", "slabs": slabs, "groupnorm_stats": previews[0].stats,
                                         "sampling_dtype": "bfloat16" if autocast is not None else "float32",
                                         "outside_slabs": "source"})
        return {"outputs": outputs, "provenance": prov, "region": slabs}

    @staticmethod
    def _reference_wanted(req: dict) -> bool:
        """Whether an edit asks for the scan's reconstruction as the reference of its difference map."""
        from ..errors import LDAEError

        ref = req.get("difference_reference", "source")
        if ref not in ("source", "reconstruction"):
            raise LDAEError(f"difference_reference must be 'source' or 'reconstruction', got {ref!r}")
        return ref == "reconstruction"

    def _direction(self, spec):
        from ..errors import LDAEError

        if isinstance(spec, dict) and spec.get("file"):
            from ..directions_io import load_direction

            return load_direction(spec["file"])
        if isinstance(spec, str) and spec in self.model.directions:
            return self.model.directions[spec]
        names = ", ".join(sorted(self.model.directions)) or "none"
        raise LDAEError(f"unknown direction {spec!r}; this model has: {names} (or choose a probe file)")

    @staticmethod
    def _stage_progress(progress):
        """Registration reports its own steps (its bar, then the operation's)."""
        return lambda done, total, stage: progress(done, total, f"registration: {stage}" if not stage.startswith("registration") else stage)

    def _encode_cost(self, prep: Prepared, steps: int | None, latent_seed) -> int:
        """Network calls still needed to encode ``prep`` (and invert it with ``steps``)."""
        enc = prep.encodings.get(latent_seed)
        if enc is None:
            return 2 + (steps or 0)
        return 0 if steps is None or steps in enc.z_T else steps

    def _sample_cost(self, n: int, steps: int) -> int:
        return -(-n // self.pipe.batch_size) * steps + n

    def _encoding(self, prep: Prepared, steps: int | None, latent_seed, bar: _Progress, cancel):
        """The pipeline Encoding of a source, from this worker's cache when it is there."""
        cost = self._encode_cost(prep, steps, latent_seed)
        callback = bar.phase(cost)
        enc = prep.encodings.get(latent_seed)
        if enc is None:
            enc = self.pipe.encode(prep.x, steps, latent_seed=latent_seed, progress=callback, cancel=cancel)
            prep.encodings[latent_seed] = enc
        elif steps is not None and steps not in enc.z_T:
            enc = self.pipe.encode(prep.x, steps, latent_seed=latent_seed, progress=callback, cancel=cancel)
            prep.encodings[latent_seed] = enc
        return enc

    def _to_source_grid(self, images, index: int, prep: Prepared) -> np.ndarray:
        return prep.to_source(images[index, 0].detach().float().cpu().numpy())

    # ---------------------------------------------------------------- requests
    def handle(self, req: dict) -> None:
        """Run one request and emit its progress and exactly one final reply."""
        from ..errors import Cancelled, LDAEError

        rid = req.get("id")
        op = req.get("op")
        t0 = time.perf_counter()
        written: list[Path] = []

        def progress(done: int, total: int, stage: str) -> None:
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (total - done) if done > 0 else None
            self.emit({"type": "progress", "id": rid, "done": done, "total": total, "stage": stage, "elapsed": round(elapsed, 3),
                       "eta": None if eta is None else round(eta, 1)})

        cancel = lambda: self._is_cancelled(rid)  # noqa: E731
        try:
            if cancel():
                raise Cancelled("cancelled before it started")
            calls_before = dict(self.pipe.calls)
            if op == "info":
                reply = {"model": self.info, "diagnostics": diagnostics(self.device, self.dtype), "cached_sources": len(self.sources)}
            elif op in ("edit", "reconstruct", "vary", "encode", "interpolate"):
                reply = self._run(op, req, progress, cancel, written)
            else:
                raise LDAEError(f"unknown operation {op!r}; one of {', '.join(protocol.OPS)}")
            delta = {k: self.pipe.calls[k] - calls_before.get(k, 0) for k in self.pipe.calls}
            reply.update(type="result", id=rid, op=op, seconds=round(time.perf_counter() - t0, 3), calls=delta,
                         cache={"encoded": delta["autoencoder_encode"] == 0, "inverted": delta["inversion"] == 0})
            self.emit(reply)
        except Cancelled:
            self._discard(written)
            self.emit({"type": "cancelled", "id": rid})
        except LDAEError as err:
            self._discard(written)
            self.emit({"type": "error", "id": rid, "kind": "LDAEError", "message": str(err)})
        except MemoryError:
            self._discard(written)
            self.emit({"type": "error", "id": rid, "kind": "MemoryError",
                       "message": "out of memory; close other programs, use fewer steps, or a GPU (device cuda)"})
        except Exception as err:  # an internal error: report it, keep serving
            self._discard(written)
            traceback.print_exc(file=sys.stderr)
            self.emit({"type": "error", "id": rid, "kind": type(err).__name__, "message": f"internal error: {type(err).__name__}: {err}"})
        finally:
            with self._lock:
                self._cancelled.discard(rid)

    @staticmethod
    def _discard(paths: list[Path]) -> None:
        for p in paths:
            try:
                p.unlink()
            except OSError:
                pass

    def _provenance(self, op: str, req: dict, inputs: list[dict], **extra) -> dict:
        from datetime import datetime, timezone

        prov = {
            "generator": "LDAE for 3D Slicer",
            "note": "synthetic image generated by a model from the input scan(s); not an acquired scan",
            "operation": op,
            "model": {k: self.info[k] for k in ("name", "id", "hash", "format", "files")},
            "steps": int(req.get("steps", 10)),
            "seed": req.get("seed"),
            "latent": "mean" if req.get("latent_seed") is None else f"sampled(seed={req.get('latent_seed')})",
            "input_space": req.get("input_space", "mni"),
            "device": self.device,
            "dtype": self.dtype,
            "decode_dtype": str(getattr(self.pipe, "decode_dtype", self.dtype)).replace("torch.", ""),
            "weight_storage": getattr(self.pipe, "weight_storage", self.dtype),
            "inputs": inputs,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        note = (self.info.get("limitations") or {}).get(op)
        if note:
            prov["model_limitation"] = note
        prov.update(extra)
        return prov

    def _run(self, op: str, req: dict, progress, cancel, written: list[Path]) -> dict:
        from ..errors import LDAEError

        steps = req.get("steps", 10)
        if not isinstance(steps, int) or steps < 1:
            raise LDAEError(f"steps must be a whole number ≥ 1, got {steps!r}")
        space = req.get("input_space", "mni")
        seed = req.get("latent_seed")
        out_dir = None
        if op != "encode":
            if not req.get("out_dir"):
                raise LDAEError("the request names no output folder")
            out_dir = Path(req["out_dir"])
            out_dir.mkdir(parents=True, exist_ok=True)

        def save(name: str, data: np.ndarray, affine, description: str) -> str:
            path = out_dir / name
            written.append(path)
            write_nifti(path, data, affine, description)
            return str(path)

        if op == "interpolate":
            pa = self._prepare(req.get("a"), space, self._stage_progress(progress), cancel)
            pb = self._prepare(req.get("b"), space, self._stage_progress(progress), cancel)
            fractions = [float(f) for f in req.get("fractions") or []]
            if not fractions:
                raise LDAEError("give at least one fraction between 0 and 1")
            if any(not (-0.5 <= f <= 1.5) for f in fractions):
                raise LDAEError("fractions should lie between 0 and 1 (mild extrapolation from −0.5 to 1.5 is allowed)")
            bar = _Progress(progress, self._encode_cost(pa, steps, seed) + self._encode_cost(pb, steps, seed) + self._sample_cost(len(fractions), steps))
            ea = self._encoding(pa, steps, seed, bar, cancel)
            eb = self._encoding(pb, steps, seed, bar, cancel)
            images = self.pipe.interpolate(ea, eb, fractions, steps, progress=bar.phase(self._sample_cost(len(fractions), steps)), cancel=cancel)
            outputs = []
            for i, f in enumerate(fractions):
                data = self._to_source_grid(images, i, pa)
                outputs.append({"kind": "interpolation", "fraction": f,
                                "path": save(f"interp_{i:03d}.nii", data, pa.affine, f"LDAE interpolation t={f:.2f} T={steps}")})
            prov = self._provenance(op, req, [{"key": req["a"].get("key")}, {"key": req["b"].get("key")}], fractions=fractions)
            return {"outputs": outputs, "provenance": prov}

        prep = self._prepare(req.get("source"), space, self._stage_progress(progress), cancel)
        if op == "encode":
            pstep = req.get("preview_steps")
            if pstep is not None and (not isinstance(pstep, int) or pstep < 1):
                raise LDAEError(f"preview_steps must be a whole number ≥ 1, got {pstep!r}")
            cost = self._encode_cost(prep, steps, seed)
            bar = _Progress(progress, cost + (pstep or 0) + (1 if pstep else 0))
            enc = self._encoding(prep, steps, seed, bar, cancel)
            if pstep:  # what the previews of the slider need: their inversion and the slab decode's statistics
                from ..errors import Cancelled
                from ..slice_preview import has_attention, source_stats

                if pstep not in enc.z_T:
                    enc = self._encoding(prep, pstep, seed, bar, cancel)
                if cancel():
                    raise Cancelled("cancelled")
                if not has_attention(self.model.autoencoder):
                    source_stats(self.pipe, enc, pstep)
                bar.phase(1)(1, 1, "preview statistics")
            return {"outputs": []}
        inputs = [{"key": req["source"].get("key")}]
        if op in ("edit", "reconstruct"):
            if op == "edit":
                direction = self._direction(req.get("direction"))
                alphas = [float(a) for a in (req.get("alphas") or [])]
                if not alphas:
                    raise LDAEError("give at least one alpha")
            else:
                direction, alphas = None, [0.0]
            if op == "edit" and req.get("region") is not None:
                return self._preview_region(req, prep, direction, alphas, steps, seed, progress, cancel, save, inputs)
            ref_key = (steps, seed, None, False)
            want_ref = op == "edit" and self._reference_wanted(req) and ref_key not in prep.references
            cost = self._encode_cost(prep, steps, seed) + self._sample_cost(len(alphas), steps) + (self._sample_cost(1, steps) if want_ref else 0)
            bar = _Progress(progress, cost)
            enc = self._encoding(prep, steps, seed, bar, cancel)
            images = self.pipe.edit(enc, direction, alphas, steps, progress=bar.phase(self._sample_cost(len(alphas), steps)), cancel=cancel)
            reference = None
            if want_ref:  # once per scan and step count: the same sampling as op "reconstruct"
                recon = self.pipe.edit(enc, None, [0.0], steps, progress=bar.phase(self._sample_cost(1, steps)), cancel=cancel)
                reference = prep.keep_reference(ref_key, self._to_source_grid(recon, 0, prep))
            elif op == "edit" and self._reference_wanted(req):
                reference = prep.references[ref_key]
            outputs = []
            for i, a in enumerate(alphas):
                data = self._to_source_grid(images, i, prep)
                desc = f"LDAE {direction.name} alpha={a:+g} T={steps}" if direction else f"LDAE reconstruction T={steps}"
                outputs.append({"kind": op, "alpha": a, "path": save(f"{op}_{i:03d}.nii", data, prep.affine, desc)})
            if reference is not None:
                outputs.append({"kind": "reference", "path": save("reference.nii", reference, prep.affine, f"LDAE reconstruction T={steps}")})
            extra = {"direction": direction.name, "direction_meaning": direction.describe(), "alphas": alphas} if direction else {}
            return {"outputs": outputs, "provenance": self._provenance(op, req, inputs, **extra)}
        # vary
        n, vseed = int(req.get("n", 4)), int(req.get("seed", 0) or 0)
        if not 1 <= n <= 64:
            raise LDAEError(f"the number of variations must be between 1 and 64, got {n}")
        bar = _Progress(progress, self._encode_cost(prep, None, seed) + self._sample_cost(n, steps))
        enc = self._encoding(prep, None, seed, bar, cancel)
        images = self.pipe.vary(enc, n, seed=vseed, steps=steps, progress=bar.phase(self._sample_cost(n, steps)), cancel=cancel)
        outputs, stack = [], []
        for i in range(n):
            data = self._to_source_grid(images, i, prep)
            stack.append(data)
            outputs.append({"kind": "variation", "index": i,
                            "path": save(f"vary_{i:03d}.nii", data, prep.affine, f"LDAE variation {i} seed={vseed} T={steps}")})
        spread = np.std(np.stack(stack), axis=0).astype(np.float32)
        outputs.append({"kind": "spread", "path": save("spread.nii", spread, prep.affine, f"LDAE voxel-wise std of {n} variations")})
        return {"outputs": outputs, "provenance": self._provenance(op, req, inputs, n=n, variation_seed=vseed)}


def _affine_points(model_affine: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    inv = np.linalg.inv(np.asarray(model_affine, dtype=np.float64))
    return lambda pts: (np.c_[np.asarray(pts, dtype=np.float64), np.ones(len(pts))] @ inv.T)[:, :3]


def _registered_points(nctx) -> Callable[[np.ndarray], np.ndarray]:
    """Scan RAS points → model voxel indices through the scan's registration to MNI (looked up
    when first asked for: only previews of the slices on screen need it)."""

    def points(pts: np.ndarray) -> np.ndarray:
        transform = nctx.registration.native_to_mni
        lps = np.asarray(pts, dtype=np.float64) * [-1.0, -1.0, 1.0]  # ITK works in LPS
        mni = np.array([transform.TransformPoint(tuple(map(float, p))) for p in lps]) * [-1.0, -1.0, 1.0]
        return _affine_points(nctx.space.model_affine)(mni)

    return points


def registration_api():
    """Stage A (raw scan -> MNI -> model space, and back) from ``LDAELib.registration``:
    ``(to_model_space_native, from_model_space_native, StageACache)``. The way back samples the
    model grid once at every scan voxel (no double interpolation through the MNI grid)."""
    from ..errors import LDAEError

    try:
        from ..registration import StageACache, from_model_space_native, to_model_space_native
    except ImportError as err:
        raise LDAEError(
            "this scan is marked as not registered to MNI, but raw-scan registration is not available in this "
            f"installation ({err}). Register the scan to MNI space first (brain-extracted, e.g. with ANTs), or tick "
            "'input is brain-extracted and registered to MNI'."
        ) from None
    return to_model_space_native, from_model_space_native, StageACache


def _reader(stream, worker: Worker, requests: "queue.Queue[dict | None]", emit) -> None:
    """Reader thread: requests to the queue; cancel acts at once; EOF (the parent is gone) ends."""
    for line in stream:
        line = line.strip()
        if not line:
            continue
        try:
            msg = protocol.loads(line)
        except ValueError as err:
            emit({"type": "error", "id": None, "kind": "protocol", "message": f"unreadable request line: {err}"})
            continue
        op = msg.get("op")
        if op == "cancel":
            worker.cancel(msg.get("id"))
        elif op == "shutdown":
            break
        else:
            requests.put(msg)
    requests.put(None)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m LDAELib.slicer.worker", description="LDAE worker process (JSON lines on stdin/stdout)")
    p.add_argument("--model", required=True, help="bundle folder or folder of the authors' files")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--decode-dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--cache-dir", default=None, help="keep encodings on disk in this folder (off by default)")
    p.add_argument("--weight-storage", choices=["auto", "float32", "float16"], default="auto",
                   help="keep the float32 ShiftUNet's weights in float16 (half their memory); auto: when memory is short")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of a bundle's files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not corrupt the protocol
    emit = Emitter(out)
    try:
        import torch

        from ..errors import LDAEError
        from ..runtime import make_pipeline, resolve_precision, tune_allocator
        from ..weights import load_model
    except ImportError as err:
        emit({"type": "error", "id": None, "kind": "ImportError",
              "message": f"a package LDAE needs is missing in this Python ({err}); install the module's requirements"})
        return 1
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        device = choose_device(args.device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise LDAEError(f"device {device} was asked for but this torch has no CUDA device; choose cpu")
        resolve_precision(device, args.dtype, args.decode_dtype)  # bad settings fail before the (slow) model load
        model = load_model(args.model, verify=not args.no_verify)
        pipe = make_pipeline(model, device, args.dtype, args.decode_dtype, cache_dir=args.cache_dir, weight_storage=args.weight_storage)
        tune_allocator()  # after the weights are in place (make_pipeline's docstring)
    except LDAEError as err:
        emit({"type": "error", "id": None, "kind": "LDAEError", "message": str(err)})
        return 1
    except MemoryError:
        emit({"type": "error", "id": None, "kind": "MemoryError", "message": "out of memory while loading the model"})
        return 1
    worker = Worker(model, pipe, emit, device=device, dtype=args.dtype)
    emit({"type": "ready", "protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid(), "model": worker.info,
          "diagnostics": diagnostics(device, args.dtype)})
    requests: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(sys.stdin, worker, requests, emit), daemon=True, name="ldae-stdin").start()
    while True:
        req = requests.get()
        if req is None:
            break
        worker.handle(req)
        if requests.empty():  # a cancel without id ends what ran and what was queued, nothing later
            worker._cancel_all.clear()
    return 0


if __name__ == "__main__":
    sys.exit(main())
