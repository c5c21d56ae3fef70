"""Test helpers that need Slicer's side: a tiny model written by another Python, and a phantom as a volume node.

Used by the module's self-test inside Slicer and by the pytest harness over slicer-core; the model
and the phantom themselves come from ``LDAELib.testing`` (one maker of each).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from ..testing import phantom_brain
from .nodes import numpy_to_matrix

LIB_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds this LDAELib (the repository, or Slicer's qt-scripted-modules folder)."""

PHANTOM_SHAPE, PHANTOM_SPACING, PHANTOM_INTENSITY = (45, 54, 45), 4.0, 80.0


def make_tiny_bundle_with(python: str, folder: str | Path) -> Path:
    """``LDAELib.testing.make_tiny_bundle(folder)`` run by another Python (``PythonSlicer``, so torch
    never enters the application), with this LDAELib put first on its PYTHONPATH and the rest of it kept."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LIB_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = f"from LDAELib.testing import make_tiny_bundle; make_tiny_bundle({str(folder)!r})"
    subprocess.run([python, "-c", code], check=True, env=env, cwd=str(LIB_ROOT))
    return Path(folder)


def synthetic_brain(seed: int = 0, ventricles: float = 1.0):
    """The phantom the Slicer tests use: ``phantom_brain`` on a 4 mm MNI-like grid, in scanner-like units."""
    return phantom_brain(PHANTOM_SHAPE, PHANTOM_SPACING, ventricle_scale=ventricles, seed=seed, intensity=PHANTOM_INTENSITY)


def add_synthetic_brain(scene, name: str, seed: int = 0, ventricles: float = 1.0):
    """``synthetic_brain`` as a scalar volume node of ``scene`` (with its geometry and a display node)."""
    import slicer  # only inside Slicer or with slicer-core

    data, affine = synthetic_brain(seed=seed, ventricles=ventricles)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(numpy_to_matrix(affine))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data.transpose(2, 1, 0)))  # I,J,K -> K,J,I
    node.CreateDefaultDisplayNodes()
    return node
