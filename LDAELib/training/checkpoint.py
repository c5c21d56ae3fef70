"""Training checkpoints in our own format: safetensors weights, a tensors-only optimizer file, JSON state.

    <stage>/checkpoints/step-00001200/
        weights.safetensors   every tensor group flattened as "<group>.<key>" (model, ema, …)
        optimizer.pt          optimizer.state_dict(): tensors, numbers, lists, dicts only; read
                              with torch.load(weights_only=True), so no code is ever unpickled
        state.json            step, stage settings, RNG-free resume data, SHA-256 of the two files
    <stage>/final.json        which checkpoint ends the stage (written when the stage completes)

A checkpoint is written into a hidden temporary folder, its files flushed to disk, then the folder
is renamed into place: an interrupted write never replaces or damages a good checkpoint, and the
newest ``step-*`` folder is always complete. No RNG state is stored: every random draw of step s is
derived from (seed, step, item), so resuming at step s draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import LDAEError
from ..weights.common import sha256_file, torch_load_safe

FORMAT, VERSION = "ldae-training-checkpoint", 1
WEIGHTS, OPTIMIZER, STATE, FINAL = "weights.safetensors", "optimizer.pt", "state.json", "final.json"


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict
    groups: dict[str, dict[str, torch.Tensor]]
    optimizer: dict | None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_dir(stage_dir: Path) -> Path:
    return Path(stage_dir) / "checkpoints"


def clean_temporaries(stage_dir: Path) -> None:
    """Remove half-written checkpoints left by an interrupted run."""
    d = checkpoint_dir(stage_dir)
    if d.is_dir():
        for tmp in d.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def list_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints (step, folder), oldest first."""
    d = checkpoint_dir(stage_dir)
    out = []
    if d.is_dir():
        for p in d.iterdir():
            if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file():
                try:
                    out.append((int(p.name[5:]), p))
                except ValueError:
                    continue
    return sorted(out)


def latest_checkpoint(stage_dir: Path) -> Path | None:
    found = list_checkpoints(stage_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    stage_dir: Path,
    step: int,
    groups: dict[str, dict[str, torch.Tensor]],
    optimizer_state: dict | None,
    state: dict,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of ``step`` (number of optimizer steps done) and prune older ones.

    ``groups`` maps a name (``model``, ``ema``…) to a state dict; ``state`` is JSON-able.
    """
    d = checkpoint_dir(stage_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step-{step:08d}"
    if (final / STATE).is_file():
        return final  # already written (the same step gives the same content)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=d))
    try:
        flat = {}
        for g, sd in groups.items():
            for k, v in sd.items():
                flat[f"{g}.{k}"] = v.detach().to("cpu").contiguous().clone()
        save_file(flat, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        files = [WEIGHTS]
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER)
            files.append(OPTIMIZER)
        for f in files:
            _fsync_file(tmp / f)
        record = dict(state)
        record.update({"format": FORMAT, "version": VERSION, "step": int(step), "groups": sorted(groups),
                       "files": {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files}})
        write_json_atomic(tmp / STATE, record)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(stage_dir, keep)
    return final


def prune(stage_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` step checkpoints and the one named in final.json."""
    protected = set()
    fin = read_final(stage_dir)
    if fin:
        protected.add(fin.get("checkpoint"))
    found = list_checkpoints(stage_dir)
    for _, p in found[: max(0, len(found) - max(1, keep))]:
        if p.name not in protected:
            shutil.rmtree(p, ignore_errors=True)


def read_final(stage_dir: Path) -> dict | None:
    p = Path(stage_dir) / FINAL
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except ValueError:
        return None
    if not (checkpoint_dir(stage_dir) / str(d.get("checkpoint")) / STATE).is_file():
        return None
    return d


def mark_final(stage_dir: Path, checkpoint: Path, info: dict) -> None:
    write_json_atomic(Path(stage_dir) / FINAL, {"checkpoint": checkpoint.name, **info})


def final_checkpoint(stage_dir: Path) -> Path | None:
    fin = read_final(stage_dir)
    return checkpoint_dir(stage_dir) / fin["checkpoint"] if fin else None


def load_checkpoint(path: Path, with_optimizer: bool = True, verify: bool = True) -> Checkpoint:
    """Read a checkpoint folder; hashes are checked first and the optimizer file never unpickles code."""
    path = Path(path)
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, ValueError) as err:
        raise LDAEError(f"{path / STATE} is missing or damaged ({err}); delete {path} to resume from the previous checkpoint") from None
    if state.get("format") != FORMAT:
        raise LDAEError(f"{path} is not an LDAE training checkpoint")
    if int(state.get("version", 0)) > VERSION:
        raise LDAEError(f"{path} was written by a newer LDAE (checkpoint v{state.get('version')}); update LDAE")
    files = state.get("files", {})
    if verify:
        for f, entry in files.items():
            p = path / f
            if not p.is_file() or p.stat().st_size != entry.get("bytes") or sha256_file(p) != entry.get("sha256"):
                raise LDAEError(f"{p} is missing, truncated or modified (its SHA-256 differs from state.json); delete {path} to resume from the previous checkpoint")
    try:
        flat = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise LDAEError(f"{path / WEIGHTS} could not be read ({err}); delete {path} to resume from the previous checkpoint") from None
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        g, _, rest = k.partition(".")
        groups.setdefault(g, {})[rest] = v
    optimizer = None
    if with_optimizer and OPTIMIZER in files:
        optimizer = torch_load_safe(path / OPTIMIZER)
        if not isinstance(optimizer, dict):
            raise LDAEError(f"{path / OPTIMIZER} does not hold an optimizer state")
    return Checkpoint(path=path, step=int(state["step"]), state=state, groups=groups, optimizer=optimizer)
