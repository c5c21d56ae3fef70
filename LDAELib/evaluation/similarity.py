"""Image similarity of 3-D volumes (SSIM, PSNR, MSE) and of 2-D slices (``slice_ssim``).

Used to judge whether a faster compute mode (bfloat16, channels-last…) reproduces the float32
output, and to compare reconstructions with their input. Every function takes the volume under test
first and the **reference** second: ``metric(a, b)`` with ``b`` the reference, whose value range sets
the default ``data_range``.

Volumes are numpy arrays or torch tensors of shape A×B×S, optionally with leading singleton axes
(1×1×A×B×S as the pipeline returns them). Everything is computed in float64 on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

SSIM_SIGMA = 1.5
"""Standard deviation (voxels) of the Gaussian window (Wang et al. 2004)."""
SSIM_TRUNCATE = 3.5
"""The window is cut at 3.5 σ: radius int(3.5·1.5 + 0.5) = 5, an 11-voxel window (as skimage)."""
SSIM_K1, SSIM_K2 = 0.01, 0.03


def as_volume(x, dtype=np.float64) -> np.ndarray:
    """numpy/torch, A×B×S or 1×…×1×A×B×S → a numpy A×B×S array of ``dtype`` (the evaluation's one reader
    of volumes held as arrays or tensors)."""
    if hasattr(x, "detach"):  # a torch tensor (any dtype or device; bfloat16 has no numpy type)
        x = x.detach().to("cpu").double().numpy()
    a = np.asarray(x, dtype=dtype)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected a 3-D volume (optionally with leading singleton axes), got shape {np.shape(x)}")
    return a


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_volume(a), as_volume(b)
    if x.shape != y.shape:
        raise ValueError(f"volumes differ in shape: {x.shape} vs reference {y.shape}")
    return x, y


def _range(ref: np.ndarray, data_range: float | None) -> float:
    r = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    if not r > 0:
        raise ValueError("data_range must be positive (the reference volume is constant: pass data_range)")
    return r


def mse(a, b) -> float:
    """Mean squared error between ``a`` and the reference ``b`` (symmetric), in float64."""
    x, y = _pair(a, b)
    return float(np.mean((x - y) ** 2))


def psnr(a, b, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of ``a`` against the reference ``b``.

    10·log10(R² / MSE) with R = ``data_range``, by default max(b) − min(b). ``inf`` when a == b.
    """
    x, y = _pair(a, b)
    r = _range(y, data_range)
    m = float(np.mean((x - y) ** 2))
    return math.inf if m == 0.0 else 10.0 * math.log10(r * r / m)


def ssim(a, b, data_range: float | None = None, mask=None) -> float:
    """Mean structural similarity (Wang et al. 2004) of volume ``a`` against the reference ``b``.

    Gaussian-weighted local statistics (σ = 1.5 voxels, window cut at 3.5 σ → 11 voxels, separable,
    ``scipy.ndimage.gaussian_filter`` with mirror ('reflect') edges), population covariances,
    K1 = 0.01, K2 = 0.03, C = (K·R)² with R = ``data_range`` (default max(b) − min(b) of the
    reference). The SSIM map is averaged over the volume less a 5-voxel border, where the window
    would reach past the edge. This equals ``skimage.metrics.structural_similarity(a, b,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R)`` on float64 input.

    ``mask`` (boolean, the volume's shape): average the SSIM map over the mask's voxels (inside the
    border) only, e.g. ``brain_mask(b)`` for the SSIM inside the brain.

    Returns a float in [−1, 1]; 1 means identical. Each axis must be at least 11 voxels long.
    """
    x, y = _pair(a, b)
    r = _range(y, data_range)
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(x.shape) < 2 * pad + 1:
        raise ValueError(f"SSIM needs every axis ≥ {2 * pad + 1} voxels, got {x.shape}")

    def blur(v: np.ndarray) -> np.ndarray:
        return gaussian_filter(v, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    inner = tuple(slice(pad, n - pad) for n in s.shape)
    if mask is None:
        return float(s[inner].mean(dtype=np.float64))
    m = as_volume(mask).astype(bool)
    if m.shape != s.shape:
        raise ValueError(f"the mask's shape {m.shape} is not the volumes' {s.shape}")
    sel = s[inner][m[inner]]
    return float(sel.mean(dtype=np.float64)) if sel.size else float("nan")


BRAIN_THRESHOLD, BRAIN_DILATION = 0.02, 2


def brain_mask(x, threshold: float = BRAIN_THRESHOLD, dilate: int = BRAIN_DILATION) -> np.ndarray:
    """The brain of a model-space volume (intensities in [0, 1]): voxels above ``threshold``, dilated
    by ``dilate`` voxels so that the brain's edge counts as inside. Boolean, the volume's shape."""
    from scipy.ndimage import binary_dilation

    v = as_volume(x)
    m = v > threshold
    return binary_dilation(m, iterations=dilate) if dilate else m


def slice_ssim(a, b, data_range: float) -> float:
    """SSIM of 2-D image ``a`` against the reference ``b`` with the conventions of ``ssim`` (Gaussian
    σ 1.5, 11-voxel window, 5-pixel border left out)."""
    x = np.asarray(a.detach().cpu().double() if hasattr(a, "detach") else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu().double() if hasattr(b, "detach") else b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"slice_ssim takes two 2-D images of one shape, got {x.shape} and {y.shape}")

    def blur(v):
        return gaussian_filter(v, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx, vy, vxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return float(s[pad:-pad, pad:-pad].mean())
