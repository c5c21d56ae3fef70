"""The work behind ``ldae``'s volume commands, shared by the single-file commands and ``ldae batch``.

Part 1 holds what every command needs (model and pipeline from the options, reading an input into
model space, provenance, writing an output back on the input's grid) and one function per
operation (reconstruct, edit, interpolate, vary, embed) that computes and writes its outputs
all-or-nothing. ``cli.py`` calls these for ``ldae reconstruct|edit|interpolate|vary|embed``.

Part 2 is ``ldae batch JOBS.csv OUTPUT_DIR``: a CSV of (scan, operation) rows run by one process
or by K processes under torchrun (each takes rows rank, rank+K, …), resumable, with a per-row
report. See docs/batch.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

EXIT_ERROR, EXIT_CANCELLED, EXIT_STOPPED = 1, 130, 3

# =============================================================================== part 1: shared


def version() -> str:
    try:
        from importlib.metadata import version as _v

        return _v("ldae-slicer")
    except Exception:
        return "dev"


class Bar:
    """tqdm bar fed by the pipeline's progress(done, total, stage) callback."""

    def __init__(self, quiet: bool, desc: str) -> None:
        self.quiet, self.desc, self.bar = quiet, desc, None

    def __call__(self, done: int, total: int, stage: str) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if self.bar is None or self.bar.total != total:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.desc, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(stage, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load_model_for(args):
    """The model named by ``--model``, else the installed demo model, else random weights (with a warning)."""
    from .model import small_config
    from .resources import default_model_path
    from .weights import load_model, random_model

    if args.model:
        return load_model(args.model, verify=not args.no_verify)
    path = default_model_path()
    if path is not None:
        return load_model(path, verify=not args.no_verify)
    print(
        "ldae: WARNING: no trained model is installed and --model was not given: using a small model with RANDOM "
        "weights. Its outputs are noise, useful only to check the installation. Download the authors' weights and "
        "pass --model DIR.",
        file=sys.stderr,
    )
    return random_model(small_config(), seed=0)


def decode_dtype_name(args) -> str:
    """The decoder's precision that ``pipeline_for`` uses for these arguments ("auto" resolved)."""
    from .runtime import resolve_precision

    return str(resolve_precision(str(args.device), args.dtype, getattr(args, "decode_dtype", "auto"))[1]).replace("torch.", "")


def pipeline_for(args, model):
    from .runtime import make_pipeline, tune_allocator

    pipe = make_pipeline(model, str(args.device), args.dtype, getattr(args, "decode_dtype", "auto"), threads=args.threads,
                         cache_dir=getattr(args, "cache_dir", None), weight_storage=getattr(args, "weight_storage", "auto"))
    tune_allocator()  # after the weights are in place (make_pipeline's docstring)
    args.weight_storage_used = pipe.weight_storage  # "auto" resolved, for the provenance
    return pipe


def prepare(args, path, space_cfg):
    """Read a NIfTI and map it into model space → (Volume, model-space array, context for ``back``).

    Raw scans (the default) go through stage A (cached by content), then stage B; ``--registered``
    inputs through stage B only; ``--model-space`` inputs are used as stored."""
    from .io import read_volume
    from .space import model_space_identity, to_model_space

    vol = read_volume(path)
    if args.model_space or args.registered:
        fn = model_space_identity if args.model_space else to_model_space
        x, ctx = fn(vol.data, vol.affine, space_cfg)
        return vol, x, ctx
    from .registration import StageACache, StageASettings, to_model_space_native

    bar = Bar(args.quiet, f"stage A {Path(path).name}")
    try:
        x, ctx = to_model_space_native(vol.data, vol.affine, space_cfg, StageASettings(threads=args.threads), cache=StageACache(), progress=bar)
    finally:
        bar.close()
    return vol, x, ctx


def input_space(args) -> str:
    if args.model_space:
        return "model space (used as stored)"
    if args.registered:
        return "registered to MNI (stage B only)"
    return "raw scan: stage A (N4, brain extraction, registration to MNI; LDAELib.registration), then stage B"


def provenance(args, model, operation: str, inputs: list, **extra) -> dict:
    from .io import now_iso, sha256_of

    ident = model.identity
    prov = {
        "generator": f"LDAE for 3D Slicer {version()}",
        "note": "synthetic image generated by a model from the input scan(s); not an acquired scan",
        "operation": operation,
        "model": {"name": ident.get("name"), "id": ident.get("id"), "format": ident.get("format"), "files": ident.get("files", {})},
        "steps": args.steps,
        "seed": args.seed,
        "latent": "sampled" if args.sample_latent else "mean",
        "model_space_input": bool(args.model_space),
        "input_space": input_space(args),
        "device": str(args.device),
        "dtype": args.dtype,
        "decode_dtype": decode_dtype_name(args),
        "weight_storage": getattr(args, "weight_storage_used", args.dtype),
        "inputs": [{"path": str(Path(p).resolve()), "sha256": sha256_of(p)} for p in inputs],
        "created": now_iso(),
    }
    note = model.limitations.get(operation)
    if note:
        prov["model_limitation"] = note
    prov.update(extra)
    return prov


def back(out_tensor, ctx):
    from .space import SpaceContext, from_model_space

    x = out_tensor.detach().float().cpu().numpy()[0, 0]
    if isinstance(ctx, SpaceContext):
        return from_model_space(x, ctx)
    from .registration import from_model_space_native  # raw inputs: through the scan's registration

    return from_model_space_native(x, ctx)


def model_space_path(path) -> Path:
    """``out.nii.gz`` → ``out_model_space.nii.gz`` (written with --model-space-output)."""
    from .io import sidecar_path

    base = sidecar_path(path)  # out.nii.gz → out.json
    return base.with_name(base.stem + "_model_space.nii.gz")


def volume_files(args, path) -> list[Path]:
    """Every file ``add_output`` writes for the output volume ``path`` (volumes and their sidecars)."""
    from .io import sidecar_path

    files = [Path(path), sidecar_path(path)]
    if args.model_space_output:
        files += [model_space_path(path), sidecar_path(model_space_path(path))]
    return files


def add_output(args, outs, path, out_tensor, ctx, like, prov) -> None:
    """The output on the input's grid, and with --model-space-output also in model space."""
    outs.add_volume(path, back(out_tensor, ctx), like, prov)
    if args.model_space_output:
        from .io import Volume

        x = out_tensor.detach().float().cpu().numpy()[0, 0]
        model_affine = getattr(ctx, "space", ctx).model_affine
        outs.add_volume(model_space_path(path), x, Volume(x, model_affine), {**prov, "space": "model space (MNI coordinates), intensities in [0, 1]"})


def latent_seed(args) -> int | None:
    """None = the deterministic μ; with --sample-latent, the seed of ε (default 0)."""
    if not args.sample_latent:
        return None
    return 0 if args.seed is None else args.seed


def direction(model, spec: str):
    from .errors import LDAEError

    if spec in model.directions:
        return model.directions[spec]
    p = Path(spec)
    if p.suffix == ".safetensors" or p.exists():
        from .directions_io import load_direction

        return load_direction(p)
    names = ", ".join(sorted(model.directions)) or "none"
    raise LDAEError(f"unknown direction '{spec}'; this model has: {names} (or give a probe file .safetensors)")


def check_fractions(fractions) -> None:
    from .errors import LDAEError

    if any(not (-0.5 <= f <= 1.5) for f in fractions):
        raise LDAEError("--at fractions should lie between 0 and 1 (mild extrapolation down to −0.5 and up to 1.5 is allowed)")


def interpolation_files(output_dir, fractions) -> list[Path]:
    return [Path(output_dir) / f"interp_t{f:.3f}.nii.gz" for f in fractions]


def variation_files(output_dir, n: int) -> list[Path]:
    return [Path(output_dir) / f"variation_{i:02d}.nii.gz" for i in range(n)]


def vary_seed(args) -> int:
    return 0 if args.seed is None else args.seed


# ---------------------------------------------------------------------- operations
# Each computes with ``pipe`` and writes its outputs together (an error leaves none); ``extra`` is
# added to every provenance record (``ldae batch`` records its job there).


def run_reconstruct_or_edit(args, model, pipe, operation: str, input, output, *, direction_spec=None, alpha=None, progress=None, extra=None) -> list[Path]:
    from .io import OutputSet

    d = direction(model, direction_spec) if operation == "edit" else None
    vol, x, ctx = prepare(args, input, model.config.space)
    if operation == "reconstruct":
        out = pipe.reconstruct(x, args.steps, latent_seed=latent_seed(args), progress=progress)
        info = {"description": f"LDAE reconstruction T={args.steps}"}
    else:
        out = pipe.edit(x, d, [alpha], args.steps, latent_seed=latent_seed(args), progress=progress)
        info = {"description": f"LDAE {d.name} alpha={alpha:+g} T={args.steps}", "direction": d.name,
                "direction_meaning": d.describe(), "alpha": alpha}
    with OutputSet() as outs:
        add_output(args, outs, output, out, ctx, vol, provenance(args, model, operation, [input], **info, **(extra or {})))
    return volume_files(args, output)


def run_interpolate(args, model, pipe, input_a, input_b, output_dir, fractions, *, progress=None, extra=None) -> list[Path]:
    from .io import OutputSet

    check_fractions(fractions)
    va, xa, ctx_a = prepare(args, input_a, model.config.space)
    vb, xb, _ = prepare(args, input_b, model.config.space)
    out = pipe.interpolate(xa, xb, fractions, args.steps, latent_seed=latent_seed(args), progress=progress)
    paths = interpolation_files(output_dir, fractions)
    with OutputSet() as outs:
        for i, (f, path) in enumerate(zip(fractions, paths)):
            add_output(args, outs, path, out[i : i + 1], ctx_a, va, provenance(
                args, model, "interpolate", [input_a, input_b], fraction=f,
                description=f"LDAE interpolation t={f:.2f} T={args.steps}", **(extra or {})))
    return [f for p in paths for f in volume_files(args, p)]


def run_vary(args, model, pipe, input, output_dir, n: int, *, progress=None, extra=None) -> list[Path]:
    from .io import OutputSet

    seed = vary_seed(args)
    vol, x, ctx = prepare(args, input, model.config.space)
    out = pipe.vary(x, n, seed=seed, steps=args.steps, progress=progress)
    paths = variation_files(output_dir, n)
    with OutputSet() as outs:
        for i, path in enumerate(paths):
            add_output(args, outs, path, out[i : i + 1], ctx, vol, provenance(
                args, model, "vary", [input], index=i, seed=seed,
                description=f"LDAE variation {i} seed={seed} T={args.steps}", **(extra or {})))
    return [f for p in paths for f in volume_files(args, p)]


def embed_codes(args, model, pipe, inputs):
    """y_sem of each input → N×E float32 array."""
    import numpy as np

    rows = []
    for path in inputs:
        _, x, _ = prepare(args, path, model.config.space)
        rows.append(pipe.embed(x)[0].float().cpu().numpy())
    return np.stack(rows)


def add_embeddings(outs, path, inputs, codes) -> None:
    """``.npy`` (N×E float32) or CSV (path + one column per dimension) into an OutputSet."""
    import numpy as np

    path = Path(path)
    if path.suffix == ".npy":
        def write_npy(tmp):
            with open(tmp, "wb") as f:
                np.save(f, codes.astype(np.float32))
        outs.add_file(path, write_npy)
    else:
        def write(tmp):
            with open(tmp, "w") as f:
                f.write("path," + ",".join(f"e{i}" for i in range(codes.shape[1])) + "\n")
                for p, row in zip(inputs, codes):
                    f.write(str(Path(p).resolve()) + "," + ",".join(f"{v:.7g}" for v in row) + "\n")
        outs.add_file(path, write)


def write_embeddings(path, inputs, codes) -> None:
    from .io import OutputSet

    with OutputSet() as outs:
        add_embeddings(outs, path, inputs, codes)


def embedding_sidecar(path) -> Path:
    """``codes.csv`` → ``codes.json`` (the provenance ``ldae batch`` writes beside an embedding)."""
    return Path(path).with_suffix(".json")


def run_embed_one(args, model, pipe, input, output, *, extra=None) -> list[Path]:
    """One scan's y_sem to ``output`` (.csv or .npy) with a JSON provenance sidecar (``ldae batch``)."""
    from .io import OutputSet

    codes = embed_codes(args, model, pipe, [input])
    with OutputSet() as outs:
        add_embeddings(outs, output, [input], codes)
        outs.add_json(embedding_sidecar(output), provenance(args, model, "embed", [input], description="LDAE semantic code y_sem",
                                                             dimensions=int(codes.shape[1]), **(extra or {})))
    return [Path(output), embedding_sidecar(output)]


# =============================================================================== part 2: batch

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
STOP_ENV = "LDAE_BATCH_STOP_AFTER"
"""Test hook: a process that has computed this many rows stops at once, as if killed (exit code 3, no report)."""


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
    """The input's name without .nii/.nii.gz, keeping its folders when it lies under ``base``."""
    try:
        rel = path.relative_to(base)
    except ValueError:
        rel = Path(path.name)
    if ".." in rel.parts:
        rel = Path(path.name)
    name = rel.name
    for ext in (".nii.gz", ".nii", ".mgz", ".gz"):
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


def _parse_row(job: Job, base: Path, out_dir: Path, defaults: argparse.Namespace) -> None:
    """Fill ``job`` from its raw cells; a problem becomes ``job.error``."""
    from .errors import LDAEError

    cell = {k: (v or "").strip() for k, v in job.raw.items() if k in COLUMNS}

    def number(name, kind):
        try:
            return kind(cell[name])
        except ValueError:
            raise LDAEError(f"{name} '{cell[name]}' is not {'an integer' if kind is int else 'a number'}") from None

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
        job.seed = number("seed", int) if cell.get("seed") else defaults.seed
        job.steps = number("steps", int) if cell.get("steps") else defaults.steps
        if job.steps < 1:
            raise LDAEError("steps must be at least 1")
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
            check_fractions(job.at)
        elif op == "vary":
            job.n = number("n", int) if cell.get("n") else 4
            if job.n < 1:
                raise LDAEError("n must be at least 1")
        rel = cell.get("output") or _default_output(job, base)
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts:
            raise LDAEError(f"output '{rel}' must be a relative path inside OUTPUT_DIR")
        if op in ("reconstruct", "edit") and not rel.endswith((".nii.gz", ".nii")):
            raise LDAEError(f"output '{rel}' must end with .nii.gz or .nii")
        if op == "embed" and p.suffix not in (".csv", ".npy"):
            raise LDAEError(f"output '{rel}' of embed must end with .csv or .npy")
        job.output_rel, job.output = rel, out_dir / p
    except LDAEError as err:
        job.error = str(err)


def read_jobs(csv_path, out_dir, defaults: argparse.Namespace) -> list[Job]:
    """Parse the jobs CSV. Whole-file problems raise LDAEError; a bad row only marks that row."""
    from .errors import LDAEError

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


def _args_for(args: argparse.Namespace, job: Job) -> argparse.Namespace:
    """The command options as they apply to one row (its own seed and steps)."""
    a = argparse.Namespace(**vars(args))
    a.seed, a.steps = job.seed, job.steps
    return a


def expected_files(args, job: Job) -> list[Path]:
    """Every file the row writes: volumes (or the embedding) and their JSON sidecars."""
    if job.operation in ("reconstruct", "edit"):
        return volume_files(args, job.output)
    if job.operation == "interpolate":
        return [f for p in interpolation_files(job.output, job.at) for f in volume_files(args, p)]
    if job.operation == "vary":
        return [f for p in variation_files(job.output, job.n) for f in volume_files(args, p)]
    return [job.output, embedding_sidecar(job.output)]


def _check_collisions(args, jobs: list[Job]) -> None:
    from .errors import LDAEError

    owner: dict[Path, int] = {}
    clashes = []
    for job in jobs:
        if job.error:
            continue
        for f in expected_files(args, job):
            if f in owner and owner[f] != job.row:
                clashes.append(f"rows {owner[f]} and {job.row} both write {f.name}")
                break
            owner[f] = job.row
    if clashes:
        raise LDAEError("; ".join(clashes[:3]) + (f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else "")
                        + ": give those rows distinct 'output' cells")


def fingerprint(args, model, job: Job) -> str:
    """What determines a row's outputs: its cells, the run options that change numbers, the model and
    the inputs' content. Outputs whose sidecars carry another fingerprint are recomputed."""
    from .io import sha256_of

    spec = {
        "operation": job.operation, "output": job.output_rel,
        "inputs": [[str(p.resolve()), sha256_of(p)] for p in job.inputs],
        "direction": job.direction, "alpha": job.alpha, "at": job.at if job.operation == "interpolate" else None,
        "n": job.n if job.operation == "vary" else None, "seed": job.seed, "steps": job.steps,
        "model": model.identity.get("id"), "dtype": args.dtype, "sample_latent": bool(args.sample_latent),
        "model_space": bool(args.model_space), "registered": bool(args.registered),
        "model_space_output": bool(args.model_space_output),
    }
    if job.direction and Path(job.direction).is_file():
        spec["direction_sha256"] = sha256_of(job.direction)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def is_complete(args, job: Job, fp: str) -> bool:
    """True when every output of the row exists and every sidecar records this job's fingerprint."""
    for f in expected_files(args, job):
        if not f.is_file():
            return False
        if f.suffix == ".json":
            try:
                if json.loads(f.read_text()).get("batch", {}).get("job") != fp:
                    return False
            except (OSError, ValueError, AttributeError):
                return False
    return True


def _run_job(args, model, pipe, job: Job, fp: str, jobs_csv: Path, progress) -> None:
    a = _args_for(args, job)
    extra = {"batch": {"job": fp, "row": job.row, "jobs_csv": str(jobs_csv.resolve())}}
    if job.operation in ("reconstruct", "edit"):
        run_reconstruct_or_edit(a, model, pipe, job.operation, job.input, job.output, direction_spec=job.direction, alpha=job.alpha,
                                progress=progress, extra=extra)
    elif job.operation == "interpolate":
        run_interpolate(a, model, pipe, job.input, job.input_b, job.output, job.at, progress=progress, extra=extra)
    elif job.operation == "vary":
        run_vary(a, model, pipe, job.input, job.output, job.n, progress=progress, extra=extra)
    else:
        run_embed_one(a, model, pipe, job.input, job.output, extra=extra)


def shard(jobs: list[Job], rank: int, world_size: int) -> list[Job]:
    """Rows rank, rank+K, …, ordered so that rows of the same input run one after the other
    (the pipeline's encoding cache then serves the second operation on a scan)."""
    mine = [j for j in jobs if j.index % world_size == rank]
    first: dict[str, int] = {}
    for pos, j in enumerate(mine):
        first.setdefault(str(j.input), pos)
    return sorted(mine, key=lambda j: (first[str(j.input)], j.index))


class _Stopped(Exception):
    pass


def _join_group(args):
    """Under torchrun (WORLD_SIZE > 1): a gloo group, only to gather the rows' results at the end.

    Gloo whatever the device (only small Python objects travel), and a long timeout: shards may
    finish hours apart. Without torchrun nothing touches torch.distributed."""
    import datetime

    from .training.distributed import DistContext, resolve_device, setup

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext(device=resolve_device(args.device, 0)), False
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        hours = float(os.environ.get("LDAE_BATCH_TIMEOUT_HOURS", "168"))
        dist.init_process_group(backend="gloo", timeout=datetime.timedelta(hours=hours))
        created = True
    return setup(args.device), created


def _gather(ctx, results: list[dict]) -> list[dict]:
    if not ctx.distributed:
        return results
    import torch.distributed as dist

    boxes: list = [None] * ctx.world_size
    dist.all_gather_object(boxes, results)
    return [r for box in boxes for r in box]


def _write_report(out_dir: Path, rows: list[dict], summary: dict) -> tuple[Path, Path]:
    from .io import OutputSet

    csv_path, json_path = out_dir / "batch_report.csv", out_dir / "batch_report.json"

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(REPORT_FIELDS), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    with OutputSet() as outs:
        outs.add_file(csv_path, write_csv)
        outs.add_json(json_path, {"summary": summary, "rows": rows})
    return csv_path, json_path


def run_batch(args) -> int:
    """``ldae batch``: every row of the jobs CSV this process owns; rank 0 writes the report."""
    import platform
    import statistics

    import torch

    from .errors import LDAEError
    from .io import ensure_folder

    t_start = time.time()
    if args.steps < 1:
        raise LDAEError("--steps must be at least 1")
    out_dir = ensure_folder(args.output_dir).resolve()
    jobs_csv = Path(args.jobs)
    jobs = read_jobs(jobs_csv, out_dir, args)
    _check_collisions(args, jobs)
    stop_after = int(os.environ.get(STOP_ENV, "0") or 0)

    ctx, created = _join_group(args)
    rank, world = ctx.rank, ctx.world_size
    tag = f"ldae batch rank {rank}/{world}" if world > 1 else "ldae batch"
    try:
        args = argparse.Namespace(**vars(args))
        args.device = str(ctx.device)
        t_model = time.time()
        model = load_model_for(args)
        pipe = pipeline_for(args, model)
        load_s = time.time() - t_model

        mine = shard(jobs, rank, world)
        results, computed = [], 0
        bar = None
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=len(mine), desc=tag, unit="row", file=sys.stderr, dynamic_ncols=True,
                       position=ctx.local_rank if world > 1 else None)

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
                fp = fingerprint(args, model, job)
                if is_complete(args, job, fp):
                    rec["status"] = "skipped"
                else:
                    if bar is not None:
                        bar.set_postfix_str(f"row {job.row} {job.operation}", refresh=True)

                    def progress(done, total, stage, _row=job.row, _op=job.operation):
                        if bar is not None:
                            bar.set_postfix_str(f"row {_row} {_op}: {stage} {done}/{total}", refresh=False)

                    _run_job(args, model, pipe, job, fp, jobs_csv, progress)
                    rec["status"] = "done"
                    computed += 1
            except LDAEError as err:
                rec["status"], rec["error"] = "failed", str(err)
            except MemoryError:
                rec["status"], rec["error"] = "failed", "out of memory"
            except (KeyboardInterrupt, _Stopped):
                raise
            except Exception as err:  # a row must not stop the others; say what it was
                rec["status"], rec["error"] = "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            if rec["status"] == "failed":
                say(f"ldae batch: row {job.row} (line {job.line}) failed: {rec['error']}")
            results.append(rec)
            if bar is not None:
                bar.update(1)
            if stop_after and computed >= stop_after:
                raise _Stopped()
        if bar is not None:
            bar.close()
        rows_s = time.time() - t_rows

        mine_summary = {"rank": rank, "rows": len(mine), "computed": computed, "seconds_rows": round(rows_s, 3),
                        "seconds_model_load": round(load_s, 3), "host": platform.node()}
        gathered = _gather(ctx, [dict(r, _proc=mine_summary) for r in results] or [{"_proc": mine_summary, "row": None}])
        # Only rank 0 exits non-zero for failed rows: torchrun then names it, and the others do
        # not end (and make torchrun stop rank 0) before the report is written.
        code = EXIT_ERROR if ctx.is_main and any(r.get("status") == "failed" for r in gathered) else 0
        if ctx.is_main:
            procs = {r["_proc"]["rank"]: r["_proc"] for r in gathered}
            rows = sorted((({k: v for k, v in r.items() if k != "_proc"}) for r in gathered if r.get("row") is not None), key=lambda r: r["row"])
            wall = time.time() - t_start
            counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
            done_s = [r["seconds"] for r in rows if r["status"] == "done"]
            summary = {
                "jobs": str(jobs_csv.resolve()), "output_dir": str(out_dir), "rows": len(rows), **counts,
                "processes": world, "wall_seconds": round(wall, 3),
                "scans_per_hour": round(counts["done"] * 3600 / wall, 1) if counts["done"] else None,
                "median_seconds_per_row": round(statistics.median(done_s), 3) if done_s else None,
                "model": {"name": model.name, "id": model.identity.get("id")},
                "steps": args.steps, "device": args.device if world == 1 else f"{args.device} ({world} processes)",
                "dtype": args.dtype, "threads_per_process": torch.get_num_threads(),
                "per_process": [procs[k] for k in sorted(procs)],
                "machine": _machine(args.device), "finished": _now(),
            }
            csv_path, _ = _write_report(out_dir, rows, summary)
            fails = [r for r in rows if r["status"] == "failed"]
            rate = f"{summary['scans_per_hour']:.1f} scans/hour" if summary["scans_per_hour"] else "nothing computed"
            line = (f"ldae batch: {len(rows)} rows with {world} process{'es' if world > 1 else ''} in {wall:.1f} s: "
                    f"{counts['done']} done, {counts['skipped']} skipped (already complete), {counts['failed']} failed; {rate}; report {csv_path}")
            if fails:
                line += f" (first failure: row {fails[0]['row']}: {fails[0]['error']})"
            print(line, flush=True)
        ctx.barrier()  # everyone leaves together, once the report exists
        return code
    except KeyboardInterrupt:
        print("ldae batch: cancelled; the rows finished so far are kept: run the same command again to finish", file=sys.stderr)
        return EXIT_CANCELLED
    except _Stopped:
        print(f"{tag}: stopped after {stop_after} computed rows ({STOP_ENV}); run again to finish", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        if created:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _machine(device: str) -> str:
    """E.g. 'AMD EPYC 7B13, 2 CPUs (x86_64)' or the GPU's name: for the throughput's context."""
    import platform

    if str(device).startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(torch.device(device))}, {os.cpu_count()} CPUs"
    from .runtime import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} CPUs ({platform.machine()})"


def _now() -> str:
    from .io import now_iso

    return now_iso()
