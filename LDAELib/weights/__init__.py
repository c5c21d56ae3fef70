"""Reading and writing model weights: the authors' files and our bundles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import LDAEError
from ..model import LDAEConfig, LDAEModel


def model_id(model: LDAEModel) -> str:
    """A short, stable id of the weights: SHA-256 over the files' hashes (or the config for random models)."""
    files = model.identity.get("files")
    payload = json.dumps(files if files else {"random": model.identity.get("seed"), "config": model.config.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_model(path: str | Path, *, verify: bool = True) -> LDAEModel:
    """Load a model from a bundle folder or from a folder of the authors' files."""
    from .bundle import is_bundle, load_bundle
    from .official import load_official

    p = Path(path)
    if p.is_file():
        raise LDAEError(f"--model takes the folder that holds the weight files, not a file: try --model {p.parent}")
    if not p.exists():
        raise LDAEError(f"model folder not found: {p}")
    model = load_bundle(p, verify=verify) if is_bundle(p) else load_official(p)
    model.identity["id"] = model_id(model)
    return model


def random_model(config: LDAEConfig | None = None, seed: int = 0) -> LDAEModel:
    """A model with random weights (for tests and timing; it produces noise, not brains)."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = LDAEModel(config or LDAEConfig(), identity={"name": f"random weights (seed {seed})", "format": "random", "seed": seed})
    model.identity["id"] = model_id(model)
    return model
