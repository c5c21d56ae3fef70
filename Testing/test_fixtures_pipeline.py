"""The whole LDAE, loaded from the authors' file format, reproduces the official 3-step pipelines.

Tolerance (fixtures/README.md): pipeline tensors within 1e-3 × max|ref|.
"""

from __future__ import annotations

import torch

from LDAELib.directions import Direction
from LDAELib.pipeline import LDAEPipeline
from conftest import load_fixture, rel_err

TOL = 1e-3


def _pipe(model):
    return LDAEPipeline(model, device="cpu", dtype=torch.float32)


def test_autoencoding_matches_official(official_model):
    ref = load_fixture("pipeline_autoencode_ddim3.pt")
    pipe = _pipe(official_model)
    enc = pipe.encode(ref["x_image"], steps=3, latent_seed=12)  # the fixture drew ε after manual_seed(12)
    assert rel_err(enc.z0, ref["z0_scaled"]) < TOL
    assert rel_err(enc.y_sem, ref["y_sem"]) < TOL
    assert rel_err(enc.z_T[3], ref["z_T"]) < TOL
    x_hat, z0_hat, _ = pipe.edit(enc, None, [0.0], 3, return_latents=True)
    assert rel_err(z0_hat, ref["z0_hat"]) < TOL
    assert rel_err(x_hat, ref["x_hat"]) < TOL


def test_manipulation_matches_official(official_model):
    ref = load_fixture("pipeline_manipulation_ddim3.pt")
    x_image = load_fixture("pipeline_autoencode_ddim3.pt")["x_image"]  # the same scan
    direction = Direction("fixture", ref["direction"], ref["semantic_mean"], ref["semantic_std"])
    pipe = _pipe(official_model)
    enc = pipe.encode(x_image, steps=3, latent_seed=12)
    assert rel_err(enc.z_T[3], ref["z_T"]) < TOL
    x, z0, y = pipe.edit(enc, direction, [2.5], 3, return_latents=True)
    assert rel_err(y, ref["y_sem_manipulated"]) < TOL
    assert rel_err(z0, ref["z0_manipulated"]) < TOL
    assert rel_err(x, ref["x_manipulated"]) < TOL


def test_interpolation_matches_official(official_model):
    ref = load_fixture("pipeline_interpolation_ddim3.pt")
    pipe = _pipe(official_model)
    e0 = pipe.encode(ref["x_image_0"], steps=3, latent_seed=12)
    e1 = pipe.encode(ref["x_image_1"], steps=3, latent_seed=42)
    assert rel_err(e0.z_T[3], ref["z_T_0"]) < TOL
    assert rel_err(e1.z_T[3], ref["z_T_1"]) < TOL
    x, z0, y, z_t = pipe.interpolate(e0, e1, [0.3], 3, return_latents=True)
    assert rel_err(y, ref["y_sem_lerp"]) < TOL
    assert rel_err(z_t, ref["z_T_slerp"]) < TOL
    assert rel_err(z0, ref["z0_interp"]) < TOL
    assert rel_err(x, ref["x_interp"]) < TOL


def test_semantic_only_sampling_matches_official(official_model):
    ref = load_fixture("pipeline_semantic_only_sample_ddim3.pt")
    pipe = _pipe(official_model)
    x = pipe.sample(ref["y_sem"], ref["x_T"], steps=3)
    assert rel_err(x, ref["x"]) < TOL
    assert rel_err(x, ref["x"]) < TOL
