"""The jobs file of ``ldae batch``: one CSV row per (scan, operation), parsed and checked.

A bad row becomes ``Job.error`` (reported, the others still run); a problem with the whole file
raises LDAEError. ``expected_files`` names every file a row writes, ``fingerprint`` what decides
its numbers (a row whose outputs carry its fingerprint is complete and skipped on resume).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LDAEError
from ..inference.files import embedding_sidecar, interpolation_files, variation_files, volume_files
from ..inference.image import READ_SUFFIXES, WRITE_SUFFIXES
from ..inference.provenance import sha256_of
from ..inference.settings import MAX_SEED, MAX_STEPS, RunSettings

OPERATIONS = ("reconstruct", "edit", "interpolate", "vary", "embed")
COLUMNS = ("input", "operation", "output", "direction", "alpha", "input_b", "at", "n", "seed", "steps")
_USES = {  # the optional columns each operation reads (seed and steps: every operation)
    "reconstruct": set(),
    "edit": {"direction", "alpha"},
    "interpolate": {"input_b", "at"},
    "vary": {"n"},
    "embed": set(),
}
REPORT_FIELDS = ("row", "line", "operation", "input", "output", "status", "seconds", "rank", "error")


@dataclass
class Job:
    """One CSV row, parsed. ``error`` is set (and nothing else is trusted) when the row is malformed."""

    index: int  # 0-based among the data rows; sharding is over this
    line: int  # line in the CSV file, for messages
    raw: dict
    operation: str = ""
    input: Path | None = None
    input_b: Path | None = None
    output: Path | None = None  # absolute, under OUTPUT_DIR (a file, or a folder for interpolate/vary)
    output_rel: str = ""
    direction: str | None = None
    alpha: float | None = None
    at: list[float] = field(default_factory=list)
    n: int = 4
    seed: int | None = None
    steps: int | None = None
    error: str | None = None

    @property
    def row(self) -> int:
        return self.index + 1

    @property
    def inputs(self) -> list[Path]:
        return [p for p in (self.input, self.input_b) if p is not None]


def _stem(path: Path, base: Path) -> Path:
    """The input's name without its image extension, keeping its folders when it lies under ``base``."""
    try:
        rel = path.relative_to(base)
    except ValueError:
        rel = Path(path.name)
    if ".." in rel.parts:
        rel = Path(path.name)
    name = rel.name
    for ext in sorted(READ_SUFFIXES + (".mgz", ".gz"), key=len, reverse=True):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return rel.with_name(name)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "x"


def _default_output(job: Job, base: Path) -> str:
    stem = _stem(job.input, base)
    if job.operation == "reconstruct":
        return str(stem) + "_reconstruct.nii.gz"
    if job.operation == "edit":
        d = job.direction if not job.direction.endswith(".safetensors") else Path(job.direction).stem
        return f"{stem}_edit_{_safe(d)}_{job.alpha:+g}.nii.gz"
    if job.operation == "interpolate":
        return f"{stem}_to_{_stem(job.input_b, base).name}_interpolate"
    if job.operation == "vary":
        return f"{stem}_vary_seed{0 if job.seed is None else job.seed}"
    return str(stem) + "_embed.csv"


def _parse_row(job: Job, base: Path, out_dir: Path, defaults: RunSettings) -> None:
    """Fill ``job`` from its raw cells; a problem becomes ``job.error``."""
    cell = {k: (v or "").strip() for k, v in job.raw.items() if k in COLUMNS}

    def number(name, kind, lo=None, hi=None):
        try:
            v = kind(cell[name])
        except ValueError:
            raise LDAEError(f"{name} '{cell[name]}' is not {'a whole number' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(v):
            raise LDAEError(f"{name} '{cell[name]}' is not a finite number")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise LDAEError(f"{name} {v} must lie between {lo} and {hi}")
        return v

    try:
        op = cell.get("operation", "").lower()
        if op not in OPERATIONS:
            raise LDAEError(f"unknown operation '{cell.get('operation', '')}'; use one of {', '.join(OPERATIONS)}")
        job.operation = op
        unused = [c for c in ("direction", "alpha", "input_b", "at", "n") if cell.get(c) and c not in _USES[op]]
        if unused:
            raise LDAEError(f"{', '.join(unused)} given but {op} does not use {'it' if len(unused) == 1 else 'them'}")
        if not cell.get("input"):
            raise LDAEError("the input cell is empty")
        job.input = base / cell["input"]
        job.seed = number("seed", int, 0, MAX_SEED) if cell.get("seed") else defaults.seed
        job.steps = number("steps", int, 1, MAX_STEPS) if cell.get("steps") else defaults.steps
        if op == "edit":
            if not cell.get("direction") or not cell.get("alpha"):
                raise LDAEError("edit needs a direction and an alpha")
            job.direction = cell["direction"]
            if job.direction.endswith(".safetensors") and not Path(job.direction).is_absolute():
                job.direction = str(base / job.direction)
            job.alpha = number("alpha", float)
        elif op == "interpolate":
            if not cell.get("input_b") or not cell.get("at"):
                raise LDAEError("interpolate needs input_b and at (fractions, e.g. '0.25 0.5 0.75')")
            job.input_b = base / cell["input_b"]
            try:
                job.at = [float(f) for f in cell["at"].replace(",", " ").replace(";", " ").split()]
            except ValueError:
                raise LDAEError(f"at '{cell['at']}' must be numbers separated by spaces, e.g. '0.25 0.5 0.75'") from None
            if not job.at or any(not (-0.5 <= f <= 1.5) for f in job.at):  # also refuses nan and inf
                raise LDAEError("at: fractions should lie between 0 and 1 (mild extrapolation down to −0.5 and up to 1.5 is allowed)")
        elif op == "vary":
            job.n = number("n", int, 1, 64) if cell.get("n") else 4
        rel = cell.get("output") or _default_output(job, base)
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts:
            raise LDAEError(f"output '{rel}' must be a relative path inside OUTPUT_DIR")
        if op in ("reconstruct", "edit") and not rel.lower().endswith(WRITE_SUFFIXES):
            raise LDAEError(f"output '{rel}' must end with {', '.join(WRITE_SUFFIXES)}")
        if op == "embed" and p.suffix not in (".csv", ".npy"):
            raise LDAEError(f"output '{rel}' of embed must end with .csv or .npy")
        job.output_rel, job.output = rel, out_dir / p
    except LDAEError as err:
        job.error = str(err)


def read_jobs(csv_path, out_dir, defaults: RunSettings) -> list[Job]:
    """Parse the jobs CSV. Whole-file problems raise LDAEError; a bad row only marks that row."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise LDAEError(f"jobs file not found: {csv_path}")
    base = csv_path.resolve().parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            records = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise LDAEError(f"{csv_path} is not a readable CSV file ({err})") from None
    missing = [c for c in ("input", "operation") if c not in header]
    if missing:
        raise LDAEError(f"{csv_path} has no column {' and '.join(missing)}; the header needs at least: input,operation "
                        f"(optional: {', '.join(c for c in COLUMNS if c not in ('input', 'operation'))})")
    extra = [h for h in header if h not in COLUMNS]
    if extra and os.environ.get("RANK", "0") == "0":
        print(f"ldae batch: ignoring columns not used by batch: {', '.join(extra)}", file=sys.stderr)
    jobs = []
    for line, raw in records:
        if not any((v or "").strip() for k, v in raw.items() if k is not None and isinstance(v, str)):
            continue  # blank line
        job = Job(index=len(jobs), line=line, raw=raw)
        _parse_row(job, base, Path(out_dir).resolve(), defaults)
        jobs.append(job)
    if not jobs:
        raise LDAEError(f"{csv_path} has no rows")
    return jobs


def row_settings(settings: RunSettings, job: Job) -> RunSettings:
    """The run settings as they apply to one row (its own seed and steps)."""
    return settings.replace(seed=job.seed, steps=job.steps)


def output_paths(job: Job) -> list[Path]:
    """The row's volumes (or its embedding), without sidecars."""
    if job.operation in ("reconstruct", "edit", "embed"):
        return [job.output]
    if job.operation == "interpolate":
        return interpolation_files(job.output, job.at)
    return variation_files(job.output, job.n)


def expected_files(settings: RunSettings, job: Job) -> list[Path]:
    """Every file the row writes: volumes (or the embedding) and their JSON sidecars."""
    if job.operation == "embed":
        return [job.output, embedding_sidecar(job.output)]
    return [f for p in output_paths(job) for f in volume_files(p, settings.model_space_output)]


def check_collisions(settings: RunSettings, jobs: list[Job]) -> None:
    """Refuse two rows that would write one file (before anything runs)."""
    owner: dict[Path, int] = {}
    clashes = []
    for job in jobs:
        if job.error:
            continue
        for f in expected_files(settings, job):
            if f in owner and owner[f] != job.row:
                clashes.append(f"rows {owner[f]} and {job.row} both write {f.name}")
                break
            owner[f] = job.row
    if clashes:
        raise LDAEError("; ".join(clashes[:3]) + (f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else "")
                        + ": give those rows distinct 'output' cells")


def fingerprint(settings: RunSettings, model, job: Job) -> str:
    """What determines a row's outputs: its cells, the run options that change numbers, the model and
    the inputs' content. Outputs whose sidecars carry another fingerprint are recomputed."""
    spec = {
        "operation": job.operation, "output": job.output_rel,
        "inputs": [[str(p.resolve()), sha256_of(p)] for p in job.inputs],
        "direction": job.direction, "alpha": job.alpha, "at": job.at if job.operation == "interpolate" else None,
        "n": job.n if job.operation == "vary" else None, "seed": job.seed, "steps": job.steps,
        "model": model.identity.get("id"), "dtype": settings.dtype, "decode_dtype": settings.decode_dtype,
        "sample_latent": settings.sample_latent, "input_space": settings.input_space,
        "model_space_output": settings.model_space_output,
    }
    if job.direction and Path(job.direction).is_file():
        spec["direction_sha256"] = sha256_of(job.direction)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def is_complete(settings: RunSettings, job: Job, fp: str) -> bool:
    """True when every output of the row exists and every sidecar records this job's fingerprint."""
    for f in expected_files(settings, job):
        if not f.is_file():
            return False
        if f.suffix == ".json":
            try:
                if json.loads(f.read_text()).get("batch", {}).get("job") != fp:
                    return False
            except (OSError, ValueError, AttributeError):
                return False
    return True


def shard(jobs: list[Job], rank: int, world_size: int) -> list[Job]:
    """Rows rank, rank+K, …, ordered so that rows of the same input run one after the other
    (the pipeline's encoding cache then serves the second operation on a scan)."""
    mine = [j for j in jobs if j.index % world_size == rank]
    first: dict[str, int] = {}
    for pos, j in enumerate(mine):
        first.setdefault(str(j.input), pos)
    return sorted(mine, key=lambda j: (first[str(j.input)], j.index))

