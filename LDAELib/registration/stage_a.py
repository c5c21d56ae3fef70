"""Stage A: a raw T1 scan → bias-corrected, skull-stripped brain registered to MNI.

The authors run ANTs (N4, antspynet's brain-extraction network, SyN to ANTs' ``mni``). Here every
step runs in SimpleITK (it ships inside 3D Slicer; no network weights, nothing downloaded), on a
2 mm working copy of the scan so that a 1 mm 256³ head takes well under a minute on two cores:

1. checks: a 3-D scan with a field of view that can hold a whole brain (≥ 100 mm along each axis)
   and slices no thicker than 6 mm;
2. N4 bias-field correction at 6 mm inside an Otsu head mask;
3. initial alignment: the template brain's centre placed ~80 mm below the top of the head, then a
   grid search over translations and pitch (Mattes mutual information at 6 mm);
4. affine registration of the skull-stripped template to the scan (mutual information, restricted to
   the template's brain plus a 4 mm margin, so skull, scalp and neck do not pull), 4 mm then 2 mm;
5. deformable registration: a smooth displacement field on the template's 2 mm grid (greedy
   diffeomorphic-style updates, ANTs neighbourhood cross-correlation), and its inverse;
6. brain extraction = the template's brain mask carried onto the scan through the registration;
   voxels brighter than 1.1 × the brain's 99.9th percentile (residual scalp fat or vessels at the
   mask's edge) are clipped there, so that a handful of them do not set stage B's min-max scale and
   darken the whole brain;
7. the quality check: correlation with the template inside the brain, brain volume, how much of the
   brain the field of view holds. A failure stops with a message instead of a result.

Arrays in and out are nibabel I,J,K with RAS affines.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..errors import Cancelled, LDAEError
from ..space import validate_volume
from . import images
from .template import MNI_AFFINE, MNI_SHAPE, Template, load_template
from .transform import Registration

STAGE_A_VERSION = "1"
MIN_FIELD_OF_VIEW_MM = 100.0
MAX_SLICE_MM = 6.0
N4_SPACING_MM = 6.0

Progress = Callable[[int, int, str], None]


@dataclass
class StageASettings:
    """How stage A runs; part of the cache key.

    Attributes:
        bias_correction: run N4.
        deformable: add the deformable registration after the affine one.
        affine_iterations: optimizer iterations per affine level (4 mm, 2 mm).
        deformable_iterations: iterations per deformable level (4 mm, 2 mm).
        sampling_fraction: fraction of template voxels the affine metric samples.
        update_sigma_mm, total_sigma_mm: Gaussian regularisation of the displacement field's
            update and of the field itself.
        seed: seed of the metric's random sampling (the result is deterministic for a given seed).
        threads: SimpleITK threads (None: SimpleITK's default, all cores).
        min_similarity: quality check, least correlation with the template inside its brain mask.
        brain_volume_ml: quality check, plausible range of the extracted brain (mL; the template's
            mask, which includes the CSF around the brain, is 1887 mL).
        min_brain_inside: quality check, least fraction of the brain inside the field of view.
        intensity_ceiling: the brightest intensity kept in the extracted brain, as a multiple of its
            99.9th percentile; brighter voxels are set to it. Stage B scales by the brain's maximum,
            so without a ceiling a few bright voxels left at the mask's edge make the whole brain dim
            (one installed head: its brain at 0.1–0.4 of the model's range instead of 0.2–0.9). 1.1
            is the most that the demo cohort's own scans reach (their maximum is 1.04–1.11 × that
            percentile), so a scan like them is not changed. None: no ceiling (the authors' stage A).
    """

    bias_correction: bool = True
    deformable: bool = True
    affine_iterations: tuple[int, ...] = (100, 60)
    deformable_iterations: tuple[int, ...] = (40, 20)
    sampling_fraction: float = 0.15
    update_sigma_mm: float = 3.0
    total_sigma_mm: float = 1.0
    seed: int = 0
    threads: int | None = None
    min_similarity: float = 0.5
    brain_volume_ml: tuple[float, float] = (900.0, 2700.0)
    min_brain_inside: float = 0.97
    intensity_ceiling: float | None = 1.1

    def __post_init__(self) -> None:
        c = self.intensity_ceiling
        if c is not None and (isinstance(c, bool) or not (isinstance(c, (int, float)) and np.isfinite(c) and c >= 1.0)):
            raise LDAEError(f"intensity_ceiling must be a number ≥ 1 (a multiple of the brain's 99.9th percentile) or None, not {c!r}.")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "StageASettings":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise LDAEError(f"Unknown stage-A setting(s) {sorted(unknown)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def cache_dict(self) -> dict:
        """The settings that change the result (threads do not)."""
        d = self.to_dict()
        d.pop("threads")
        return d


@dataclass
class StageAResult:
    """What stage A gives for one scan.

    Attributes:
        brain_mni: float32 (182, 218, 182) on the MNI grid (``MNI_AFFINE``): bias-corrected scan
            times the brain mask, in the scan's intensity units. Stage B's input.
        brain_mask: uint8 (I, J, K) brain mask on the scan's own grid.
        registration: the transforms (and bias field) between the scan and MNI.
        quality: the quality-check figures.
        seconds: wall time of each step.
    """

    brain_mni: np.ndarray
    brain_mask: np.ndarray
    registration: Registration
    quality: dict
    seconds: dict = field(default_factory=dict)


# -- checks -------------------------------------------------------------------------------------
def check_scan(data: np.ndarray, affine: np.ndarray, name: str = "input") -> None:
    """Refuse what stage A cannot work on, before any computation (``LDAEError`` says why)."""
    validate_volume(data, name)
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise LDAEError(f"The {name} volume's affine is not an invertible 4×4 voxel-to-world matrix; check the image header.")
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    extent = spacing * np.array(np.shape(data))
    if extent.min() < MIN_FIELD_OF_VIEW_MM:
        raise LDAEError(
            f"The {name} volume is far too small to hold a whole brain: its field of view is "
            f"{' × '.join(f'{e:.0f}' for e in extent)} mm ({' × '.join(map(str, np.shape(data)))} voxels of "
            f"{' × '.join(f'{s:.2g}' for s in spacing)} mm). An adult brain needs about 140 × 170 × 120 mm "
            f"(at least {MIN_FIELD_OF_VIEW_MM:.0f} mm along every axis); load the whole-brain 3-D T1 series."
        )
    if spacing.max() > MAX_SLICE_MM:
        raise LDAEError(
            f"The {name} volume's voxels are {' × '.join(f'{s:.2g}' for s in spacing)} mm: slices thicker than "
            f"{MAX_SLICE_MM:.0f} mm cannot be registered to the 1 mm template reliably. Use a 3-D T1 "
            "acquisition (ideally about 1 mm, up to 3 mm slices)."
        )


# -- the steps ----------------------------------------------------------------------------------
def head_mask(low: sitk.Image) -> sitk.Image:
    """uint8 mask of the head (or brain, for a skull-stripped scan) on a coarse grid: Otsu on the
    smoothed image, the largest component, closed and filled."""
    smooth = sitk.SmoothingRecursiveGaussian(low, float(2.0 * max(low.GetSpacing())))
    m = sitk.OtsuThreshold(smooth, 0, 1)
    m = sitk.RelabelComponent(sitk.ConnectedComponent(m), sortByObjectSize=True) == 1
    m = sitk.BinaryMorphologicalClosing(m, [2, 2, 2])
    return sitk.Cast(sitk.BinaryFillhole(m), sitk.sitkUInt8)


def n4_log_bias(low: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """N4 log bias field on ``low``'s grid (scan = exp(log bias) × corrected).

    Two fitting levels (B-spline spans of about 200 then 100 mm over a head): about as smooth as
    ANTs' default (200 mm spline distance). The field is that smooth, so a 6 mm grid is enough and
    N4 costs seconds instead of the tens of seconds it takes at 4 mm."""
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([50, 40])
    n4.SetConvergenceThreshold(1e-4)
    positive = sitk.Maximum(low, 0.0) + 1e-3 * float(sitk.GetArrayViewFromImage(low).max())
    n4.Execute(positive, mask)
    return sitk.Cast(n4.GetLogBiasFieldAsImage(low), sitk.sitkFloat32)


def _physical_points(mask: sitk.Image) -> np.ndarray:
    """LPS points (N, 3) of a mask's non-zero voxels."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].astype(np.float64)  # → (i, j, k)
    d = np.array(mask.GetDirection()).reshape(3, 3) * np.array(mask.GetSpacing())
    return idx @ d.T + np.array(mask.GetOrigin())


def initial_alignment(
    tmpl: sitk.Image, tmpl_mask: sitk.Image, moving: sitk.Image, moving_head: sitk.Image
) -> sitk.Euler3DTransform:
    """Rigid MNI → scan transform to start from.

    The template brain's centre is placed ~80 mm below the top of the head (where it sits in an
    adult head, with or without skull; a scan's neck coverage varies too much for a centre of mass),
    then a grid search over translations (±10, ±15, ±25 mm) and pitch (±10°) keeps the best Mattes
    mutual information inside the template brain, at 6 mm.
    """
    t_pts = _physical_points(tmpl_mask)
    t_centre = t_pts.mean(axis=0)
    t_top = t_pts[:, 2].max()  # LPS z = superior
    h_pts = _physical_points(moving_head)
    h_top = h_pts[:, 2].max()
    slab = h_pts[h_pts[:, 2] > h_top - 100.0]
    centre = np.array([slab[:, 0].mean(), slab[:, 1].mean(), h_top - (t_top - t_centre[2]) - 8.0])

    tx = sitk.Euler3DTransform()
    tx.SetCenter(t_centre.tolist())
    tx.SetTranslation((centre - t_centre).tolist())

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetMetricFixedMask(tmpl_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    # Euler parameters: (rx, ry, rz, tx, ty, tz); the exhaustive step is stepLength × scale.
    reg.SetOptimizerAsExhaustive([1, 0, 0, 2, 3, 5], stepLength=1.0)
    reg.SetOptimizerScales([np.deg2rad(10.0), 1.0, 1.0, 5.0, 5.0, 5.0])
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(tmpl, moving)
    return tx


def affine_registration(
    tmpl: sitk.Image, fixed_mask: sitk.Image, moving: sitk.Image, init: sitk.Transform, s: StageASettings
) -> sitk.AffineTransform:
    """Affine MNI → scan transform, Mattes MI inside ``fixed_mask``, 4 mm then 2 mm."""
    aff = sitk.AffineTransform(3)
    aff.SetCenter(init.GetCenter())
    aff.SetMatrix(init.GetMatrix())
    aff.SetTranslation(init.GetTranslation())
    for shrink, sigma, iters in zip((2, 1), (2.0, 1.0), s.affine_iterations):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(s.sampling_fraction, seed=s.seed + 1)
        reg.SetMetricFixedMask(fixed_mask)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0 if shrink > 1 else 1.0, minStep=1e-3, numberOfIterations=int(iters),
            gradientMagnitudeTolerance=1e-6, relaxationFactor=0.6,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([shrink])
        reg.SetSmoothingSigmasPerLevel([sigma])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetInitialTransform(aff, inPlace=True)
        reg.Execute(tmpl, moving)
    return aff


def deformable_registration(
    fixed_levels: list[tuple[sitk.Image, sitk.Image]], moving: sitk.Image, affine: sitk.Transform, s: StageASettings
) -> tuple[sitk.Image, sitk.Image]:
    """Displacement field u on the template's finest grid (MNI point p ↦ p + u(p), then the affine)
    and its inverse; both vector images (float64, LPS mm).

    ``fixed_levels``: (template, metric mask) from coarse to fine; the field found on one level is
    upsampled to start the next. Each level runs ``s.deformable_iterations[level]`` greedy steps of
    ANTs neighbourhood cross-correlation, the update and the field smoothed by Gaussians."""
    dfield = None
    for (tmpl, mask), iters in zip(fixed_levels, s.deformable_iterations):
        if dfield is None:
            start = sitk.Image(tmpl.GetSize(), sitk.sitkVectorFloat64)
            start.CopyInformation(tmpl)
        else:
            start = sitk.Resample(dfield.GetDisplacementField(), tmpl, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        dfield = sitk.DisplacementFieldTransform(start)
        sp = float(tmpl.GetSpacing()[0])
        dfield.SetSmoothingGaussianOnUpdate(
            varianceForUpdateField=(s.update_sigma_mm / sp) ** 2, varianceForTotalField=(s.total_sigma_mm / sp) ** 2
        )
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsANTSNeighborhoodCorrelation(2)
        reg.SetMetricFixedMask(mask)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsGradientDescent(
            learningRate=1.0, numberOfIterations=int(iters), convergenceMinimumValue=1e-7,
            convergenceWindowSize=10, estimateLearningRate=reg.EachIteration,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetMovingInitialTransform(affine)
        reg.SetInitialTransform(dfield, inPlace=True)
        reg.Execute(tmpl, moving)
    forward = dfield.GetDisplacementField()
    inverse = sitk.InvertDisplacementField(
        forward, maximumNumberOfIterations=30, maxErrorToleranceThreshold=0.05,
        meanErrorToleranceThreshold=0.001, enforceBoundaryCondition=True,
    )
    return forward, inverse


def _composites(affine: sitk.AffineTransform, forward: sitk.Image | None, inverse: sitk.Image | None):
    """(MNI → scan, scan → MNI) composite transforms."""
    if forward is None:
        return sitk.CompositeTransform([affine]), sitk.CompositeTransform([affine.GetInverse()])
    # CompositeTransform([a, b])(p) = a(b(p)): the last one listed is applied first.
    fwd = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(sitk.Image(forward))])
    inv = sitk.CompositeTransform([sitk.DisplacementFieldTransform(sitk.Image(inverse)), affine.GetInverse()])
    return fwd, inv


# -- quality ------------------------------------------------------------------------------------
def _brain_inside_fraction(tmpl_mask: sitk.Image, to_native: sitk.Transform, native: sitk.Image) -> float:
    """Fraction of the template brain (its mask's voxels) that lands inside the scan's field of view."""
    pts = _physical_points(tmpl_mask)
    size = np.array(native.GetSize())
    inside = 0
    for p in pts:
        c = np.array(native.TransformPhysicalPointToContinuousIndex(to_native.TransformPoint(p.tolist())))
        inside += bool(((c >= -0.5) & (c <= size - 0.5)).all())
    return inside / max(len(pts), 1)


def _correlation(a: sitk.Image, b: sitk.Image, mask: sitk.Image) -> float:
    m = sitk.GetArrayViewFromImage(mask) > 0
    x = sitk.GetArrayViewFromImage(a)[m].astype(np.float64)
    y = sitk.GetArrayViewFromImage(b)[m].astype(np.float64)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def clip_bright_voxels(brain: np.ndarray, ceiling: float | None) -> int:
    """Set the voxels of ``brain`` (in place) brighter than ``ceiling`` × the 99.9th percentile of its
    non-zero voxels to that value; the number of voxels changed. Nothing happens for ``None``."""
    if ceiling is None:
        return 0
    values = brain[brain > 0]
    if values.size == 0:
        return 0
    top = np.float32(ceiling * np.percentile(values, 99.9))
    above = brain > top
    brain[above] = top
    return int(above.sum())


def quality_failure(q: dict, s: StageASettings) -> str | None:
    """The message that stops stage A, or None when the figures in ``q`` pass."""
    fixes = ("This does not look like a T1-weighted head or brain scan where the template fits: check that the right file "
             "was loaded, that it is a T1-weighted MRI and that its header's orientation is correct; if it is already "
             "registered to MNI, pass it as registered (--registered).")
    if q["similarity"] < s.min_similarity:
        return (f"Registration to MNI failed the quality check: the registered brain correlates only "
                f"{q['similarity']:.2f} with the template (at least {s.min_similarity:.2f} expected). {fixes}")
    lo, hi = s.brain_volume_ml
    if not lo <= q["brain_volume_ml"] <= hi:
        return (f"Brain extraction failed the quality check: the brain mask measures {q['brain_volume_ml']:.0f} mL, "
                f"outside the plausible {lo:.0f}–{hi:.0f} mL. {fixes}")
    return None


# -- the whole stage ----------------------------------------------------------------------------
class _Steps:
    def __init__(self, progress: Progress | None, cancel: Callable[[], bool] | None, total: int) -> None:
        self.progress, self.cancel, self.total, self.done = progress, cancel, total, 0
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def step(self, name: str) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled()
        if self.progress is not None:
            self.progress(self.done, self.total, name)
        self.done += 1
        self._name = name
        self._t = time.perf_counter()

    def end(self) -> None:
        self.seconds[self._name] = round(time.perf_counter() - self._t, 2)


def register_to_mni(
    data: np.ndarray,
    affine: np.ndarray,
    settings: StageASettings | None = None,
    *,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
) -> StageAResult:
    """Stage A on one scan: N4, registration to the MNI template, brain extraction, quality check.

    Args:
        data: 3-D scan (I, J, K), any real dtype, any orientation and spacing, with or without skull.
        affine: 4×4 voxel → world (RAS mm) affine of ``data``.
        settings: see :class:`StageASettings`.
        progress: ``progress(done, total, stage)`` callback.
        cancel: returns True to stop (``Cancelled`` is raised between steps).

    Returns:
        :class:`StageAResult`. Raises ``LDAEError`` for a scan that cannot be processed or whose
        registration fails the quality check.
    """
    s = settings or StageASettings()
    check_scan(data, affine)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if s.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(s.threads))
    try:
        return _register(np.asarray(data), np.asarray(affine, dtype=np.float64), s, _Steps(progress, cancel, 6))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _template_images(t: Template) -> dict:
    full = images.to_sitk(t.t1, t.affine)
    mask = images.to_sitk(t.mask.astype(np.float32), t.affine)
    t2 = images.downsample(full, 2.0)
    m2 = sitk.Cast(images.resample(mask, t2) > 0.5, sitk.sitkUInt8)
    t4 = images.downsample(full, 4.0)
    m4 = sitk.Cast(images.resample(mask, t4) > 0.5, sitk.sitkUInt8)
    t6 = images.downsample(full, 6.0)
    m6 = sitk.Cast(images.resample(mask, t6) > 0.5, sitk.sitkUInt8)
    # The metric looks at the brain plus a 4 mm margin: the brain's edge counts, the scalp does not.
    m2_margin = sitk.BinaryDilate(m2, [2, 2, 2])
    m4_margin = sitk.BinaryDilate(m4, [1, 1, 1])
    return {"mask": mask, "t2": t2, "m2": m2, "m2_margin": m2_margin, "t4": t4, "m4_margin": m4_margin, "t6": t6, "m6": m6}


def _register(data: np.ndarray, affine: np.ndarray, s: StageASettings, steps: _Steps) -> StageAResult:
    tmpl = _template_images(load_template())

    steps.step("bias correction")
    native = images.to_sitk(data, affine)
    work = images.downsample(native, 2.0)
    low = images.downsample(work, 4.0)
    coarse = images.downsample(work, N4_SPACING_MM)
    head = head_mask(coarse)
    if s.bias_correction:
        log_bias = n4_log_bias(coarse, head)
        work = sitk.Divide(work, images.exp(images.resample(log_bias, work)))
        low = sitk.Divide(low, images.exp(images.resample(log_bias, low)))
    else:
        log_bias = None
    steps.end()

    steps.step("affine registration")
    init = initial_alignment(tmpl["t6"], tmpl["m6"], low, head)
    aff = affine_registration(tmpl["t2"], tmpl["m2_margin"], work, init, s)
    inside = _brain_inside_fraction(tmpl["m6"], aff, native)
    steps.end()
    early = _correlation(images.resample(work, tmpl["t2"], aff), tmpl["t2"], tmpl["m2"])
    if early < 0.5 * s.min_similarity:  # noise, a phantom or another contrast: stop before the rest of the work
        raise LDAEError(quality_failure({"similarity": round(early, 4), "brain_volume_ml": 0.0}, s))
    if inside < s.min_brain_inside:
        raise LDAEError(
            f"The field of view does not contain the whole brain: after registration to MNI about "
            f"{100 * (1 - inside):.0f}% of the brain lies outside the image. Load a scan that covers the whole "
            "brain (top of the head to below the cerebellum)."
        )

    steps.step("deformable registration")
    if s.deformable:
        levels = [(tmpl["t4"], tmpl["m4_margin"]), (tmpl["t2"], tmpl["m2_margin"])]
        forward, inverse = deformable_registration(levels, work, aff, s)
    else:
        forward = inverse = None
    to_native, to_mni = _composites(aff, forward, inverse)
    steps.end()

    steps.step("brain extraction")
    reg = Registration(data.shape, affine, to_native, to_mni, log_bias)
    ngrid = reg.native_grid()
    mask_native = images.resample(tmpl["mask"], ngrid, to_mni, order=1) > 0.5
    brain_mask = images.to_numpy(sitk.Cast(mask_native, sitk.sitkUInt8))
    steps.end()

    steps.step("resampling to MNI")
    mni = images.grid(MNI_SHAPE, MNI_AFFINE)
    corrected = sitk.Divide(images.resample(native, mni, to_native), reg.bias_on(mni, to_native))
    mni_mask = images.resample(tmpl["mask"], mni)
    brain_mni = images.to_numpy(corrected * mni_mask)
    clipped = clip_bright_voxels(brain_mni, s.intensity_ceiling)
    steps.end()

    steps.step("quality check")
    warped_work = images.resample(work, tmpl["t2"], to_native)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    q = {
        "similarity": round(_correlation(warped_work, tmpl["t2"], tmpl["m2"]), 4),
        "brain_volume_ml": round(float(brain_mask.sum()) * voxel_ml, 1),
        "brain_inside_fov": round(inside, 4),
        "affine_scale": round(float(np.linalg.det(np.array(aff.GetMatrix()).reshape(3, 3))), 4),
        "clipped_voxels": clipped,
    }
    reg.quality = q
    steps.end()
    failure = quality_failure(q, s)
    if failure:
        raise LDAEError(failure)
    if steps.progress is not None:
        steps.progress(steps.total, steps.total, "done")
    return StageAResult(brain_mni=brain_mni, brain_mask=brain_mask, registration=reg, quality=q, seconds=steps.seconds)
