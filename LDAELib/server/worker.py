"""The LDAE worker process: loads a model once, then runs requests read line by line on stdin.

Started by the Slicer module (``PythonSlicer -m LDAELib.server.worker --model DIR``; any Python with
LDAELib outside Slicer). It keeps the model and the pipeline warm and, per source file, the scan in
model space and its encoding (``inference.Inference``), so moving the alpha slider repeats neither
the encoders nor the DDIM inversion. The operations are the ones ``ldae`` runs; results go to the
request's ``out_dir`` as NIfTI files on the source's grid, each with its provenance record in the
reply. Messages are those of ``protocol``; everything else a library prints goes to stderr, so
stdout carries protocol lines only. Nothing here knows Slicer.

Threads: the main thread computes; one reader thread reads stdin and sets cancel flags.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from ..accel.host import memory_gb
from ..errors import Cancelled, LDAEError
from ..inference.image import write_image
from ..inference.operations import Inference, Output
from ..inference.provenance import model_record
from ..inference.settings import RunSettings
from . import protocol


class Emitter:
    """Writes protocol lines to the real stdout, one whole line at a time."""

    def __init__(self, stream) -> None:
        self.stream, self.lock = stream, threading.Lock()

    def __call__(self, message: dict) -> None:
        line = protocol.dumps(message)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def describe_model(model) -> dict:
    """What the panel shows of a model: name, identity, licence, size, notes, space, directions."""
    ident = model.identity
    return {
        **model_record(model),
        "path": ident.get("path"),
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


def diagnostics(device: str, dtype: str, decode_dtype: str = "float32") -> dict:
    """What the diagnostics line shows: torch, device, memory; copyable as a report."""
    import torch

    total, avail = memory_gb()
    d = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "device": device,
        "dtype": dtype,
        "decode_dtype": decode_dtype,
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


OUTPUT_NAMES = {"reconstruction": "reconstruct", "edit": "edit", "preview": "preview", "interpolation": "interp",
                "variation": "vary", "spread": "spread", "reference": "reference"}


class Worker:
    """Runs requests on one loaded model. ``emit`` receives every reply message.

    ``settings``: the run settings every request starts from (device, precision, …); a request
    sets its own steps, latent seed, variation seed and input space."""

    def __init__(self, model, pipe, emit: Callable[[dict], None], settings: RunSettings | None = None) -> None:
        self.model, self.pipe, self.emit = model, pipe, emit
        self.settings = settings or RunSettings(device=str(pipe.device), dtype=str(pipe.dtype).replace("torch.", ""),
                                                decode_dtype=str(pipe.decode_dtype).replace("torch.", ""), input_space="mni")
        self.inference = Inference(model, pipe, self.settings)
        self._cancelled: set = set()
        self._cancel_all = threading.Event()
        self._lock = threading.Lock()
        self.info = describe_model(model)

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

    def end_of_queue(self) -> None:
        """A cancel without id ends what ran and what was queued, nothing sent later."""
        self._cancel_all.clear()

    # ---------------------------------------------------------------- requests
    def _settings(self, req: dict) -> RunSettings:
        steps = req.get("steps", 10)
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise LDAEError(f"steps must be a whole number ≥ 1, got {steps!r}")
        latent_seed = req.get("latent_seed")
        return self.settings.replace(steps=steps, input_space=req.get("input_space", "mni"),
                                     sample_latent=latent_seed is not None,
                                     seed=latent_seed if latent_seed is not None else req.get("seed"))

    @staticmethod
    def _source(spec) -> tuple[str, str | None]:
        if not isinstance(spec, dict) or not spec.get("path"):
            raise LDAEError("the request names no source volume file")
        path = Path(spec["path"])
        if not path.exists():
            raise LDAEError(f"the source volume file {path} does not exist")
        return str(path), spec.get("key")

    @staticmethod
    def _reference_wanted(req: dict) -> bool:
        """Whether an edit asks for the scan's reconstruction as the reference of its difference map."""
        ref = req.get("difference_reference", "source")
        if ref not in ("source", "reconstruction"):
            raise LDAEError(f"difference_reference must be 'source' or 'reconstruction', got {ref!r}")
        return ref == "reconstruction"

    def handle(self, req: dict) -> None:
        """Run one request and emit its progress and exactly one final reply."""
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
                reply = {"model": self.info, "diagnostics": diagnostics(str(self.pipe.device), self.settings.dtype,
                                                                        str(self.pipe.decode_dtype).replace("torch.", ""))}
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

    def _write(self, outputs: list[Output], out_dir: Path, written: list[Path]) -> list[dict]:
        """Each output as a NIfTI in ``out_dir`` (the Slicer process reads and deletes them)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        replies, counts = [], {}
        for o in outputs:
            i = counts.get(o.kind, 0)
            counts[o.kind] = i + 1
            path = out_dir / (f"{OUTPUT_NAMES[o.kind]}_{i:03d}.nii" if o.kind not in ("spread", "reference") else f"{OUTPUT_NAMES[o.kind]}.nii")
            tmp = path.with_name(f".{path.name}.part.nii")
            written.append(tmp)
            write_image(tmp, o.like, o.data, o.provenance.get("description", "LDAE output"))
            os.replace(tmp, path)
            written.append(path)
            kind = "reconstruct" if o.kind == "reconstruction" else ("edit" if o.kind == "preview" else o.kind)
            reply = {"kind": kind, "path": str(path), "provenance": o.provenance, **o.meta}
            if o.kind == "preview":
                reply["preview"] = True
            replies.append(reply)
        return replies

    def _run(self, op: str, req: dict, progress, cancel, written: list[Path]) -> dict:
        inf = self.inference.using(self._settings(req))
        out_dir = None
        if op != "encode":
            if not req.get("out_dir"):
                raise LDAEError("the request names no output folder")
            out_dir = Path(req["out_dir"])
        if op == "interpolate":
            (pa, ka), (pb, kb) = self._source(req.get("a")), self._source(req.get("b"))
            fractions = req.get("fractions") or []
            outputs = inf.interpolate(pa, pb, fractions, keys=(ka, kb), progress=progress, cancel=cancel)
            return {"outputs": self._write(outputs, out_dir, written),
                    "provenance": {**outputs[0].provenance, "fractions": [o.meta["fraction"] for o in outputs]}}
        path, key = self._source(req.get("source"))
        if op == "encode":
            inf.prepare_previews(path, req.get("preview_steps"), key=key, progress=progress, cancel=cancel)
            return {"outputs": []}
        if op in ("edit", "reconstruct"):
            reference = op == "edit" and self._reference_wanted(req)
            if op == "edit" and not req.get("alphas"):
                raise LDAEError("give at least one alpha")
            if op == "edit" and req.get("region") is not None:
                region = req["region"] if isinstance(req["region"], dict) else {}
                outputs, slabs = inf.edit_preview(path, req.get("direction"), req.get("alphas"), region.get("point"), region.get("planes") or [],
                                                  preview_dtype=req.get("preview_dtype") or "float32", reference=reference, key=key,
                                                  progress=progress, cancel=cancel)
                alphas = [o.meta["alpha"] for o in outputs if o.kind == "preview"]
                return {"outputs": self._write(outputs, out_dir, written), "region": slabs,
                        "provenance": {**outputs[0].provenance, "alphas": alphas}}
            if op == "edit":
                outputs = inf.edit(path, req.get("direction"), req.get("alphas"), reference=reference, key=key, progress=progress, cancel=cancel)
            else:
                outputs = inf.reconstruct(path, key=key, progress=progress, cancel=cancel)
            prov = dict(outputs[0].provenance)
            if op == "edit":
                prov["alphas"] = [o.meta["alpha"] for o in outputs if o.kind == "edit"]
            return {"outputs": self._write(outputs, out_dir, written), "provenance": prov}
        n = req.get("n", 4)
        inf = inf.using(inf.settings.replace(seed=int(req.get("seed", 0) or 0), sample_latent=False))
        outputs = inf.vary(path, n if isinstance(n, int) and not isinstance(n, bool) else -1, spread=True, key=key, progress=progress, cancel=cancel)
        prov = {**outputs[0].provenance, "n": n}
        return {"outputs": self._write(outputs, out_dir, written), "provenance": prov}


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
    p = argparse.ArgumentParser(prog="python -m LDAELib.server.worker", description="LDAE worker process (JSON lines on stdin/stdout)")
    p.add_argument("--model", required=True, help="bundle folder or folder of the authors' files")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--decode-dtype", choices=["auto", "float32", "bfloat16", "float16"], default="float32",
                   help="the decoder's precision (default float32: the authors' numbers; auto: bfloat16 where native, faster)")
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
        from ..inference.loading import open_model, open_pipeline, resolve_device
    except ImportError as err:
        emit({"type": "error", "id": None, "kind": "ImportError",
              "message": f"a package LDAE needs is missing in this Python ({err}); install the module's requirements"})
        return 1
    try:
        settings = RunSettings(device=args.device, dtype=args.dtype, decode_dtype=args.decode_dtype, threads=args.threads,
                               weight_storage=args.weight_storage, cache_dir=args.cache_dir, verify=not args.no_verify, input_space="mni")
        settings = settings.replace(device=resolve_device(settings.device))
        model = open_model(args.model, settings)
        pipe = open_pipeline(model, settings)
    except LDAEError as err:
        emit({"type": "error", "id": None, "kind": "LDAEError", "message": str(err)})
        return 1
    except MemoryError:
        emit({"type": "error", "id": None, "kind": "MemoryError", "message": "out of memory while loading the model"})
        return 1
    worker = Worker(model, pipe, emit, settings)
    emit({"type": "ready", "protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid(), "model": worker.info,
          "diagnostics": diagnostics(settings.device, args.dtype, str(pipe.decode_dtype).replace("torch.", ""))})
    requests: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(sys.stdin, worker, requests, emit), daemon=True, name="ldae-stdin").start()
    while True:
        req = requests.get()
        if req is None:
            break
        worker.handle(req)
        if requests.empty():
            worker.end_of_queue()
    return 0


if __name__ == "__main__":
    sys.exit(main())
