"""Stage-A results on disk: one folder per scan, and the cache keyed by the scan's content.

A result folder holds:

    brain_mni.nii.gz      registered brain on the MNI grid (182×218×182, 1 mm): N4-corrected scan ×
                          brain mask, in the scan's intensity units. Stage B's input; usable as a
                          ``--registered`` input.
    brain_mask.nii.gz     brain mask (uint8) on the scan's own grid.
    mni_to_native.h5      ITK composite transform, MNI → scan points (see ``transform``).
    native_to_mni.h5      its inverse, scan → MNI points.
    bias_field.nii.gz     N4 multiplicative bias field, coarse grid over the scan.
    stage_a.json          scan grid, settings, quality figures, timings, versions, template, notice.

The cache (``$LDAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/ldae`` or ``~/.cache/ldae``, subfolder
``stage_a/``) holds such folders named by a SHA-256 of the scan's voxels (as float32), its affine,
the settings and the stage-A version, so the same scan is never registered twice, whatever its file
name or format. Folders appear atomically (written beside, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import LDAEError
from .stage_a import STAGE_A_VERSION, StageAResult, StageASettings
from .template import MNI_AFFINE, MNI_SHAPE, NOTICE_FILE, TEMPLATE_NAME
from .transform import Registration

BRAIN_FILE, MASK_FILE, RECORD_FILE = "brain_mni.nii.gz", "brain_mask.nii.gz", "stage_a.json"


def scan_key(data: np.ndarray, affine: np.ndarray, settings: StageASettings) -> str:
    """SHA-256 (hex) of what determines stage A's result for a scan."""
    h = hashlib.sha256()
    h.update(f"ldae-stage-a-{STAGE_A_VERSION}".encode())
    arr = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    h.update(repr(arr.shape).encode())
    h.update(arr.tobytes())
    h.update(np.ascontiguousarray(np.asarray(affine, dtype=np.float64)).tobytes())
    h.update(json.dumps(settings.cache_dict(), sort_keys=True).encode())
    return h.hexdigest()


def write_result(folder: str | Path, result: StageAResult, extra: dict | None = None) -> list[Path]:
    """Write ``result`` into ``folder`` (created if missing); returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reg = result.registration
    written = reg.write_files(folder)
    brain = nib.Nifti1Image(np.asarray(result.brain_mni, dtype=np.float32), MNI_AFFINE)
    brain.set_qform(MNI_AFFINE, 4)  # 4 = MNI152 aligned
    brain.set_sform(MNI_AFFINE, 4)
    brain.header["descrip"] = b"LDAE stage A: N4, brain, registered to MNI"
    nib.save(brain, str(folder / BRAIN_FILE))
    mask = nib.Nifti1Image(np.asarray(result.brain_mask, dtype=np.uint8), reg.native_affine)
    mask.set_qform(reg.native_affine, 1)
    mask.set_sform(reg.native_affine, 1)
    nib.save(mask, str(folder / MASK_FILE))
    record = {
        "stage_a_version": STAGE_A_VERSION,
        "native_shape": list(reg.native_shape),
        "native_affine": reg.native_affine.tolist(),
        "mni_shape": list(MNI_SHAPE),
        "mni_affine": MNI_AFFINE.tolist(),
        "quality": result.quality,
        "seconds": result.seconds,
        "template": TEMPLATE_NAME,
        "template_notice": NOTICE_FILE.name,
        "transforms": {
            "mni_to_native.h5": "ITK composite (affine, displacement field), LPS mm: maps MNI points to scan points; "
                                "resamples the scan into MNI; in 3D Slicer, apply it to the scan to see it in MNI",
            "native_to_mni.h5": "the inverse, maps scan points to MNI points; resamples MNI-space results onto the scan's "
                                "grid; in 3D Slicer, apply it to an MNI-space result to overlay it on the scan",
        },
        **(extra or {}),
    }
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    return [*written, folder / BRAIN_FILE, folder / MASK_FILE, folder / RECORD_FILE]


def read_result(folder: str | Path) -> StageAResult:
    """Read a folder written by :func:`write_result` (``LDAEError`` if incomplete or unreadable)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
        brain = np.asarray(nib.load(str(folder / BRAIN_FILE)).dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(str(folder / MASK_FILE)).dataobj, dtype=np.uint8)
        reg = Registration.read_files(folder, record["native_shape"], record["native_affine"], record.get("quality"))
    except (OSError, ValueError, KeyError) as err:
        raise LDAEError(f"The stage-A results in {folder} are incomplete or unreadable ({err}); run the preprocessing again.") from None
    return StageAResult(brain, mask, reg, dict(record.get("quality", {})), dict(record.get("seconds", {})))


def default_cache_dir() -> Path:
    env = os.environ.get("LDAE_CACHE_DIR")
    if env:
        return Path(env) / "stage_a"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ldae" / "stage_a"


class StageACache:
    """Stage-A results by scan key, in ``folder`` (default :func:`default_cache_dir`)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.folder / key[:32]

    def get(self, key: str) -> StageAResult | None:
        p = self.path(key)
        if not (p / RECORD_FILE).is_file():
            return None
        try:
            if json.loads((p / RECORD_FILE).read_text()).get("key") != key:
                return None
            return read_result(p)
        except (LDAEError, ValueError, OSError):
            return None  # a damaged entry is recomputed (and replaced)

    def put(self, key: str, result: StageAResult) -> Path | None:
        """Store ``result``; returns its folder, or None when the cache cannot be written (the
        computation still succeeds, it is just not kept)."""
        final = self.path(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.folder))
            write_result(tmp, result, {"key": key})
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            return final
        except OSError:
            shutil.rmtree(locals().get("tmp", self.folder / ".missing"), ignore_errors=True)
            return None
