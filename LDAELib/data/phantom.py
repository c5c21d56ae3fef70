"""A smooth brain-like phantom on an MNI-like grid, for demos and tests when no scan is at hand.

Not anatomy: an ellipsoidal "brain" with folds and two lateral "ventricles" whose size is a parameter,
so two phantoms can stand for two visits of one subject.
"""

from __future__ import annotations

import numpy as np


def phantom_brain(shape=(91, 109, 91), spacing_mm: float = 2.0, ventricle_scale: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """→ (float32 volume I×J×K in [0, ~1], 4×4 RAS affine centred like MNI152)."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
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
    return np.clip(v, 0, None).astype(np.float32), affine
