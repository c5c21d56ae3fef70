"""Regional volumes measured from the image alone, in model space (for scans that have no label map).

Generated scans (reconstructions, edits, interpolations) come without labels, so their ventricles
and hippocampi have to be measured from their intensities. The measure here needs nothing of the
scan being measured except its voxels:

1. **Regions of interest from the training subjects' label maps.** The label maps of (up to
   ``atlas_subjects``) *training* subjects are mapped into model space with the same stage B as the
   images (``space.to_model_space`` on each region's indicator, the min-max undone, which gives the
   region's fraction per model voxel). A region's ROI is the union of the voxels any of these visits
   puts in the region, dilated by one voxel: a fixed box per region, the same for every scan.
2. **Tissue levels from the image itself.** A three-class 1-D k-means of the scan's brain voxels
   (intensity > ``BRAIN_THRESHOLD``; initialised at the 10th/50th/90th percentiles) gives the mean
   CSF, grey-matter and white-matter intensities; the CSF threshold is the midpoint of CSF and grey
   matter. Decoded images are smoother than raw ones; a threshold taken from each image follows
   that.
3. **Raw measures.** ventricles: voxels of the ventricle ROI darker than the CSF threshold, in mL;
   hippocampus: voxels of the (left + right) hippocampus ROI *not* darker than it (tissue), in mL.
   The hippocampal ROI also holds neighbouring grey and white matter, so its raw number is several
   times the hippocampus; what changes with atrophy is the CSF that replaces hippocampal tissue.
4. **Calibration on the training subjects.** A straight line truth ≈ a + b·raw (reduced major axis:
   b = ±sd(truth)/sd(raw), so that measured differences are not shrunk) is fitted on the same
   training visits (their ``*_ml`` columns of the cohort table), giving the calibrated measure in
   mL. It is checked on the held-out test visits (raw scans) with Pearson r, the slope of the
   measure on the truth, the mean absolute error and the within-subject correlation (each
   subject's mean removed, i.e. how well visit-to-visit change is followed).

Nothing here uses the label map of the scan being measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import LDAEError
from .similarity import as_volume

BRAIN_THRESHOLD = 0.02
"""Model-space intensity above which a voxel counts as brain (stage B puts the background at 0)."""

DEFAULT_LABELS = {"ventricles": (4,), "hippocampus": (5, 6)}
"""Label values per region in ``ldae cohort`` label maps (cohort.json's ``labels`` table wins)."""

TRUTH_COLUMNS = {"ventricles": ("ventricles_ml",), "hippocampus": ("hippocampus_l_ml", "hippocampus_r_ml")}
"""Cohort-table columns whose sum is a region's ground-truth volume (mL)."""

REGIONS = ("ventricles", "hippocampus")
DILATION = 1


def tissue_levels(x: np.ndarray, iterations: int = 30) -> tuple[float, float, float]:
    """Mean CSF, grey- and white-matter intensity of a model-space scan (3-class 1-D k-means)."""
    b = np.asarray(x, dtype=np.float64).ravel()
    b = b[b > BRAIN_THRESHOLD]
    if b.size < 30:
        raise LDAEError("the volume has almost no brain voxels (intensity > 0.02 in model space); cannot measure regional volumes")
    c = np.percentile(b, [10, 50, 90])
    for _ in range(iterations):
        edges = (c[:-1] + c[1:]) / 2
        lab = np.searchsorted(edges, b)
        new = np.array([b[lab == k].mean() if np.any(lab == k) else c[k] for k in range(3)])
        if np.allclose(new, c):
            break
        c = np.sort(new)
    return float(c[0]), float(c[1]), float(c[2])


def label_values(cohort_json: Path | None) -> dict[str, tuple[int, ...]]:
    """Region → label values, from cohort.json's label table when it has one."""
    out = dict(DEFAULT_LABELS)
    if cohort_json is not None and Path(cohort_json).is_file():
        try:
            table = json.loads(Path(cohort_json).read_text()).get("labels") or {}
        except ValueError:
            table = {}
        inv = {str(v): int(k) for k, v in table.items()}
        if "ventricles" in inv:
            out["ventricles"] = (inv["ventricles"],)
        hip = tuple(inv[k] for k in ("hippocampus_l", "hippocampus_r") if k in inv)
        if hip:
            out["hippocampus"] = hip
    return out


@dataclass
class RegionMeasure:
    """ROIs (boolean model-space masks), the voxel volume and the calibration line per region."""

    rois: dict[str, np.ndarray]
    voxel_ml: float
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)  # region → (a, b): truth ≈ a + b·raw
    atlas_subjects: list[str] = field(default_factory=list)
    atlas_visits: int = 0
    training_fit: dict = field(default_factory=dict)

    def raw(self, x) -> dict[str, float]:
        """Uncalibrated measures (mL) of one model-space scan (A×B×S, or with leading singleton axes)."""
        v = as_volume(x, np.float32)
        csf, gm, _wm = tissue_levels(v)
        t = (csf + gm) / 2
        dark = (v < t) & (v > BRAIN_THRESHOLD)
        tissue = v >= t
        out = {}
        if "ventricles" in self.rois:
            out["ventricles"] = float((dark & self.rois["ventricles"]).sum() * self.voxel_ml)
        if "hippocampus" in self.rois:
            out["hippocampus"] = float((tissue & self.rois["hippocampus"]).sum() * self.voxel_ml)
        return out

    def measure(self, x) -> dict[str, float]:
        """Calibrated measures (mL): a + b·raw per region."""
        return {k: self.calibrate(k, r) for k, r in self.raw(x).items()}

    def calibrate(self, region: str, raw: float) -> float:
        a, b = self.calibration.get(region, (0.0, 1.0))
        return float(a + b * raw)

    def describe(self) -> dict:
        return {
            "method": "ROI (union of the training subjects' labels in model space, dilated by 1 voxel) × "
                      "image-derived CSF threshold (midpoint of the scan's own CSF and grey-matter k-means levels); "
                      "ventricles = dark voxels in the ROI, hippocampus = non-dark voxels in the left+right ROI; "
                      "calibrated by a reduced-major-axis line fitted on the training visits",
            "roi_voxels": {k: int(v.sum()) for k, v in self.rois.items()},
            "voxel_ml": self.voxel_ml,
            "calibration": {k: {"intercept_ml": a, "slope": b} for k, (a, b) in self.calibration.items()},
            "atlas_subjects": len(self.atlas_subjects),
            "atlas_visits": self.atlas_visits,
            "training_fit": self.training_fit,
        }


def truth_of(row, region: str) -> float | None:
    """Ground truth (mL) of a region from a cohort row; None when a column is missing or empty."""
    try:
        return float(sum(float(row.fields[c]) for c in TRUTH_COLUMNS[region]))
    except (KeyError, ValueError, TypeError):
        return None


def has_volume_truth(rows) -> bool:
    return bool(rows) and all(truth_of(r, "ventricles") is not None for r in rows)


def region_fractions(label_path: Path, space, values: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Each region's fraction per model voxel, from one label map (stage B on its indicator)."""
    from ..inference.image import read_image as read_volume
    from ..space import to_model_space

    lab = read_volume(label_path)
    data = np.rint(lab.data).astype(np.int64)
    out = {}
    for region, vals in values.items():
        m = np.isin(data, vals).astype(np.float32)
        if not m.any():
            out[region] = np.zeros(space.shape, dtype=np.float32)
            continue
        y, ctx = to_model_space(m, lab.affine, space)
        out[region] = (y * (ctx.intensity_max - ctx.intensity_min) + ctx.intensity_min).astype(np.float32)
    return out


def build_measure(train_rows, space, load: Callable[[object], np.ndarray], values: dict[str, tuple[int, ...]],
                  max_subjects: int = 16, rng: np.random.Generator | None = None, progress=None) -> RegionMeasure:
    """ROIs and calibration from (up to ``max_subjects``) training subjects' label maps and scans.

    ``load(row)`` gives the model-space scan of a cohort row. Rows need a ``labels_path`` column.
    """
    from scipy import ndimage as ndi

    subjects = sorted({r.subject for r in train_rows})
    if rng is not None and len(subjects) > max_subjects:
        subjects = sorted(rng.choice(subjects, size=max_subjects, replace=False).tolist())
    subjects = subjects[:max_subjects]
    rows = [r for r in train_rows if r.subject in set(subjects)]
    union = {k: np.zeros(space.shape, dtype=bool) for k in values}
    raws = []
    for n, r in enumerate(rows):
        if not r.get("labels_path"):
            raise LDAEError(f"training visit {r.path.name} has no labels_path; the volume measure needs the training subjects' label maps")
        fr = region_fractions(_resolve_label(r), space, values)
        for k in union:
            union[k] |= fr[k] > 0
        if progress is not None:
            progress(n + 1, 2 * len(rows))
    rois = {k: ndi.binary_dilation(v, iterations=DILATION) if v.any() else v for k, v in union.items()}
    voxel_ml = float(np.prod(space.spacing_mm)) / 1000.0
    measure = RegionMeasure(rois=rois, voxel_ml=voxel_ml, atlas_subjects=subjects, atlas_visits=len(rows))
    for n, r in enumerate(rows):
        raws.append(measure.raw(load(r)))
        if progress is not None:
            progress(len(rows) + n + 1, 2 * len(rows))
    for k in rois:
        m = np.array([d[k] for d in raws])
        t = np.array([truth_of(r, k) for r in rows], dtype=np.float64)
        if len(m) >= 2 and np.std(m) > 0 and np.std(t) > 0:
            # reduced-major-axis line (slope sd(truth)/sd(raw), signed by r): unlike a least-squares fit of the
            # truth on a noisy measure it does not shrink the measured differences towards the mean
            b = math.copysign(float(np.std(t) / np.std(m)), pearson(m, t))
            a = float(np.mean(t) - b * np.mean(m))
        else:
            a, b = float(np.mean(t) - np.mean(m)), 1.0
        measure.calibration[k] = (float(a), float(b))
        measure.training_fit[k] = agreement([measure.calibrate(k, v) for v in m], t, [r.subject for r in rows])
    return measure


def _resolve_label(row) -> Path:
    p = Path(row.get("labels_path"))
    if p.is_absolute():
        return p
    root = row.fields.get("_cohort_root")
    return (Path(root) / p) if root else p


def pearson(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def agreement(measured, truth, subjects) -> dict:
    """How a measure follows the truth: Pearson r, slope and intercept of measured on truth, MAE, bias,
    and the within-subject r (each subject's mean removed from both)."""
    m, t = np.asarray(measured, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    s = np.asarray(subjects)
    out = {"n": int(len(m)), "pearson_r": pearson(m, t)}
    if len(m) >= 2 and np.ptp(t) > 0:
        slope, icpt = np.polyfit(t, m, 1)
        out.update(slope=float(slope), intercept_ml=float(icpt))
    else:
        out.update(slope=float("nan"), intercept_ml=float("nan"))
    out["mae_ml"] = float(np.mean(np.abs(m - t))) if len(m) else float("nan")
    out["bias_ml"] = float(np.mean(m - t)) if len(m) else float("nan")
    out["truth_mean_ml"] = float(np.mean(t)) if len(t) else float("nan")
    mw, tw = m.copy(), t.copy()
    for u in np.unique(s):
        i = s == u
        mw[i] -= m[i].mean()
        tw[i] -= t[i].mean()
    out["within_subject_r"] = pearson(mw, tw) if len(np.unique(s)) < len(s) else float("nan")
    return out


def spearman(x, y) -> float:
    """Spearman rank correlation (nan when either side is constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    r = spearmanr(x, y).statistic
    return float(r) if r is not None and math.isfinite(r) else float("nan")


def within_subject_rate(rows, column: str, age_column: str = "age") -> float | None:
    """Pooled within-subject slope of ``column`` on age (per year) over the rows' subjects: how the
    cohort's own scans change as one subject ages (None without two visits of different age)."""
    by_subject: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        try:
            a, v = float(r.get(age_column)), float(r.get(column))
        except (TypeError, ValueError):
            continue
        if np.isfinite(a) and np.isfinite(v):
            by_subject.setdefault(r.subject, []).append((a, v))
    sxy = sxx = 0.0
    for pts in by_subject.values():
        if len(pts) < 2:
            continue
        a, v = np.array(pts).T
        sxy += float(((a - a.mean()) * (v - v.mean())).sum())
        sxx += float(((a - a.mean()) ** 2).sum())
    return sxy / sxx if sxx > 0 else None
