"""``ldae batch JOBS.csv OUTPUT_DIR``: every row, by one process or by K processes under torchrun.

Each process takes rows rank, rank+K, … (rows of one scan together, so the pipeline's encoding
cache serves the second operation on it), skips rows whose outputs already carry their fingerprint
(resume), publishes each row's outputs all or nothing, and reports a failed row without stopping
the others. Rank 0 gathers every row's result and writes ``batch_report.csv`` / ``.json``.
Under torchrun the processes join a gloo group only to gather those small results. See docs/batch.md.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..accel.host import cpu_name
from ..errors import EXIT_CANCELLED, EXIT_ERROR, Cancelled, LDAEError
from ..inference.files import add_embeddings, add_volumes, embedding_sidecar
from ..inference.loading import open_model, open_pipeline, resolve_device
from ..inference.operations import Inference
from ..inference.outputs import OutputSet, check_output, remove_stale_temporaries
from ..inference.provenance import now_iso
from ..inference.settings import RunSettings
from .jobs import REPORT_FIELDS, Job, check_collisions, expected_files, fingerprint, is_complete, output_paths, read_jobs, row_settings, shard


@dataclass
class Group:
    """Where this process stands among the batch's processes (one, without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @classmethod
    def join(cls) -> "Group":
        """Under torchrun (WORLD_SIZE > 1): a gloo group, only to gather the rows' results at the end.
        Gloo whatever the device (only small Python objects travel), and a long timeout: shards may
        finish hours apart (LDAE_BATCH_TIMEOUT_HOURS, default a week)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        created = False
        if not dist.is_initialized():
            hours = float(os.environ.get("LDAE_BATCH_TIMEOUT_HOURS", "168"))
            dist.init_process_group(backend="gloo", timeout=datetime.timedelta(hours=hours))
            created = True
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), created)

    def device(self, device: str) -> str:
        """This process's device: "auto"/"cuda" take the GPU of its local rank."""
        d = resolve_device(device)
        return f"cuda:{self.local_rank}" if d == "cuda" and self.world_size > 1 else d

    def gather(self, results: list[dict]) -> list[dict]:
        if self.world_size <= 1:
            return results
        boxes: list = [None] * self.world_size
        dist.all_gather_object(boxes, results)
        return [r for box in boxes for r in box]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def leave(self) -> None:
        if self.created and dist.is_initialized():
            dist.destroy_process_group()


def run_row(inf: Inference, job: Job, extra: dict, progress=None) -> list[Path]:
    """Compute one row and publish its outputs together (its inputs are never written over)."""
    s = inf.settings
    files = expected_files(s, job)
    with OutputSet(job.inputs) as outs:
        for f in files:
            check_output(f, outs.sources, volume=f.suffix != ".json" and job.operation != "embed")
        if job.operation == "embed":
            codes, records = inf.embed([job.input], progress=progress)
            add_embeddings(outs, job.output, [job.input], codes)
            outs.add_json(embedding_sidecar(job.output), {**records[0], **extra})
            return files
        if job.operation == "reconstruct":
            outputs = inf.reconstruct(job.input, progress=progress)
        elif job.operation == "edit":
            outputs = inf.edit(job.input, job.direction, [job.alpha], progress=progress)
        elif job.operation == "interpolate":
            outputs = inf.interpolate(job.input, job.input_b, job.at, progress=progress)
        else:
            outputs = inf.vary(job.input, job.n, progress=progress)
        model_affine = inf.source(job.input).prepared.model_affine
        add_volumes(outs, outputs, output_paths(job), model_space_output=s.model_space_output, model_affine=model_affine, extra=extra)
    return files


def run_batch(jobs_csv: str | Path, output_dir: str | Path, settings: RunSettings, model_path: str | None, *, quiet: bool = False) -> int:
    """``ldae batch``: every row of the jobs CSV this process owns; rank 0 writes the report."""
    t_start = time.time()
    out_dir = Path(output_dir)
    check_output(out_dir / "batch_report.csv", volume=False)
    jobs_csv = Path(jobs_csv)
    jobs = read_jobs(jobs_csv, out_dir.resolve(), settings)
    check_collisions(settings, jobs)
    group = Group.join()
    rank, world = group.rank, group.world_size
    tag = f"ldae batch rank {rank}/{world}" if world > 1 else "ldae batch"
    bar = None
    try:
        settings = settings.replace(device=group.device(settings.device))
        if rank == 0 and out_dir.is_dir():
            remove_stale_temporaries(out_dir)  # what a killed run left
        group.barrier()
        t_model = time.time()
        model = open_model(model_path, settings, warn=lambda m: print(f"ldae: WARNING: {m}", file=sys.stderr))
        pipe = open_pipeline(model, settings)
        base = Inference(model, pipe, settings)
        load_s = time.time() - t_model

        mine = shard(jobs, rank, world)
        results, computed = [], 0
        if not quiet:
            from tqdm import tqdm

            bar = tqdm(total=len(mine), desc=tag, unit="row", file=sys.stderr, dynamic_ncols=True, position=group.local_rank if world > 1 else None)

        def say(msg: str) -> None:
            (bar.write if bar is not None else lambda m: print(m, file=sys.stderr))(msg)

        if rank == 0:  # once, for the operations of every row (not only this rank's share)
            for op in sorted({j.operation for j in jobs if j.operation}):
                if model.limitations.get(op):
                    say(f"warning: {model.name}: {model.limitations[op]}")

        t_rows = time.time()
        for job in mine:
            rec = {"row": job.row, "line": job.line, "operation": job.operation or job.raw.get("operation", ""),
                   "input": (job.raw.get("input") or "").strip(), "output": job.output_rel, "rank": rank, "error": ""}
            t0 = time.perf_counter()
            try:
                if job.error:
                    raise LDAEError(job.error)
                missing = [p for p in job.inputs if not p.is_file()]
                if missing:
                    raise LDAEError(f"input not found: {missing[0]}")
                rs = row_settings(settings, job)
                fp = fingerprint(rs, model, job)
                if is_complete(rs, job, fp):
                    rec["status"] = "skipped"
                else:
                    if bar is not None:
                        bar.set_postfix_str(f"row {job.row} {job.operation}", refresh=True)

                    def progress(done, total, stage, _row=job.row, _op=job.operation):
                        if bar is not None:
                            bar.set_postfix_str(f"row {_row} {_op}: {stage} {done}/{total}", refresh=False)

                    extra = {"batch": {"job": fp, "row": job.row, "jobs_csv": str(jobs_csv.resolve())}}
                    run_row(base.using(rs), job, extra, progress)
                    rec["status"] = "done"
                    computed += 1
            except LDAEError as err:
                rec["status"], rec["error"] = "failed", str(err)
            except MemoryError:
                rec["status"], rec["error"] = "failed", "out of memory"
            except (KeyboardInterrupt, Cancelled):
                raise
            except Exception as err:  # a row must not stop the others; say what it was
                rec["status"], rec["error"] = "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            if rec["status"] == "failed":
                say(f"ldae batch: row {job.row} (line {job.line}) failed: {rec['error']}")
            results.append(rec)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        rows_s = time.time() - t_rows

        mine_summary = {"rank": rank, "rows": len(mine), "computed": computed, "seconds_rows": round(rows_s, 3),
                        "seconds_model_load": round(load_s, 3), "host": platform.node()}
        gathered = group.gather([dict(r, _proc=mine_summary) for r in results] or [{"_proc": mine_summary, "row": None}])
        # Only rank 0 exits non-zero for failed rows: torchrun then names it, and the others do
        # not end (and make torchrun stop rank 0) before the report is written.
        code = EXIT_ERROR if rank == 0 and any(r.get("status") == "failed" for r in gathered) else 0
        if rank == 0:
            _report(jobs_csv, out_dir, gathered, model, settings, world, time.time() - t_start)
        group.barrier()  # everyone leaves together, once the report exists
        return code
    except (KeyboardInterrupt, Cancelled):
        if bar is not None:
            bar.close()
        print("ldae batch: cancelled; the rows finished so far are kept: run the same command again to finish", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        group.leave()


def _report(jobs_csv: Path, out_dir: Path, gathered: list[dict], model, settings: RunSettings, world: int, wall: float) -> None:
    import csv

    procs = {r["_proc"]["rank"]: r["_proc"] for r in gathered}
    rows = sorted(({k: v for k, v in r.items() if k != "_proc"} for r in gathered if r.get("row") is not None), key=lambda r: r["row"])
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    done_s = [r["seconds"] for r in rows if r["status"] == "done"]
    device = settings.device
    summary = {
        "jobs": str(jobs_csv.resolve()), "output_dir": str(out_dir.resolve()), "rows": len(rows), **counts,
        "processes": world, "wall_seconds": round(wall, 3),
        "scans_per_hour": round(counts["done"] * 3600 / wall, 1) if counts["done"] else None,
        "median_seconds_per_row": round(statistics.median(done_s), 3) if done_s else None,
        "model": {"name": model.name, "id": model.identity.get("id")},
        "steps": settings.steps, "device": device if world == 1 else f"{device} ({world} processes)",
        "dtype": settings.dtype, "decode_dtype": settings.decode_dtype, "threads_per_process": torch.get_num_threads(),
        "per_process": [procs[k] for k in sorted(procs)],
        "machine": _machine(device), "finished": now_iso(),
    }
    csv_path, json_path = out_dir / "batch_report.csv", out_dir / "batch_report.json"

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(REPORT_FIELDS), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    with OutputSet() as outs:
        outs.add_file(csv_path, write_csv)
        outs.add_json(json_path, {"summary": summary, "rows": rows})
    fails = [r for r in rows if r["status"] == "failed"]
    rate = f"{summary['scans_per_hour']:.1f} scans/hour" if summary["scans_per_hour"] else "nothing computed"
    line = (f"ldae batch: {len(rows)} rows with {world} process{'es' if world > 1 else ''} in {wall:.1f} s: "
            f"{counts['done']} done, {counts['skipped']} skipped (already complete), {counts['failed']} failed; {rate}; report {csv_path}")
    if fails:
        line += f" (first failure: row {fails[0]['row']}: {fails[0]['error']})"
    print(line, flush=True)


def _machine(device: str) -> str:
    """E.g. 'AMD EPYC (AVX2), 2 CPUs (x86_64)' or the GPU's name: the throughput's context."""
    if str(device).startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, {os.cpu_count()} CPUs"
    return f"{cpu_name()}, {os.cpu_count()} CPUs ({platform.machine()})"
