"""Where an input scan stands, and how it reaches model space and comes back (``InputSpace``).

Three kinds of input, one way through each::

    "raw"    a scan from the scanner (any orientation, with skull): stage A (N4, brain extraction,
             registration to MNI; ``LDAELib.registration``), then stage B (``LDAELib.space``)
    "mni"    a brain-extracted scan registered to MNI: stage B only. Its voxels are first put in the
             orientation of the MNI grid the models were trained on (L,A,S: the FSL MNI152 box), so
             the same brain stored in another voxel order reaches the networks identically; the
             result goes back to the scan's own order. It is checked to look like a registered
             brain (not noise, a box, a mask or a head with skull) before any network runs.
    "model"  already in model space: used exactly as stored.

``to_model(image, kind, model_space)`` returns a ``PreparedInput``: the model-space array and the
way back onto the scan's grid (``to_source``), plus the map from the scan's RAS points to model
voxels (``ras_to_model``, for previews of the slices on screen).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ..errors import LDAEError
from ..space import ModelSpaceConfig, from_model_space, model_space_identity, to_model_space
from .image import Image

INPUT_SPACES = ("raw", "mni", "model")
DESCRIPTIONS = {
    "raw": "raw scan: stage A (N4, brain extraction, registration to MNI), then stage B",
    "mni": "brain-extracted and registered to MNI: stage B only",
    "model": "model space: used as stored",
}
MNI_AXES = ("L", "A", "S")
"""Voxel order of the MNI grid the models were trained on (FSL's MNI152 box, as stage A writes it)."""


def check_input_space(kind: str) -> str:
    if kind not in INPUT_SPACES:
        raise LDAEError(f"unknown input space {kind!r}; use one of {', '.join(INPUT_SPACES)}")
    return kind


@dataclass
class PreparedInput:
    """One input scan in model space.

    x: model-space float32 array (A, B, S). to_source(y, rescale_intensity=True, order=1): a
    model-space array on the scan's grid and intensity scale (float32 I,J,K). ras_to_model: N×3 RAS
    points of the scan's world → N×3 continuous model voxel indices. model_affine: the model grid
    in the scan's (or, for raw scans, MNI) world.
    """

    image: Image
    kind: str
    x: np.ndarray
    to_source: Callable[..., np.ndarray]
    ras_to_model: Callable[[np.ndarray], np.ndarray]
    model_affine: np.ndarray
    quality: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]


def _affine_points(model_affine: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    inv = np.linalg.inv(np.asarray(model_affine, dtype=np.float64))
    return lambda pts: (np.c_[np.asarray(pts, dtype=np.float64), np.ones(len(pts))] @ inv.T)[:, :3]


def registered_points(nctx) -> Callable[[np.ndarray], np.ndarray]:
    """Scan RAS points → model voxel indices through the scan's registration to MNI (looked up
    when first asked for: only previews of the slices on screen need it)."""

    def points(pts: np.ndarray) -> np.ndarray:
        transform = nctx.registration.native_to_mni
        lps = np.asarray(pts, dtype=np.float64) * [-1.0, -1.0, 1.0]  # ITK works in LPS
        mni = np.array([transform.TransformPoint(tuple(map(float, p))) for p in lps]) * [-1.0, -1.0, 1.0]
        return _affine_points(nctx.space.model_affine)(mni)

    return points


def registration_api():
    """Stage A (raw scan → MNI → model space, and back) from ``LDAELib.registration``:
    ``(to_model_space_native, from_model_space_native, StageACache)``."""
    try:
        from ..registration import StageACache, from_model_space_native, to_model_space_native
    except ImportError as err:
        raise LDAEError(
            f"this scan is marked as raw (not registered to MNI), but raw-scan registration is not available here ({err}). "
            "Register the scan to MNI space first (brain-extracted), and mark it as registered"
        ) from None
    return to_model_space_native, from_model_space_native, StageACache


# ------------------------------------------------------------------------------------- orientation
def _to_mni_order(data: np.ndarray, affine: np.ndarray):
    """The voxels in the MNI grid's order (L,A,S) → (data, affine, way back), or the input itself."""
    ornt = io_orientation(affine)
    target = axcodes2ornt(MNI_AXES)
    if np.array_equal(ornt, target):
        return data, affine, None
    forward = ornt_transform(ornt, target)
    back = ornt_transform(target, ornt)
    moved = np.ascontiguousarray(apply_orientation(data, forward))
    new_affine = np.asarray(affine, dtype=np.float64) @ inv_ornt_aff(forward, data.shape)
    return moved, new_affine, lambda y: np.ascontiguousarray(apply_orientation(y, back))


# ------------------------------------------------------------------------------------- plausibility
@functools.lru_cache(maxsize=4)
def _template_in_model_space(space: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The ICBM template brain (T1 in [0, 1]) and its mask in model space, through the MNI grid as a
    registered scan would come."""
    from scipy.ndimage import affine_transform

    from ..registration.template import MNI_AFFINE, MNI_SHAPE, load_template

    tpl = load_template()
    vox = np.linalg.inv(tpl.affine) @ MNI_AFFINE  # MNI grid voxel → template voxel
    t1 = affine_transform(tpl.t1, vox[:3, :3], vox[:3, 3], output_shape=MNI_SHAPE, order=1, mode="constant", cval=0.0)
    cfg = ModelSpaceConfig(spacing_mm=space[0], shape=space[1])
    x, _ = to_model_space(t1, MNI_AFFINE, cfg)
    return x, x > 0.05


PLAUSIBLE_DICE = 0.7
PLAUSIBLE_VOLUME = (0.6, 1.6)


def registered_brain_problem(x: np.ndarray, space: ModelSpaceConfig) -> str | None:
    """Why a model-space volume does not look like a brain-extracted T1 scan registered to MNI, or None.

    Compared with the ICBM 2009a template brought the same way: the volume's support (voxels above
    5 % of its range) must overlap the template brain (Dice ≥ 0.7) with a similar volume (0.6–1.6×);
    a box that fills its bounding box or a mask with a flat inside are refused too."""
    try:
        _, mask = _template_in_model_space((tuple(space.spacing_mm), tuple(space.shape)))
    except LDAEError:
        return None  # no template installed: nothing to compare with
    support = x > 0.05
    n, m = int(support.sum()), int(mask.sum())
    if n < 0.05 * m:
        return "almost all of it is empty in model space (a few voxels, or a brain outside the MNI field of view)"
    ratio = n / m
    dice = 2.0 * float(np.logical_and(support, mask).sum()) / (n + m)
    if ratio > PLAUSIBLE_VOLUME[1]:
        return (f"it fills {ratio:.1f}× the volume of a brain in MNI space (a head with skull, noise, or not registered)")
    if ratio < PLAUSIBLE_VOLUME[0] or dice < PLAUSIBLE_DICE:
        return f"it overlaps the MNI template brain poorly (Dice {dice:.2f}; a registered brain gives over 0.8)"
    idx = np.nonzero(support)
    box = np.prod([int(i.max()) - int(i.min()) + 1 for i in idx])
    if n / box > 0.85:
        return "it is a box, not a brain"
    inside = x[support]
    if float(np.mean(inside >= 0.98)) > 0.3 or float(inside.std()) < 0.02:
        return "its inside is flat (a mask or a label map, not a T1 scan)"
    return None


# ------------------------------------------------------------------------------------- to model space
def to_model(image: Image, kind: str, space: ModelSpaceConfig, *, stage_a=None, cache=None,
             progress=None, cancel=None, check: bool = True) -> PreparedInput:
    """``image`` into model space as ``kind`` says ("raw", "mni", "model"), with the way back.

    stage_a: ``registration.StageASettings`` for raw scans (default settings when None); cache: a
    ``registration.StageACache`` (or None); progress(done, total, stage) and cancel() for stage A.
    ``check``: refuse an "mni" input that does not look like a registered brain."""
    check_input_space(kind)
    if kind == "raw":
        to_native, from_native, _ = registration_api()
        kwargs = {"cache": cache, "progress": progress, "cancel": cancel}
        if stage_a is not None:
            kwargs["settings"] = stage_a
        x, nctx = to_native(image.data, image.affine, space, **kwargs)
        return PreparedInput(image, kind, x, lambda y, c=nctx, **kw: from_native(y, c, **kw), registered_points(nctx),
                             getattr(getattr(nctx, "space", None), "model_affine", np.eye(4)), dict(getattr(nctx, "quality", None) or {}))
    if kind == "model":
        x, ctx = model_space_identity(image.data, image.affine, space)
        return PreparedInput(image, kind, x, lambda y, c=ctx, **kw: from_model_space(y, c, **kw), _affine_points(ctx.model_affine), ctx.model_affine)
    data, affine, undo = _to_mni_order(image.data, image.affine)
    x, ctx = to_model_space(data, affine, space)
    if check:
        problem = registered_brain_problem(x, space)
        if problem:
            raise LDAEError(f"{image.name} does not look like a brain-extracted T1 scan registered to MNI: {problem}. "
                            "Give the raw scan without --registered (it is then registered first), or check the file")
    if undo is None:
        back = lambda y, c=ctx, **kw: from_model_space(y, c, **kw)  # noqa: E731
    else:
        back = lambda y, c=ctx, u=undo, **kw: u(from_model_space(y, c, **kw))  # noqa: E731
    return PreparedInput(image, kind, x, back, _affine_points(ctx.model_affine), ctx.model_affine)
