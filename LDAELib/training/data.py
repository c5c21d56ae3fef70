"""Training data: a cohort table, its subject-level split, and the volumes in model space (cached).

The cohort is a folder with ``cohort.csv`` (as ``ldae cohort`` writes it: one row per visit with
``subject``, ``visit``, ``months``, ``age``, ``group``, ``path`` relative to the folder, …) or that
CSV itself. Volumes are MNI-registered T1 NIfTI files (stage A done); they go through stage B
(``space.to_model_space``) once and are kept as float32 arrays A×B×S (nibabel I,J,K order) in
memory and, optionally, as ``.npy`` files in the work folder, keyed by path, size and mtime.

The split is by subject: all visits of a subject fall in one of train / val / test, so held-out
subjects are never seen in training. It depends only on the subjects, their stratum (group) and
the seed, not on the order of the rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import LDAEError
from ..inference.image import read_image
from ..inference.outputs import write_text_atomic
from ..nets.semantic_encoder import slice_stack
from ..space import ModelSpaceConfig

SPLITS = ("train", "val", "test")


@dataclass
class CohortRow:
    """One visit: ``path`` is absolute; ``fields`` holds every CSV column as text."""

    subject: str
    path: Path
    fields: dict = field(default_factory=dict)

    def get(self, column: str, default=None):
        return self.fields.get(column, default)

    def number(self, column: str) -> float:
        try:
            return float(self.fields[column])
        except (KeyError, ValueError):
            raise LDAEError(f"{self.path.name}: column {column!r} is missing or not a number in the cohort table") from None


def cohort_csv(cohort: str | Path) -> Path:
    p = Path(cohort)
    if p.is_dir():
        p = p / "cohort.csv"
    if not p.is_file():
        raise LDAEError(f"no cohort table at {p}; give the folder written by 'ldae cohort' (it holds cohort.csv) or a CSV with subject,path columns")
    return p


def read_cohort(cohort: str | Path) -> list[CohortRow]:
    """Rows of a cohort table; paths are resolved against the table's folder."""
    path = cohort_csv(cohort)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in ("subject", "path") if c not in cols]
        if missing:
            raise LDAEError(f"{path} lacks the column(s) {', '.join(missing)}; a cohort table needs at least subject and path")
        rows = []
        for r in reader:
            p = Path(r["path"])
            rows.append(CohortRow(subject=str(r["subject"]), path=p if p.is_absolute() else (path.parent / p), fields=dict(r)))
    if not rows:
        raise LDAEError(f"{path} has no rows")
    return rows


def split_subjects(rows: list[CohortRow], seed: int, val_fraction: float, test_fraction: float, stratify: str = "group") -> dict[str, list[str]]:
    """Subjects → train / val / test, reproducible from the seed, stratified by ``stratify``.

    Within each stratum the sorted subjects are permuted by a generator seeded with (seed, crc32 of
    the stratum); round(n × fraction) go to test, then val, the rest to train (at least one).
    """
    strata: dict[str, set[str]] = {}
    for r in rows:
        key = str(r.get(stratify, "")) if stratify else ""
        strata.setdefault(key, set()).add(r.subject)
    owner: dict[str, str] = {}
    for key, subs in strata.items():
        for s in subs:
            if s in owner and owner[s] != key:
                raise LDAEError(f"subject {s} has rows in two {stratify!r} groups ({owner[s]!r}, {key!r}); the split needs one group per subject")
            owner[s] = key
    out: dict[str, list[str]] = {k: [] for k in SPLITS}
    for key in sorted(strata):
        subs = sorted(strata[key])
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode())])
        perm = [subs[i] for i in rng.permutation(len(subs))]
        n = len(perm)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        while n - n_test - n_val < 1 and (n_test or n_val):
            if n_val >= n_test and n_val:
                n_val -= 1
            else:
                n_test -= 1
        out["test"] += perm[:n_test]
        out["val"] += perm[n_test:n_test + n_val]
        out["train"] += perm[n_test + n_val:]
    return {k: sorted(v) for k, v in out.items()}


def write_or_check_split(path: Path, split: dict[str, list[str]], rows: list[CohortRow], settings: dict) -> None:
    """Write ``split.json``; if it exists, refuse a different split (the cohort or settings changed)."""
    visits = {k: sum(1 for r in rows if r.subject in set(v)) for k, v in split.items()}
    record = {"settings": settings, "subjects": split, "counts": {k: {"subjects": len(v), "visits": visits[k]} for k, v in split.items()}}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old is not None and old.get("subjects") == split:
            return
        raise LDAEError(
            f"{path} holds another subject split (the cohort or the split settings changed since this work folder was started); "
            "use a new --workdir, or the cohort and settings it was started with"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def _model_space_of(path: Path, space: ModelSpaceConfig) -> np.ndarray:
    """Stage B of one cohort volume: float32 A×B×S in [0, 1] (module-level, so a worker process can run it)."""
    from ..space import to_model_space

    vol = read_image(path)
    x, _ = to_model_space(vol.data, vol.affine, space)
    return np.ascontiguousarray(x, dtype=np.float32)


class VolumeStore:
    """Model-space volumes of cohort rows: loaded once, cached in memory and/or as .npy files.

    ``store[i]`` → float32 array of ``space.shape`` (A×B×S, values in [0, 1]).
    """

    def __init__(self, rows: list[CohortRow], space: ModelSpaceConfig, cache_dir: Path | None = None, memory: bool = True) -> None:
        self.rows, self.space, self.memory = rows, space, memory
        tag = hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        self.cache_dir = Path(cache_dir) / f"model_space_{tag}" if cache_dir is not None else None
        self._mem: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _key(self, i: int) -> str:
        p = self.rows[i].path
        try:
            st = p.stat()
        except OSError:
            raise LDAEError(f"volume not found: {p} (listed in the cohort table)") from None
        return hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]

    def _cache_file(self, i: int) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{self._key(i)}.npy"

    def _compute(self, i: int) -> np.ndarray:
        return _model_space_of(self.rows[i].path, self.space)

    def is_cached(self, i: int) -> bool:
        f = self._cache_file(i)
        return i in self._mem or (f is not None and f.is_file())

    def __getitem__(self, i: int) -> np.ndarray:
        if i in self._mem:
            return self._mem[i]
        f = self._cache_file(i)
        x = None
        if f is not None and f.is_file():
            try:
                x = np.load(f, allow_pickle=False)
                if x.shape != tuple(self.space.shape) or x.dtype != np.float32:
                    x = None
            except (OSError, ValueError):
                x = None
        if x is None:
            x = self._store(i, self._compute(i))
        elif self.memory:
            self._mem[i] = x
        return x

    def _store(self, i: int, x: np.ndarray) -> np.ndarray:
        """Keep row ``i``'s computed array: in the disk cache (atomically) and in memory."""
        f = self._cache_file(i)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{f.stem}.", suffix=".npy", dir=f.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, x, allow_pickle=False)
                os.replace(tmp, f)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        if self.memory:
            self._mem[i] = x
        return x

    def prepare(self, indices, progress: Callable[[int, int], None] | None = None, workers: int = 1) -> None:
        """Load (and cache) the given rows now, so training steps never wait for stage B.

        ``workers`` > 1 computes the rows not cached yet in that many spawned processes (stage B is
        CPU work: on a GPU machine with many cores this takes minutes off a run); the arrays are
        the same as computed here.
        """
        indices = list(indices)
        todo = [i for i in indices if not self.is_cached(i)]
        if workers > 1 and len(todo) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
                jobs = [pool.submit(_model_space_of, self.rows[i].path, self.space) for i in todo]
                for n, (i, job) in enumerate(zip(todo, jobs)):
                    self._store(i, job.result())
                    if progress is not None:
                        progress(len(indices) - len(todo) + n + 1, len(indices))
            progress = None  # the rest is read from the cache
        for n, i in enumerate(indices):
            self[i]
            if progress is not None:
                progress(n + 1, len(indices))

    def batch(self, indices, device: torch.device | str = "cpu") -> torch.Tensor:
        """B×1×A×B×S float32 tensor of the given rows."""
        return torch.from_numpy(np.stack([self[i] for i in indices]))[:, None].to(device)


semantic_input = slice_stack  # the semantic encoder's slice stack, exactly as the pipeline builds it


@dataclass
class TrainingData:
    """The cohort rows, the split (row indices per split) and the volume store."""

    rows: list[CohortRow]
    split: dict[str, list[str]]
    indices: dict[str, list[int]]
    volumes: VolumeStore

    @classmethod
    def open(cls, cohort: str | Path, data_config, space: ModelSpaceConfig, workdir: Path | None, write_split: bool = True) -> "TrainingData":
        rows = read_cohort(cohort)
        rows.sort(key=lambda r: (r.subject, visit_order(r), str(r.path)))
        dc = data_config
        split = split_subjects(rows, dc.split_seed, dc.val_fraction, dc.test_fraction, dc.stratify)
        if workdir is not None and write_split:
            settings = {"split_seed": dc.split_seed, "val_fraction": dc.val_fraction, "test_fraction": dc.test_fraction,
                        "stratify": dc.stratify, "cohort_csv": str(cohort_csv(cohort).resolve())}
            write_or_check_split(Path(workdir) / "split.json", split, rows, settings)
        where = {s: k for k, v in split.items() for s in v}
        indices = {k: [i for i, r in enumerate(rows) if where[r.subject] == k] for k in SPLITS}
        if not indices["train"]:
            raise LDAEError("the split leaves no training volumes; lower val_fraction / test_fraction or add subjects")
        cache = Path(workdir) / "cache" if (workdir is not None and dc.disk_cache) else None
        return cls(rows, split, indices, VolumeStore(rows, space, cache, dc.memory_cache))

    def describe(self) -> str:
        return ", ".join(f"{k} {len(self.split[k])} subjects / {len(self.indices[k])} visits" for k in SPLITS)


def visit_order(r: CohortRow):
    try:
        return float(r.get("visit", r.get("months", 0)) or 0)
    except ValueError:
        return 0.0
