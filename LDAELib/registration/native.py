"""A raw scan to model space and back: stage A (registration to MNI) then stage B (``space``).

    scan (its own grid) ──stage A──► brain on the MNI grid ──stage B──► x (model space)
    model output ──(undo min-max; model grid → MNI → scan grid, one interpolation; × bias field)──► scan grid

Arrays are nibabel I,J,K with RAS affines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..space import ModelSpaceConfig, SpaceContext, to_model_space
from .stage_a import StageAResult, StageASettings, register_to_mni
from .store import StageACache, scan_key
from .template import MNI_AFFINE
from .transform import Registration


@dataclass
class NativeContext:
    """What :func:`from_model_space_native` needs to bring a model-space volume onto the scan's grid.

    Attributes:
        space: the stage-B context between the MNI grid and model space.
        registration: the scan's registration to MNI.
        restore_bias: multiply results by the scan's bias field, so they have its shading.
        brain_mask: uint8 (I, J, K) brain mask on the scan's grid.
        quality: stage A's quality figures.
        key: the scan's cache key.
    """

    space: SpaceContext
    registration: Registration
    restore_bias: bool = True
    brain_mask: np.ndarray | None = None
    quality: dict | None = None
    key: str | None = None


def run_stage_a(
    data: np.ndarray,
    affine: np.ndarray,
    settings: StageASettings | None = None,
    *,
    cache: StageACache | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[StageAResult, str]:
    """Stage A on a scan, from ``cache`` when it was already done → (result, cache key)."""
    settings = settings or StageASettings()
    key = scan_key(data, affine, settings)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit, key
    result = register_to_mni(data, affine, settings, progress=progress, cancel=cancel)
    if cache is not None:
        cache.put(key, result)
    return result, key


def to_model_space_native(
    data: np.ndarray,
    affine: np.ndarray,
    config: ModelSpaceConfig = ModelSpaceConfig(),
    settings: StageASettings | None = None,
    *,
    cache: StageACache | None = None,
    restore_bias: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, NativeContext]:
    """A raw scan (any orientation, with or without skull) into model space.

    Returns:
        ``(x, ctx)``: ``x`` float32 of ``config.shape`` in [0, 1], exactly what stage B makes of the
        registered brain; ``ctx`` for :func:`from_model_space_native`.
    """
    result, key = run_stage_a(data, affine, settings, cache=cache, progress=progress, cancel=cancel)
    x, space_ctx = to_model_space(result.brain_mni, MNI_AFFINE, config)
    ctx = NativeContext(space_ctx, result.registration, restore_bias, result.brain_mask, result.quality, key)
    return x, ctx


def from_model_space_native(x: np.ndarray, ctx: NativeContext, *, rescale_intensity: bool = True, order: int = 1) -> np.ndarray:
    """A model-space volume (e.g. an edited brain) on the scan's own grid and intensity scale.

    The model grid is placed in MNI space by ``ctx.space.model_affine`` and sampled once at every
    scan voxel through the registration (trilinear for ``order`` 1, nearest for 0). The min-max is
    undone, and with ``ctx.restore_bias`` the bias field is put back. Scan voxels outside the model's
    field of view get the background (the intensity minimum).

    Args:
        x: float array of the model shape (I, J, K); leading axes of length 1 are dropped.

    Returns:
        float32 (I, J, K) on the scan's grid.
    """
    arr = np.asarray(x, dtype=np.float32)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    sc = ctx.space
    if arr.shape != tuple(sc.model_shape):
        from ..errors import LDAEError

        raise LDAEError(
            f"The model-space volume has shape {arr.shape}, expected {tuple(sc.model_shape)}; it must come "
            "from the same model space as the context."
        )
    if rescale_intensity:
        arr = arr * np.float32(sc.intensity_max - sc.intensity_min) + np.float32(sc.intensity_min)
        background = sc.background * (sc.intensity_max - sc.intensity_min) + sc.intensity_min
    else:
        background = sc.background
    return ctx.registration.to_native(
        arr, sc.model_affine, order=order, default=background, restore_bias=ctx.restore_bias and rescale_intensity
    )


def to_mni(data: np.ndarray, affine: np.ndarray, settings: StageASettings | None = None, *, cache: StageACache | None | bool = True,
           progress=None, cancel=None):
    """Stage A for callers that work on the MNI grid (the Slicer worker).

    Args:
        cache: a :class:`StageACache`, True for the default one, None or False for none.

    Returns:
        ``(brain_mni, mni_affine, back)``: the registered brain on the MNI grid (float32 I, J, K),
        that grid's affine, and ``back(array_on_the_mni_grid) -> array on the scan's grid`` (with the
        scan's bias field put back).
    """
    store = StageACache() if cache is True else (cache or None)
    result, _ = run_stage_a(data, affine, settings, cache=store, progress=progress, cancel=cancel)
    reg = result.registration

    def back(arr: np.ndarray) -> np.ndarray:
        return reg.to_native(arr, MNI_AFFINE, restore_bias=True)

    return result.brain_mni, MNI_AFFINE.copy(), back
