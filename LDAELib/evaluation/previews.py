"""PNG previews of volumes: three orthogonal slices of a source, a result and their difference.

No plotting library is needed: the images are composed with numpy and written as 8-bit PNG with
``zlib``, with the aspect ratio of the voxel spacing kept by nearest-neighbour resampling to a square pixel size.
Volumes are shown in RAS orientation with the subject's right on the image's left (radiological,
as Slicer's slice views show them), superior or anterior at the top.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["orthogonal_slices", "comparison_image", "strip_image", "write_png", "write_comparison_png", "write_strip_png"]


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an (H, W) gray or (H, W, 3) RGB uint8 array as a PNG file."""
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8:
        raise ValueError("write_png takes uint8 images")
    if img.ndim == 2:
        color_type = 0
    elif img.ndim == 3 and img.shape[2] == 3:
        color_type = 2
    else:
        raise ValueError(f"write_png takes (H, W) or (H, W, 3) images, got {img.shape}")
    h, w = img.shape[:2]
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path = Path(path)
    path.write_bytes(png)
    return path


def _ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Data reordered and flipped so that its axes run towards R, A, S; and the voxel sizes."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(np.asarray(data), ornt)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return out, zooms[ornt[:, 0].astype(int)]


def _resample_2d(img: np.ndarray, spacing: tuple[float, float], pixel_mm: float) -> np.ndarray:
    rows = max(1, int(round(img.shape[0] * spacing[0] / pixel_mm)))
    cols = max(1, int(round(img.shape[1] * spacing[1] / pixel_mm)))
    ri = np.minimum((np.arange(rows) + 0.5) * img.shape[0] / rows, img.shape[0] - 1).astype(int)
    ci = np.minimum((np.arange(cols) + 0.5) * img.shape[1] / cols, img.shape[1] - 1).astype(int)
    return img[np.ix_(ri, ci)]


def orthogonal_slices(data: np.ndarray, affine: np.ndarray, center: tuple[int, int, int] | None = None,
                      pixel_mm: float = 1.0) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices (float arrays, superior/anterior up) through ``center``
    (voxel indices of the RAS-reordered volume; default: the centre of the non-zero region)."""
    vol, zooms = _ras(np.asarray(data, dtype=np.float32), affine)
    if center is None:
        nz = np.argwhere(np.abs(vol) > 0)
        center = tuple(((nz.min(0) + nz.max(0)) // 2).tolist()) if len(nz) else tuple(s // 2 for s in vol.shape)
    i, j, k = center
    # RAS: index 0 is the subject's left, posterior, inferior. Rows are flipped so that anterior
    # (axial) and superior (coronal, sagittal) are at the top; axial and coronal columns are flipped
    # so that the subject's right is on the image's left, as Slicer shows them.
    axial = vol[:, :, k].T[::-1, ::-1]
    coronal = vol[:, j, :].T[::-1, ::-1]
    sagittal = vol[i, :, :].T[::-1]   # columns: posterior → anterior
    sp = {"axial": (zooms[1], zooms[0]), "coronal": (zooms[2], zooms[0]), "sagittal": (zooms[2], zooms[1])}
    return [_resample_2d(axial, sp["axial"], pixel_mm), _resample_2d(coronal, sp["coronal"], pixel_mm),
            _resample_2d(sagittal, sp["sagittal"], pixel_mm)]


def _gray(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat((g * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def _diverging(img: np.ndarray, limit: float) -> np.ndarray:
    """Blue (negative) – white (0) – red (positive)."""
    t = np.clip(img / max(limit, 1e-12), -1, 1)
    r = np.where(t < 0, 1 + t, 1.0)
    g = 1 - np.abs(t)
    b = np.where(t > 0, 1 - t, 1.0)
    return (np.stack([r, g, b], axis=-1) * 255 + 0.5).astype(np.uint8)


def _grid(tiles: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Rows of RGB tiles, padded to a common cell size, on a black background."""
    h = max(t.shape[0] for row in tiles for t in row)
    w = max(t.shape[1] for row in tiles for t in row)
    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    out = np.zeros((n_rows * h + (n_rows - 1) * gap, n_cols * w + (n_cols - 1) * gap, 3), np.uint8)
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            y, x = r * (h + gap) + (h - t.shape[0]) // 2, c * (w + gap) + (w - t.shape[1]) // 2
            out[y:y + t.shape[0], x:x + t.shape[1]] = t
    return out


def _window(volumes: list[np.ndarray]) -> tuple[float, float]:
    vals = np.concatenate([v[np.abs(v) > 0].ravel() for v in volumes if np.any(v)] or [np.zeros(1)])
    return (0.0, float(np.percentile(vals, 99.5))) if vals.size else (0.0, 1.0)


def comparison_image(source: np.ndarray, result: np.ndarray, affine: np.ndarray, pixel_mm: float = 1.0,
                     reference: np.ndarray | None = None) -> np.ndarray:
    """Rows axial / coronal / sagittal; columns source, result, result − source (diverging map,
    scaled to the 99.5th percentile of |difference|). All volumes on the same grid (``affine``).

    With ``reference`` (the reconstruction, i.e. the same scan at alpha 0) a fourth column shows
    result − reference on its own scale: the edit's own change, without the autoencoder's blur
    that dominates result − source."""
    source, result = np.asarray(source, np.float32), np.asarray(result, np.float32)
    ref = None if reference is None else np.asarray(reference, np.float32)
    for name, v in (("result", result), ("reference", ref)):
        if v is not None and v.shape != source.shape:
            raise ValueError(f"source {source.shape} and {name} {v.shape} are not on the same grid")
    lo, hi = _window([source, result])
    diffs = [result - source] + ([result - ref] if ref is not None else [])
    limits = [float(np.percentile(np.abs(d), 99.5)) or 1.0 for d in diffs]
    s, r = (orthogonal_slices(v, affine, pixel_mm=pixel_mm) for v in (source, result))
    ds = [orthogonal_slices(d, affine, pixel_mm=pixel_mm) for d in diffs]
    return _grid([[_gray(s[i], lo, hi), _gray(r[i], lo, hi)] + [_diverging(d[i], lim) for d, lim in zip(ds, limits)]
                  for i in range(3)])


def strip_image(volumes: list[np.ndarray], affine: np.ndarray, pixel_mm: float = 1.0) -> np.ndarray:
    """One row per orientation, one column per volume (e.g. interpolation frames), one gray window."""
    vols = [np.asarray(v, np.float32) for v in volumes]
    lo, hi = _window(vols)
    sl = [orthogonal_slices(v, affine, pixel_mm=pixel_mm) for v in vols]
    return _grid([[_gray(s[i], lo, hi) for s in sl] for i in range(3)])


def write_comparison_png(path, source, result, affine, pixel_mm: float = 1.0, reference=None) -> Path:
    return write_png(path, comparison_image(source, result, affine, pixel_mm, reference))


def write_strip_png(path, volumes, affine, pixel_mm: float = 1.0) -> Path:
    return write_png(path, strip_image(volumes, affine, pixel_mm))
