"""The real brain templates the synthetic cohort is built from, read from installed packages only.

Two identities, both already in MNI space and brain-extracted:

* ``icbm152``: the ICBM 2009a symmetric T1 average with its grey- and white-matter probability maps,
  shipped inside nilearn (``nilearn/datasets/data/``; nilearn's fetchers would download, which fails
  offline, so the files are read with ``importlib.resources``).
* ``colin27``: Colin27 (one man scanned 27 times), ``ch2bet.nii.gz`` from Debian's ``mricron-data``
  (``/usr/share/mricron/templates``); its tissue fractions come from a partial-volume model of its
  intensities.

Both get the same soft label channels on their own 1 mm grid (fractions in [0, 1], I,J,K order):
grey matter, white matter, CSF (they sum to the brain mask), ventricles (a part of CSF, found by
flood-filling CSF near the centre) and left / right hippocampus (AAL labels 37 / 38, shipped with
mricron-data, times grey matter). The T1 channel is mapped piecewise-linearly so that CSF, grey and
white matter sit at the same canonical intensities (0.25, 0.55, 0.80) in both templates.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LDAEError

CHANNELS = ("t1", "gm", "wm", "csf", "ventricles", "hippocampus_l", "hippocampus_r")
TEMPLATE_NAMES = ("icbm152", "colin27")

# Canonical intensities of pure CSF, grey matter and white matter in the T1 channel.
CANONICAL_T1 = (0.25, 0.55, 0.80)

ICBM_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
MRICRON_DIR_ENV = "LDAE_MRICRON_TEMPLATES"
MRICRON_DIR_DEFAULT = "/usr/share/mricron/templates"
MRICRON_COPYRIGHT = "/usr/share/doc/mricron-data/copyright"

# AAL (Tzourio-Mazoyer 2002) label numbers, as in mricron's aal.nii.txt.
AAL_HIPPOCAMPUS = {"hippocampus_l": 37, "hippocampus_r": 38}
AAL_LOBES = {
    "frontal": list(range(1, 29)) + [31, 32, 33, 34],
    "temporal": [29, 30, 39, 40, 41, 42] + list(range(79, 91)),
    "parietal": list(range(57, 71)) + [35, 36],
    "occipital": list(range(43, 57)),
}


@dataclass
class Template:
    """One real brain with soft labels on its own grid.

    Attributes:
        name: ``icbm152`` or ``colin27``.
        channels: float32 (C, I, J, K), C = len(CHANNELS), on the template's grid.
        affine: 4×4 voxel → MNI world (mm) of that grid.
        aal: uint8 (I, J, K) AAL labels resampled (nearest) onto the same grid.
        sources: file paths the template was read from.
    """

    name: str
    channels: np.ndarray
    affine: np.ndarray
    aal: np.ndarray
    sources: dict = field(default_factory=dict)

    def channel(self, name: str) -> np.ndarray:
        return self.channels[CHANNELS.index(name)]


def nilearn_data_dir() -> Path:
    """Folder of the data files shipped inside nilearn; LDAEError if nilearn is not installed."""
    try:
        d = Path(str(importlib.resources.files("nilearn") / "datasets" / "data"))
    except ModuleNotFoundError:
        raise LDAEError("the cohort generator needs nilearn for the ICBM152 template: pip install nilearn") from None
    if not (d / ICBM_FILES["t1"]).is_file():
        raise LDAEError(f"nilearn is installed but {ICBM_FILES['t1']} is not in {d}; reinstall nilearn (pip install --force-reinstall nilearn)")
    return d


def mricron_dir() -> Path:
    """Folder of mricron-data's templates (Colin27, AAL); LDAEError if the package is missing."""
    d = Path(os.environ.get(MRICRON_DIR_ENV, MRICRON_DIR_DEFAULT))
    if not ((d / "ch2bet.nii.gz").is_file() and (d / "aal.nii.gz").is_file()):
        raise LDAEError(
            f"Colin27 and the AAL labels were not found in {d}; install them with "
            f"'apt-get install -y mricron-data' (or set {MRICRON_DIR_ENV} to a folder holding ch2bet.nii.gz and aal.nii.gz)"
        )
    return d


def templates_available() -> str | None:
    """None when every template file is installed, else the reason (for skipping tests)."""
    try:
        nilearn_data_dir()
        mricron_dir()
    except LDAEError as err:
        return str(err)
    return None


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


@functools.lru_cache(maxsize=None)
def load_template(name: str) -> Template:
    """Read and label one template (a few seconds; cached for the process)."""
    if name == "icbm152":
        return _icbm152()
    if name == "colin27":
        return _colin27()
    raise LDAEError(f"unknown template '{name}'; choose from {', '.join(TEMPLATE_NAMES)}")


def _icbm152() -> Template:
    d = nilearn_data_dir()
    t1, affine = _load(d / ICBM_FILES["t1"])
    gm, _ = _load(d / ICBM_FILES["gm"])
    wm, _ = _load(d / ICBM_FILES["wm"])
    mask = t1 > 0  # the T1 is skull-stripped; the GM map spills a little outside it
    gm = np.where(mask, gm / 255.0, 0.0).astype(np.float32)
    wm = np.where(mask, wm / 255.0, 0.0).astype(np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0).astype(np.float32)
    aal_path = mricron_dir() / "aal.nii.gz"
    return _finish("icbm152", t1, gm, wm, csf, affine, aal_path, {"t1": d / ICBM_FILES["t1"], "gm": d / ICBM_FILES["gm"], "wm": d / ICBM_FILES["wm"]})


def _colin27() -> Template:
    from scipy import ndimage

    d = mricron_dir()
    t1, affine = _load(d / "ch2bet.nii.gz")
    mask = t1 > 0
    lab, n = ndimage.label(mask)
    if n > 1:  # brain extraction left a few specks outside the brain
        mask = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    t1 = np.where(mask, t1, 0.0).astype(np.float32)
    mu = _three_means(t1[mask])
    gm, wm, csf = _partial_volume(t1, mask, mu)
    return _finish("colin27", t1, gm, wm, csf, affine, d / "aal.nii.gz", {"t1": d / "ch2bet.nii.gz"})


def _three_means(values: np.ndarray, iters: int = 30) -> np.ndarray:
    """1-D k-means with 3 classes (CSF < GM < WM) → sorted class means."""
    mu = np.percentile(values, [10, 50, 90]).astype(np.float64)
    hist, edges = np.histogram(values, bins=256)
    centres = 0.5 * (edges[:-1] + edges[1:])
    for _ in range(iters):
        k = np.argmin(np.abs(centres[:, None] - mu[None]), axis=1)
        mu = np.array([np.average(centres[k == c], weights=hist[k == c]) if hist[k == c].sum() else mu[c] for c in range(3)])
    return np.sort(mu)


def _partial_volume(t1: np.ndarray, mask: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, ...]:
    """Linear two-class mixing between neighbouring class means → GM, WM, CSF fractions."""
    c, g, w = mu
    csf = np.clip((g - t1) / (g - c), 0.0, 1.0)
    wm = np.clip((t1 - g) / (w - g), 0.0, 1.0)
    gm = 1.0 - csf - wm
    return tuple((x * mask).astype(np.float32) for x in (gm, wm, csf))


def _finish(name, t1, gm, wm, csf, affine, aal_path, sources) -> Template:
    mask = (gm + wm + csf) > 0
    mu = [float(np.median(t1[(frac > 0.9) & mask])) for frac in (csf, gm, wm)]
    top = float(t1.max())
    slope = (CANONICAL_T1[2] - CANONICAL_T1[1]) / (mu[2] - mu[1])
    t1c = np.interp(t1, [0.0, *mu, max(top, mu[2] + 1)], [0.0, *CANONICAL_T1, CANONICAL_T1[2] + slope * max(top - mu[2], 1)])
    t1c = np.where(mask, t1c, 0.0).astype(np.float32, copy=False)

    vent = _ventricles(csf, mask, affine) * csf
    aal_data, aal_affine = _load(aal_path)
    aal = np.where(mask, _nearest_on_grid(aal_data.astype(np.uint8), aal_affine, t1.shape, affine), 0).astype(np.uint8)
    hip = [((aal == AAL_HIPPOCAMPUS[k]) * gm).astype(np.float32) for k in ("hippocampus_l", "hippocampus_r")]
    channels = np.stack([t1c, gm, wm, csf, vent.astype(np.float32), *hip]).astype(np.float32)
    sources = {k: str(v) for k, v in sources.items()} | {"aal": str(aal_path)}
    return Template(name=name, channels=channels, affine=affine, aal=aal, sources=sources)


def _nearest_on_grid(data: np.ndarray, data_affine: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of ``data`` onto the grid (shape, affine) through world coordinates."""
    from scipy import ndimage

    m = np.linalg.inv(data_affine) @ affine
    offset = m[:3, 3]
    if np.allclose(m[:3, :3], np.eye(3)) and np.allclose(offset, np.round(offset)):  # same voxels, shifted
        out = np.zeros(shape, dtype=data.dtype)
        o = np.round(offset).astype(int)
        src = tuple(slice(max(oi, 0), min(oi + n, d)) for oi, n, d in zip(o, shape, data.shape))
        dst = tuple(slice(s.start - oi, s.stop - oi) for s, oi in zip(src, o))
        out[dst] = data[src]
        return out
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = m[:3, :3] @ idx + m[:3, 3:4]
    return ndimage.map_coordinates(data, coords, order=0, mode="constant", cval=0).reshape(shape)


def _ventricles(csf: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Binary mask of the lateral ventricles (and what joins them), one voxel wider for the partial-volume wall.

    Candidates are CSF voxels (fraction > 0.5) at least 6 mm inside the brain. Their core (fraction
    > 0.7, off the midline slab |x| < 3 mm, above z = −2 mm where the basal cisterns begin) is opened
    with a 2-voxel ball, which cuts the thin bridges to cisterns and sulci; the core pieces that reach
    into the box of the lateral-ventricle bodies (|x| < 25, −30 < y < 20, 5 < z < 30 mm MNI) are grown
    back by 4 voxels inside the candidates. Thin temporal horns are mostly left out.
    """
    from scipy import ndimage

    vox = float(np.abs(np.diag(affine)[:3]).max())
    depth = ndimage.distance_transform_cdt(mask, metric="chessboard") * vox  # ≤ the Euclidean depth
    cand = (csf > 0.5) & (depth > 6.0)
    world = [affine[a, a] * np.arange(csf.shape[a]) + affine[a, 3] for a in range(3)]
    lateral = (np.abs(world[0]) >= 3.0)[:, None, None] & (world[2] > -2.0)[None, None, :]
    ball = ndimage.iterate_structure(ndimage.generate_binary_structure(3, 1), 2)
    core = ndimage.binary_opening(cand & (csf > 0.7) & lateral, structure=ball)
    lab, _ = ndimage.label(core)
    box = [(np.abs(world[0]) < 25), (world[1] > -30) & (world[1] < 20), (world[2] > 5) & (world[2] < 30)]
    sel = lab[np.ix_(*box)]
    vent = np.isin(lab, np.unique(sel[sel > 0]))
    vent = ndimage.binary_dilation(vent, iterations=4, mask=cand)
    return ndimage.binary_dilation(vent) & mask


def notice_texts() -> dict[str, str]:
    """Licence notices of the template data, copied from the installed packages' own files.

    Keys: ``mni`` (the McConnell Brain Imaging Centre notice of the MNI/ICBM templates, as nibabel's
    COPYING quotes it), ``nilearn`` (nilearn's licence, which ships the ICBM files) and
    ``mricron-data`` (Debian's copyright file of mricron-data, which ships Colin27 and AAL).
    """
    from importlib import metadata

    texts = {}
    for dist in ("nibabel", "nilearn"):
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            continue
        for f in files:
            if Path(str(f)).name.upper().startswith(("COPYING", "LICENSE")):
                body = Path(f.locate()).read_text(encoding="utf-8", errors="replace")
                if dist == "nibabel":
                    mni = _mni_notice(body)
                    if mni:
                        texts["mni"] = mni
                else:
                    texts["nilearn"] = body
                    break
    if Path(MRICRON_COPYRIGHT).is_file():
        texts["mricron-data"] = Path(MRICRON_COPYRIGHT).read_text(encoding="utf-8", errors="replace")
    return texts


def _mni_notice(copying: str) -> str | None:
    """The indented block from 'Copyright (C) 1993-2004 Louis Collins' to the end of its paragraph."""
    lines = copying.splitlines()
    for i, line in enumerate(lines):
        if "Louis Collins" in line and "McConnell" in line:
            out = []
            for follow in lines[i:]:
                if out and not follow.startswith("    ") and follow.strip():
                    break
                out.append(follow[4:] if follow.startswith("    ") else follow)
            return "\n".join(out).strip() + "\n"
    return None
