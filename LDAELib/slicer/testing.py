"""Small things to test with, inside Slicer (the module's Test class) and in pytest (slicer-core).

A tiny random-weight model (6 mm grid, 32×40×32 voxels, a few hundred thousand parameters: one
edit takes well under a second on a CPU) and smooth synthetic head-like volumes. The model's
outputs are noise; they exercise every code path, not the method.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

LIB_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds this LDAELib (the repository, or Slicer's qt-scripted-modules folder)."""


def tiny_config():
    """An LDAEConfig far smaller than ``model.small_config`` (tests of plumbing, not of quality)."""
    from ..model import LDAEConfig
    from ..nets.autoencoder import AutoencoderConfig
    from ..nets.semantic_encoder import SemanticEncoderConfig
    from ..nets.unet import UNetConfig
    from ..space import ModelSpaceConfig

    return LDAEConfig(
        autoencoder=AutoencoderConfig(num_channels=(8, 16, 16), norm_num_groups=8, num_res_blocks=1, attention_levels=(False, False, False)),
        unet=UNetConfig(base_channel=16, channel_multiplier=(1, 2), num_residual_blocks_of_a_block=1, attention_resolutions=(), latent_dim=32, norm_num_groups=8),
        encoder=SemanticEncoderConfig(widths=(8, 16, 32, 32), depths=(1, 1, 1, 1), emb_dim=32),
        space=ModelSpaceConfig(spacing_mm=(6.0, 6.0, 6.0), shape=(32, 40, 32)),
    )


def make_tiny_bundle(folder: str | Path, seed: int = 1) -> Path:
    """Write a tiny random model with the direction ``cn`` (+alpha → CN, −alpha → AD) as a bundle."""
    import torch

    from ..directions import Direction
    from ..weights import random_model
    from ..weights.bundle import save_bundle

    model = random_model(tiny_config(), seed=seed)
    g = torch.Generator().manual_seed(seed + 2)
    e = model.config.encoder.emb_dim
    model.directions["cn"] = Direction("cn", torch.randn(e, generator=g), torch.zeros(e), torch.ones(e), positive="CN", negative="AD")
    return save_bundle(model, folder, name="tiny random test model",
                       licence="Random weights made for tests; no licence restrictions. Outputs are noise.")


def make_tiny_bundle_with(python: str, folder: str | Path) -> Path:
    """``make_tiny_bundle(folder)`` run by another Python (``PythonSlicer``, so torch never enters
    the application), with this LDAELib put first on its PYTHONPATH and the rest of it kept."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LIB_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = f"from LDAELib.slicer.testing import make_tiny_bundle; make_tiny_bundle({str(folder)!r})"
    subprocess.run([python, "-c", code], check=True, env=env, cwd=str(LIB_ROOT))
    return Path(folder)


def synthetic_brain(shape=(45, 54, 45), spacing=4.0, seed: int = 0, ventricles: float = 1.0):
    """A smooth head-like volume (I,J,K order) and an MNI-like 4×4 voxel → RAS affine (mm).

    ``ventricles`` scales the dark central ellipsoid, to make a 'later visit'.
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = sum(g**2 / a**2 for g, a in zip(grids, (0.75, 0.8, 0.7)))
    v = np.where(r < 1, 60.0 + 30.0 * np.cos(6 * grids[0]) * np.sin(5 * grids[1]), 0.0)
    vent = sum(g**2 / (a * ventricles) ** 2 for g, a in zip(grids, (0.15, 0.25, 0.15)))
    v = np.where(vent < 1, 15.0, v) + rng.standard_normal(shape) * (r < 1)
    affine = np.diag([-spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [spacing * (shape[0] - 1) / 2, -spacing * (shape[1] - 1) / 2 - 18, -spacing * (shape[2] - 1) / 2 + 18]
    return v.astype(np.float32), affine


def add_synthetic_brain(scene, name: str, seed: int = 0, ventricles: float = 1.0):
    """``synthetic_brain`` as a scalar volume node of ``scene`` (with its geometry and a display node)."""
    import slicer

    from .nodes import numpy_to_matrix

    data, affine = synthetic_brain(seed=seed, ventricles=ventricles)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(numpy_to_matrix(affine))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data.transpose(2, 1, 0)))  # I,J,K -> K,J,I
    node.CreateDefaultDisplayNodes()
    return node
