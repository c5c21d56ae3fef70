"""Things to test with, when no scan or trained model is at hand: a brain phantom and a tiny model.

Used by the test suite (pytest), by the Slicer module's self-test inside Slicer, and by the
benchmarks. ``phantom_brain`` is not anatomy: an ellipsoidal "brain" with folds and two lateral
"ventricles" whose size is a parameter, so two phantoms can stand for two visits of one subject.
``tiny_config`` / ``make_tiny_bundle`` give a random-weight model far smaller than the demo model
(a 6 mm grid of 32×40×32 voxels: one edit takes well under a second on a CPU); its outputs are
noise, which exercises every code path, not the method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def phantom_brain(shape=(91, 109, 91), spacing_mm: float = 2.0, ventricle_scale: float = 1.0, seed: int = 0,
                  shift=(0.0, 0.0, 0.0), intensity: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """→ (float32 volume I×J×K in [0, ~intensity], 4×4 voxel → RAS affine (mm) centred like MNI152).

    ``ventricle_scale`` scales the ventricles (a later visit), ``shift`` moves the brain inside
    the grid (fractions of the half-extent per axis), ``seed`` draws the noise."""
    rng = np.random.default_rng(seed)
    g = [c - s for c, s in zip(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), shift)]
    r = (g[0] / 0.72) ** 2 + ((g[1] + 0.05) / 0.82) ** 2 + ((g[2] - 0.05) / 0.7) ** 2
    folds = 0.12 * np.cos(9 * g[0] + 2 * g[2]) * np.sin(8 * g[1]) * np.clip(r, 0, 1)
    v = np.where(r < 1, 0.75 + folds, 0.0)
    s = ventricle_scale
    for side in (-1, 1):
        vent = ((g[0] - side * 0.1) / (0.07 * s)) ** 2 + (g[1] / (0.3 * s)) ** 2 + ((g[2] - 0.08) / (0.12 * s)) ** 2
        v = np.where(vent < 1, 0.2, v)
    v = v + 0.015 * rng.standard_normal(shape) * (r < 1)
    affine = np.diag([-spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = [spacing_mm * (shape[0] - 1) / 2, -spacing_mm * (shape[1] - 1) / 2 - 18, -spacing_mm * (shape[2] - 1) / 2 + 18]
    return (np.clip(v, 0, None) * intensity).astype(np.float32), affine


def tiny_config():
    """An LDAEConfig far smaller than ``model.small_config`` (tests of plumbing, not of quality)."""
    from .model import LDAEConfig
    from .nets.autoencoder import AutoencoderConfig
    from .nets.semantic_encoder import SemanticEncoderConfig
    from .nets.unet import UNetConfig
    from .space import ModelSpaceConfig

    return LDAEConfig(
        autoencoder=AutoencoderConfig(num_channels=(8, 16, 16), norm_num_groups=8, num_res_blocks=1, attention_levels=(False, False, False)),
        unet=UNetConfig(base_channel=16, channel_multiplier=(1, 2), num_residual_blocks_of_a_block=1, attention_resolutions=(), latent_dim=32, norm_num_groups=8),
        encoder=SemanticEncoderConfig(widths=(8, 16, 32, 32), depths=(1, 1, 1, 1), emb_dim=32),
        space=ModelSpaceConfig(spacing_mm=(6.0, 6.0, 6.0), shape=(32, 40, 32)),
    )


def make_tiny_bundle(folder: str | Path, seed: int = 1) -> Path:
    """Write a tiny random model with the direction ``cn`` (+alpha → CN, −alpha → AD) as a bundle."""
    import torch

    from .directions import Direction
    from .weights import random_model
    from .weights.bundle import save_bundle

    model = random_model(tiny_config(), seed=seed)
    g = torch.Generator().manual_seed(seed + 2)
    e = model.config.encoder.emb_dim
    model.directions["cn"] = Direction("cn", torch.randn(e, generator=g), torch.zeros(e), torch.ones(e), positive="CN", negative="AD")
    return save_bundle(model, folder, name="tiny random test model",
                       licence="Random weights made for tests; no licence restrictions. Outputs are noise.")
