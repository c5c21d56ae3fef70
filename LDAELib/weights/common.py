"""Safe reading of weight files, hashing, and strict loading with errors that name the file and tensor."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import LDAEError


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_load_safe(path: Path):
    """``torch.load`` with ``weights_only=True`` on the CPU (files saved on Apple ``mps`` load too).

    Never unpickles code: a file that needs arbitrary Python objects is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise LDAEError(f"weight file not found: {path}")
    if path.stat().st_size == 0:
        raise LDAEError(f"{path} is empty; download it again")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save writes a zip archive; older files, a pickle
        raise LDAEError(f"{path.name} is not a PyTorch weight file (neither the zip archive torch.save writes nor a pickle); "
                        "check that the right file was given, or download it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise LDAEError(
            f"{path.name} holds Python objects other than tensors and is refused (LDAE never unpickles "
            f"code). Use the authors' weight files as distributed, or convert them with 'ldae convert'. ({str(err).splitlines()[0][:200]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise LDAEError(
            f"{path.name} could not be read: the file is truncated or corrupt ({str(err).splitlines()[0][:200]}). Download it again."
        ) from None


def as_float32(state_dict: dict) -> dict[str, torch.Tensor]:
    """Floating tensors to float32 (e.g. float16 files); other dtypes unchanged."""
    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            continue
        out[k] = v.float() if v.is_floating_point() else v
    return out


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Strict ``load_state_dict`` whose failure is an ``LDAEError`` naming the file and tensors."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape, e.g. {'; '.join(wrong[:3])}")
    if problems:
        raise LDAEError(
            f"{source} does not match the {what}: {'; '.join(problems)}. The file is incomplete, belongs to "
            f"another model, or its settings differ (give them in ldae_config.json beside the files)."
        )
    for k, v in state_dict.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise LDAEError(f"{source}: tensor {k} contains NaN or infinite values; the file is corrupt")
    module.load_state_dict(state_dict, strict=True)
