"""Shared test fixtures: the official reference numbers and a model folder laid out like a download."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LDAE_FIXTURES", REPO.parent / "shared" / "spec" / "official" / "fixtures"))

torch.set_num_threads(2)


def fixture_path(name: str) -> Path:
    p = FIXTURES / name
    if not p.exists():
        pytest.skip(f"official fixtures not found at {FIXTURES} (set LDAE_FIXTURES)")
    return p


def load_fixture(name: str):
    return torch.load(fixture_path(name), map_location="cpu", weights_only=True)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max|a − ref| / max|ref|."""
    return float((a.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


@pytest.fixture(scope="session")
def official_dir(tmp_path_factory) -> Path:
    """The fixture weights under the authors' file names, as a user's download would be laid out.

    The reduced autoencoder uses 8 GroupNorm groups, which shapes cannot tell, and the fixtures'
    volumes are 32×64×64: ldae_config.json says both (the pipeline refuses volumes of another size).
    """
    d = tmp_path_factory.mktemp("official")
    shutil.copy(fixture_path("aekl_state_dict.pt"), d / "autoencoderkl.pth")
    shutil.copy(fixture_path("semantic_encoder_state_dict.pt"), d / "encoder.pth")
    shutil.copy(fixture_path("shift_unet_state_dict_fp16.pt"), d / "decoder.pth")
    (d / "ldae_config.json").write_text(json.dumps({"vae_args": {"norm_num_groups": 8}, "space": {"shape": [32, 64, 64], "spacing_mm": [1.5, 1.5, 1.5]}}))
    return d


@pytest.fixture(scope="session")
def official_model(official_dir):
    from LDAELib.weights import load_model

    return load_model(official_dir)


def save_nifti(path, data, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> Path:
    """A small random-weight model (3 mm grid, 16×20×16 latent) with one direction, as a bundle."""
    from LDAELib.directions import Direction
    from LDAELib.model import small_config
    from LDAELib.weights import random_model
    from LDAELib.weights.bundle import save_bundle

    model = random_model(small_config(), seed=1)
    g = torch.Generator().manual_seed(3)
    model.directions["disease"] = Direction("disease", torch.randn(64, generator=g), torch.zeros(64), torch.ones(64), positive="atrophy", negative="healthy")
    return save_bundle(model, tmp_path_factory.mktemp("models") / "small", name="small random test model")
