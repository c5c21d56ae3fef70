"""Grids, resampling and smooth diffeomorphic deformations for the cohort generator.

Conventions:
* arrays are nibabel I,J,K; fields are channel-first (3, I, J, K) float32 in *voxel units of the
  grid they live on*; a displacement ``d`` is a sampling map: the output at voxel p shows the input
  at p + d(p), so ``div d > 0`` shrinks what lies there and ``div d < 0`` enlarges it;
* the output grid is the FSL MNI152 box (182×218×182 mm, LAS, origin voxel at x=90, y=−126, z=−72
  mm): 91×109×91 at 2 mm, 122×146×122 at 1.5 mm, the grid the authors' stage-A output lives on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MNI_BOX_MM = (182.0, 218.0, 182.0)
MNI_ORIGIN_MM = (90.0, -126.0, -72.0)


def mni_grid(spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """FSL-style MNI152 grid at ``spacing_mm`` → (shape I,J,K, 4×4 LAS affine voxel → world mm)."""
    s = float(spacing_mm)
    shape = tuple(int(math.ceil(b / s - 1e-6)) for b in MNI_BOX_MM)
    affine = np.diag([-s, s, s, 1.0])
    affine[:3, 3] = MNI_ORIGIN_MM
    return shape, affine


def voxel_grid(shape) -> torch.Tensor:
    """Identity map: (3, I, J, K) float32 voxel indices."""
    return torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))


def sample(volume: torch.Tensor, coords: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Trilinear sampling.

    Args:
        volume: (C, I, J, K) float32.
        coords: (3, *S) voxel coordinates (I, J, K order) into ``volume``.
        padding: ``zeros`` or ``border`` outside the volume.

    Returns:
        (C, *S) float32.
    """
    size = volume.shape[1:]
    norm = [coords[a] * (2.0 / (size[a] - 1)) - 1.0 for a in range(3)]
    grid = torch.stack([norm[2], norm[1], norm[0]], dim=-1)[None]  # grid_sample wants (x=K, y=J, z=I)
    out = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode=padding, align_corners=True)
    return out[0]


def apply_affine(m: np.ndarray, coords: torch.Tensor) -> torch.Tensor:
    """4×4 (or 3×4) matrix applied to (3, *S) coordinates."""
    m = torch.as_tensor(np.asarray(m, dtype=np.float64)[:3], dtype=torch.float32)
    flat = coords.reshape(3, -1)
    return (m[:, :3] @ flat + m[:, 3:4]).reshape(coords.shape)


def exp_velocity(v: torch.Tensor, max_step_vox: float = 0.5) -> torch.Tensor:
    """Scaling and squaring: a stationary velocity field (3, I, J, K) → its displacement exp(v) − id.

    The number of squarings is chosen so that the first step moves at most ``max_step_vox`` voxels,
    which keeps the result a diffeomorphism in practice.
    """
    vmax = float(v.abs().max())
    n = max(3, int(math.ceil(math.log2(max(vmax, 1e-6) / max_step_vox))) + 1)
    d = v / (2.0**n)
    base = voxel_grid(v.shape[1:])
    for _ in range(n):
        d = d + sample(d, base + d, padding="border")
    return d


def smooth_noise(rng: np.random.Generator, channels: int, control_mm: float, sigma_ctrl: float) -> np.ndarray:
    """Gaussian-smoothed white noise on a control grid covering the MNI box, unit RMS per channel.

    The grid (spacing ``control_mm``) does not depend on the output grid, so a subject drawn with
    the same generator looks the same at any output spacing.

    Returns:
        (channels, I, J, K) float32 on the control grid (LAS, same origin as :func:`mni_grid`).
    """
    from scipy import ndimage

    shape = tuple(int(math.ceil(b / control_mm)) + 1 for b in MNI_BOX_MM)
    out = np.empty((channels, *shape), dtype=np.float32)
    for c in range(channels):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_ctrl, mode="wrap")
        out[c] = field / field.std()
    return out


def control_to_grid(control: np.ndarray, control_mm: float, shape, affine: np.ndarray) -> torch.Tensor:
    """Trilinear upsampling of a control-grid field (from :func:`smooth_noise`) onto an output grid."""
    ctrl_affine = np.diag([-control_mm, control_mm, control_mm, 1.0])
    ctrl_affine[:3, 3] = MNI_ORIGIN_MM
    m = np.linalg.inv(ctrl_affine) @ affine
    coords = apply_affine(m, voxel_grid(shape))
    return sample(torch.from_numpy(control), coords, padding="border")


def poisson_flow(source: np.ndarray, pad: int = 16) -> np.ndarray:
    """Irrotational displacement field whose divergence is ``source``: d = ∇φ with ∇²φ = source.

    Args:
        source: (I, J, K) float, net zero (what one region loses another gains).
        pad: zero padding (voxels) against the FFT's wrap-around.

    Returns:
        (3, I, J, K) float32, voxel units (central differences of φ).
    """
    src = np.pad(source.astype(np.float64), pad)
    src -= src.mean()
    src_hat = np.fft.rfftn(src)
    lam = np.zeros(src_hat.shape)
    for a, n in enumerate(src.shape):  # eigenvalues of the 7-point Laplacian
        f = np.fft.rfftfreq(n) if a == 2 else np.fft.fftfreq(n)
        lam = lam + (2.0 * np.cos(2.0 * np.pi * f) - 2.0).reshape([-1 if b == a else 1 for b in range(3)])
    lam[0, 0, 0] = 1.0
    phi_hat = src_hat / lam
    phi_hat[0, 0, 0] = 0.0
    phi = np.fft.irfftn(phi_hat, s=src.shape, axes=(0, 1, 2))
    grad = np.gradient(phi)
    crop = tuple(slice(pad, pad + n) for n in source.shape)
    return np.stack([g[crop] for g in grad]).astype(np.float32)


def rotation_matrix(angles_rad) -> np.ndarray:
    """Rotation about x, then y, then z (radians) → 3×3."""
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx
