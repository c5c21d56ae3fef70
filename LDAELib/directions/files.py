"""Direction files: a probe as safetensors (weight, mean, std + JSON metadata), and probe fitting from CSVs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import LDAEError
from ..weights.common import torch_load_safe
from .probe import Direction, fit_linear_probe


def save_direction(d: Direction, path: str | Path) -> None:
    meta = {"name": d.name, "bias": str(d.bias), "positive": d.positive, "negative": d.negative, "alpha_unit": d.alpha_unit,
            "meta": json.dumps(d.meta), "scale": str(d.scale), "edit_sign": str(d.edit_sign)}
    save_file({"weight": d.weight.contiguous(), "mean": d.mean.contiguous(), "std": d.std.contiguous()}, str(path), metadata=meta)


def load_direction(path: str | Path) -> Direction:
    """A direction file (.safetensors with weight/mean/std), or the authors' probe layout: a Linear
    state dict (.ckpt/.pt) with ``semantic_mean.pt`` and ``semantic_std.pt`` beside it."""
    path = Path(path)
    if not path.is_file():
        raise LDAEError(f"direction file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as err:
            raise LDAEError(f"{path} is not a readable direction file ({err})") from None
        if not {"weight", "mean", "std"} <= set(t):
            raise LDAEError(f"{path} must hold tensors 'weight', 'mean' and 'std'")
        return Direction(meta.get("name", path.stem), t["weight"], t["mean"], t["std"], float(meta.get("bias", 0)),
                         meta.get("positive", ""), meta.get("negative", ""), meta.get("alpha_unit", ""), json.loads(meta.get("meta", "{}")),
                         float(meta.get("scale", 1.0)), int(meta.get("edit_sign", 1)))
    sd = torch_load_safe(path)
    mean_p, std_p = path.with_name("semantic_mean.pt"), path.with_name("semantic_std.pt")
    if not (isinstance(sd, dict) and "weight" in sd and mean_p.exists() and std_p.exists()):
        raise LDAEError(f"{path}: expected a Linear(E,1) state dict with semantic_mean.pt and semantic_std.pt beside it, or a .safetensors direction file")
    bias = float(sd["bias"].reshape(-1)[0]) if "bias" in sd else 0.0
    return Direction(path.stem, sd["weight"], torch_load_safe(mean_p), torch_load_safe(std_p), bias)


def _read_csv(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LDAEError(f"CSV file not found: {path}")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fit_probe_from_csv(embeddings_csv, labels_csv, target: str, name: str, kind: str, output) -> Direction:
    """Join 'ldae embed' output with a labels CSV on ``path`` and fit a probe → direction file."""
    emb = _read_csv(embeddings_csv)
    labels = _read_csv(labels_csv)
    if not labels or "path" not in labels[0] or target not in labels[0]:
        raise LDAEError(f"{labels_csv} needs the columns 'path' and '{target}'")
    by_path = {str(Path(r["path"]).resolve()): r[target] for r in labels}
    codes, ys = [], []
    for r in emb:
        key = str(Path(r["path"]).resolve())
        if key in by_path and by_path[key] not in ("", None):
            try:
                ys.append(float(by_path[key]))
            except ValueError:
                raise LDAEError(f"{labels_csv}: the {target!r} label of {r['path']} is {by_path[key]!r}, not a number; "
                                "use 0/1 for a binary probe or numbers for a continuous one") from None
            try:
                codes.append([float(r[k]) for k in r if k != "path"])
            except (TypeError, ValueError):
                raise LDAEError(f"{embeddings_csv} is not a table of codes as 'ldae embed' writes it (a non-numeric value in the row of {r['path']})") from None
    if len(codes) < 3:
        raise LDAEError(f"only {len(codes)} scans have both an embedding and a '{target}' label; a probe needs at least 3")
    d = fit_linear_probe(torch.tensor(np.array(codes)), torch.tensor(ys), name, kind)
    save_direction(d, output)
    return d
