"""Intensity and resolution augmentation of model-space volumes, for the autoencoder stage.

A synthetic cohort made from two templates has one contrast, one noise level and one resolution,
while real scans that reach the model through stage A and stage B differ in all three. Each
training volume is changed, with probability ``p``, by a random draw of:

* a gamma curve x^γ, γ log-uniform in [0.7, 1.4] (tissue contrast);
* a monotone piecewise-linear intensity curve with 4 random knots, half-way to the identity
  (a grey/white-matter contrast of another sequence);
* a smooth multiplicative bias field exp(b), b trilinear from a 3×4×3 grid, SD up to 0.15
  (what N4 leaves behind);
* Gaussian noise inside the brain, SD up to 0.03 of the range (another scanner's SNR);
* with probability 1/3, a Gaussian blur of σ 0.3–1.0 voxel along one to three axes (thick slices
  or a coarser scan resampled to the model grid),

after which the volume is min–max normalised to [0, 1] again, as stage B leaves every scan.
The background (exactly 0 after brain extraction) stays 0. Every draw comes from the generator
passed in, so a step's batch is the same on every rank and after a resume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GAMMA_RANGE = (0.7, 1.4)
BIAS_SD_MAX = 0.15
NOISE_SD_MAX = 0.03
BLUR_PROBABILITY = 1.0 / 3.0
BLUR_SIGMA_RANGE = (0.3, 1.0)


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _gaussian_blur_axis(x: torch.Tensor, axis: int, sigma: float) -> torch.Tensor:
    """Blur a 3-D volume along one axis with a normalised Gaussian (reflect padding)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    moved = x.movedim(axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    flat = F.conv1d(F.pad(flat, (radius, radius), mode="reflect"), k.view(1, 1, -1))
    return flat.reshape(shape).movedim(-1, axis)


def augment_volume(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random intensity/resolution change of a model-space volume x (A×B×S float32 in [0, 1]).

    The random draws come from ``g`` (a CPU generator) and the arithmetic runs where ``x`` is, so a GPU
    trainer augments on the GPU; on a CPU the result does not depend on which of the two is used."""
    x = x.float()
    dev = x.device
    support = x > 0
    y = x.clamp(0.0, 1.0) ** math.exp(_uniform(g, math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1])))
    # A monotone curve through (0, 0) and (1, 1), mixed half-way with the identity.
    knots = torch.rand(5, generator=g) + 0.2
    ys = torch.cat([torch.zeros(1), torch.cumsum(knots, 0) / knots.sum()]).to(dev)
    xs = torch.linspace(0.0, 1.0, ys.numel(), device=dev)
    idx = torch.clamp(torch.bucketize(y, xs) - 1, 0, xs.numel() - 2)
    frac = (y - xs[idx]) / (xs[idx + 1] - xs[idx])
    curve = ys[idx] + frac * (ys[idx + 1] - ys[idx])
    y = 0.5 * y + 0.5 * curve
    sd = _uniform(g, 0.0, BIAS_SD_MAX)
    coarse = torch.randn((1, 1, 3, 4, 3), generator=g).to(dev) * sd
    field = F.interpolate(coarse, size=tuple(x.shape), mode="trilinear", align_corners=True)[0, 0]
    y = y * torch.exp(field)
    y = y + torch.randn(x.shape, generator=g).to(dev) * _uniform(g, 0.0, NOISE_SD_MAX)
    y = torch.where(support, y.clamp_min(0.0), torch.zeros_like(y))
    if _uniform(g) < BLUR_PROBABILITY:
        sigma = _uniform(g, *BLUR_SIGMA_RANGE)
        axes = [a for a in range(3) if _uniform(g) < 0.5] or [int(torch.randint(0, 3, (1,), generator=g))]
        for a in axes:
            y = _gaussian_blur_axis(y, a, sigma)
        y = torch.where(support, y, torch.zeros_like(y))  # brain extraction comes after resampling
    top = float(y.max())
    return (y / top).clamp(0.0, 1.0) if top > 0 else y
