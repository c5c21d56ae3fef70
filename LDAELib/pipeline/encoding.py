"""What one scan costs to encode (``Encoding``), and encodings kept on disk (``EncodingStore``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


@dataclass
class Encoding:
    """What one scan costs to encode. Tensors live on the pipeline's device.

    z0: 1×C×d×h×w scaled latent (the model's ``scale_latent`` of μ by default; of μ+σ·ε with a
    latent seed). y_sem: 1×E semantic code. z_T: {steps: 1×C×d×h×w inverted noise}.
    key: content hash of the input volume, the latent mode and the compute dtype.
    """

    key: str
    z0: torch.Tensor
    y_sem: torch.Tensor
    z_T: dict[int, torch.Tensor] = field(default_factory=dict)
    latent: str = "mean"


def content_key(x: torch.Tensor) -> str:
    """SHA-256 of a volume's float32 values and shape (the cache key of its encoding)."""
    a = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    h = hashlib.sha256(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


class EncodingStore:
    """Encodings on disk: one safetensors file per scan (z0, y_sem and each z_T; a few hundred kB at
    the official size), named by a hash of everything the numbers depend on (model fingerprint, scan
    content and latent mode, compute dtype, device type, weight storage, convolution backend). A file
    that does not load or does not fit is ignored and rewritten; writes are atomic. ``max_files``
    bounds the folder (oldest used first out)."""

    FORMAT = "ldae-encoding/1"

    def __init__(self, folder: str | Path, max_files: int = 2000) -> None:
        self.folder = Path(folder).expanduser()
        self.max_files = max_files
        self.hits = self.writes = 0

    def path(self, pipeline, key: str) -> Path:
        parts = (pipeline.model.fingerprint(), key, pipeline.device.type, pipeline.weight_storage,
                 *(() if pipeline.conv_backend == "torch" else (pipeline.conv_backend,)))
        return self.folder / f"{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:40]}.safetensors"

    def load(self, pipeline, key: str) -> Encoding | None:
        path = self.path(pipeline, key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != self.FORMAT or meta.get("key") != key or meta.get("model") != pipeline.model.fingerprint():
                    raise ValueError("written for another scan or model")
                z0, y = f.get_tensor("z0"), f.get_tensor("y_sem")
                z_t = {int(n[4:]): f.get_tensor(n) for n in f.keys() if n.startswith("z_T/")}
            cfg = pipeline.model.config
            if z0.ndim != 5 or z0.shape[:2] != (1, cfg.autoencoder.latent_channels) or tuple(y.shape) != (1, cfg.encoder.emb_dim) \
                    or any(v.shape != z0.shape for v in z_t.values()):
                raise ValueError("its tensors have the wrong shapes")
            if not all(torch.isfinite(v).all() for v in (z0, y, *z_t.values())):
                raise ValueError("it holds NaN or infinite values")
        except Exception as err:  # noqa: BLE001 - any unreadable file is only a cache miss
            logging.getLogger("LDAE").warning("ignoring the cached encoding %s (%s); it will be recomputed", path.name, err)
            return None
        os.utime(path)
        self.hits += 1
        dev = pipeline.device
        return Encoding(key=key, z0=z0.to(dev), y_sem=y.to(dev), z_T={k: v.to(dev) for k, v in z_t.items()}, latent=meta.get("latent", "mean"))

    def save(self, pipeline, enc: Encoding) -> None:
        path = self.path(pipeline, enc.key)
        tensors = {"z0": enc.z0, "y_sem": enc.y_sem, **{f"z_T/{k}": v for k, v in enc.z_T.items()}}
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        meta = {"format": self.FORMAT, "key": enc.key, "model": pipeline.model.fingerprint(), "model_name": pipeline.model.name,
                "latent": enc.latent, "steps": json.dumps(sorted(enc.z_T)), "dtype": str(pipeline.dtype).replace("torch.", "")}
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # derived from patients' scans: the user's only
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, path)
            self.writes += 1
            self._prune()
        except OSError as err:  # a full or read-only disk costs speed, not the result
            logging.getLogger("LDAE").warning("could not keep the encoding on disk in %s: %s", self.folder, err)

    def _prune(self) -> None:
        files = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.max_files)]:
            try:
                old.unlink()
            except OSError:
                pass
