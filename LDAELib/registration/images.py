"""nibabel volumes ⇄ SimpleITK images, and the resampling helpers stage A uses.

nibabel: array I,J,K with a 4×4 voxel → world affine in RAS mm. SimpleITK: array K,J,I (what
``GetArrayFromImage`` gives), world in LPS mm, geometry as origin, spacing and direction cosines.
The conversion is exact for any affine, oblique or sheared (ITK accepts non-orthogonal directions).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """float32 SimpleITK image of ``data`` (I, J, K) placed by the RAS ``affine``."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    set_geometry(img, affine)
    return img


def set_geometry(img: sitk.Image, affine: np.ndarray) -> sitk.Image:
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    img.SetSpacing(spacing.tolist())
    img.SetDirection((lps / spacing).flatten().tolist())
    img.SetOrigin((RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]).tolist())
    return img


def to_numpy(img: sitk.Image) -> np.ndarray:
    """I,J,K array (a copy) of a scalar SimpleITK image."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))


def grid(shape: tuple[int, int, int], affine: np.ndarray) -> sitk.Image:
    """An (empty, uint8) image that only carries a grid: size ``shape`` (I, J, K) placed by ``affine``."""
    img = sitk.Image([int(n) for n in shape], sitk.sitkUInt8)
    return set_geometry(img, affine)


def isotropic_grid(img: sitk.Image, spacing_mm: float) -> sitk.Image:
    """A grid of ``spacing_mm`` voxels in ``img``'s orientation covering the same field of view."""
    size = np.array(img.GetSize(), dtype=float)
    sp = np.array(img.GetSpacing())
    n = np.maximum(np.round(size * sp / spacing_mm).astype(int), 1)
    out = sitk.Image([int(x) for x in n], sitk.sitkUInt8)
    out.SetSpacing([float(spacing_mm)] * 3)
    out.SetDirection(img.GetDirection())
    d = np.array(img.GetDirection()).reshape(3, 3)
    # Same field-of-view corner (voxel edge), then half a new voxel inwards.
    out.SetOrigin((np.array(img.GetOrigin()) + d @ (-0.5 * sp + 0.5 * spacing_mm)).tolist())
    return out


def resample(
    img: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    *,
    order: int = 1,
    default: float = 0.0,
) -> sitk.Image:
    """``img`` sampled on ``reference``'s grid; ``transform`` maps reference points to ``img`` points
    (ITK's resampling convention). ``order``: 0 nearest, 1 linear, 3 B-spline. Output float32."""
    interp = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}[order]
    return sitk.Resample(img, reference, transform or sitk.Transform(), interp, float(default), sitk.sitkFloat32)


def downsample(img: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``img`` on an isotropic ``spacing_mm`` grid of its own orientation, Gaussian-smoothed first along
    the axes finer than ``spacing_mm`` so that fine input does not alias."""
    sp = np.array(img.GetSpacing())
    # Gaussian whose FWHM, added to the voxel's, gives the new voxel size (0 where already coarser).
    variance = np.clip((spacing_mm**2 - sp**2) / (8.0 * np.log(2.0)), 0.0, None)
    variance[variance < (0.25 * sp) ** 2] = 0.0
    src = img
    if variance.any():
        src = sitk.DiscreteGaussian(img, variance.tolist(), 32, 0.01, True)
    return resample(src, isotropic_grid(img, spacing_mm))


def exp(img: sitk.Image) -> sitk.Image:
    """exp(img) as float32 (SimpleITK's Exp promotes to float64)."""
    return sitk.Cast(sitk.Exp(img), sitk.sitkFloat32)
