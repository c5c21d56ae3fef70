"""Reading and writing model weights: the authors' files and our bundles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import LDAEError
from ..model import LDAEConfig, LDAEModel


def identify(model: LDAEModel, *, verified: bool = True) -> LDAEModel:
    """Give a loaded model its identity: ``hash``, the SHA-256 over its configuration and its weight
    files' own SHA-256 (for random weights: the configuration and the seed), ``id`` (its first 16
    hex digits, shown to users) and ``verified`` (whether the files were checked against their
    recorded hashes). ``LDAEModel.fingerprint`` returns the same hash."""
    files = model.identity.get("files")
    payload = {"config": model.config.to_dict()}
    payload.update({"files": files} if files else {"random": model.identity.get("seed")})
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    model.identity.update(hash=digest, id=digest[:16], verified=bool(verified))
    return model


def load_model(path: str | Path, *, verify: bool = True) -> LDAEModel:
    """Load a model from a bundle folder or from a folder of the authors' files."""
    from .bundle import is_bundle, load_bundle
    from .official import load_official

    p = Path(path)
    if p.is_file():
        raise LDAEError(f"--model takes the folder that holds the weight files, not a file: try --model {p.parent}")
    if not p.exists():
        raise LDAEError(f"model folder not found: {p}")
    bundle = is_bundle(p)
    model = load_bundle(p, verify=verify) if bundle else load_official(p)
    return identify(model, verified=verify or not bundle)


def random_model(config: LDAEConfig | None = None, seed: int = 0) -> LDAEModel:
    """A model with random weights (for tests and timing; it produces noise, not brains)."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = LDAEModel(config or LDAEConfig(), identity={"name": f"random weights (seed {seed})", "format": "random", "seed": seed})
    return identify(model)
