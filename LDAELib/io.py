"""Volumes on disk: reading NIfTI with clear errors, and writing outputs all-or-nothing with provenance.

Arrays here are in nibabel's I,J,K order with their 4×4 affine (RAS+ world, mm).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import LDAEError
from .space import validate_volume


@dataclass
class Volume:
    """A 3-D image with its geometry. data: float32 (I,J,K); affine: 4×4 voxel → world (mm)."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None


def read_volume(path: str | Path) -> Volume:
    """Read a 3-D NIfTI (a 4-D file with one volume is accepted). Raises LDAEError on anything else."""
    path = Path(path)
    if not path.exists():
        raise LDAEError(f"input not found: {path}")
    if path.is_dir():
        raise LDAEError(f"{path} is a folder; give a NIfTI file (.nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for unreadable files
        raise LDAEError(f"{path} is not an image nibabel can read ({str(err).splitlines()[0][:160]}); give a NIfTI file (.nii or .nii.gz)") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise LDAEError(f"{path} is a 4-D series of {data.shape[3]} volumes; LDAE works on one 3-D scan at a time (split the series first)")
    if data.ndim == 2 or (data.ndim == 3 and min(data.shape) == 1):
        raise LDAEError(f"{path} is a 2-D image ({'×'.join(map(str, data.shape))}); LDAE needs a 3-D brain volume")
    data = np.asarray(data, dtype=np.float32)
    validate_volume(data, name=path.name)
    header = img.header.copy() if isinstance(img.header, nib.Nifti1Header) else None
    return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), header=header, path=path)


def sha256_of(path: str | Path) -> str:
    from .weights.common import sha256_file

    return sha256_file(Path(path))


def check_writable(path: str | Path) -> Path:
    """Fail before any computation if the file ``path`` cannot be written (its folder is created if missing)."""
    path = Path(path)
    ensure_folder(path.parent)
    return path


def ensure_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written into it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LDAEError(f"cannot create the output folder {folder}: {err.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise LDAEError(f"cannot write into {folder}: permission denied; choose another output location")
    return folder


def _nifti(data: np.ndarray, like: Volume, description: str) -> nib.Nifti1Image:
    header = like.header.copy() if like.header is not None else nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), like.affine, header=header)
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    if like.header is not None:  # keep the source's qform/sform codes (scanner, aligned, MNI…)
        img.set_qform(like.affine, int(like.header["qform_code"]) or 1)
        img.set_sform(like.affine, int(like.header["sform_code"]) or 1)
    return img


class OutputSet:
    """Collects outputs in temporary files and publishes them together on ``commit``.

    Used as a context manager: if the block raises (an error, a cancel, Ctrl-C), every temporary
    file is removed and no output appears.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def _tmp_for(self, final: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        os.close(fd)
        return Path(name)

    def add_volume(self, path: str | Path, data: np.ndarray, like: Volume, provenance: dict) -> None:
        final = check_writable(path)
        tmp = self._tmp_for(final)
        self._pending.append((tmp, final))
        # nibabel picks compression from the file name, so save under a name with the real suffix
        suffix = ".nii.gz" if final.name.endswith(".gz") else ".nii"
        tmp_named = tmp.with_name(tmp.name + suffix)
        self._pending[-1] = (tmp_named, final)
        tmp.unlink()
        nib.save(_nifti(data, like, provenance.get("description", "LDAE output")), str(tmp_named))
        self.add_json(sidecar_path(final), provenance)

    def add_json(self, path: str | Path, payload: dict) -> None:
        final = check_writable(path)
        tmp = self._tmp_for(final)
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        self._pending.append((tmp, final))

    def add_file(self, path: str | Path, writer) -> None:
        """``writer(tmp_path)`` writes the content; it is published with the rest."""
        final = check_writable(path)
        tmp = self._tmp_for(final)
        writer(tmp)
        self._pending.append((tmp, final))

    def commit(self) -> list[Path]:
        out = []
        for tmp, final in self._pending:
            os.replace(tmp, final)
            out.append(final)
        self._pending.clear()
        return out

    def discard(self) -> None:
        for tmp, _ in self._pending:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        self._pending.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.commit()


def sidecar_path(path: str | Path) -> Path:
    """``out.nii.gz`` → ``out.json``."""
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".gz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return p.with_name(name + ".json")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a hidden temporary file beside ``path`` and rename it into place, so a
    reader never sees a half-written file and a failure leaves the old one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
