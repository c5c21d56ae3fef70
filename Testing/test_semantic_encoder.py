"""Semantic encoder: the authors' key layout, and their outputs on the reduced-width fixture."""

import json
import os
from pathlib import Path

import pytest
import torch

from LDAELib.nets.semantic_encoder import (
    SemanticEncoder,
    SemanticEncoderConfig,
    infer_semantic_encoder_config,
    normalise_semantic_encoder_keys,
    sinusoidal_positional_encoding,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_PARAMETERS = 53_588_065
TOLERANCE = 2e-5  # × max|ref|, the fixture README's acceptance for single modules


def fixtures_dir() -> Path:
    """The official fixtures folder: $LDAE_FIXTURES, else ../shared/spec/official/fixtures from the repo root."""
    path = Path(os.environ.get("LDAE_FIXTURES", REPO_ROOT / ".." / "shared" / "spec" / "official" / "fixtures"))
    if not path.is_dir():
        pytest.skip(f"official fixtures not found at {path} (set LDAE_FIXTURES)")
    return path


def load_fixture(name: str):
    return torch.load(fixtures_dir() / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def fixture_state_dict():
    return load_fixture("semantic_encoder_state_dict.pt")


@pytest.fixture(scope="module")
def fixture_io():
    return load_fixture("semantic_encoder_io.pt")


@pytest.fixture(scope="module")
def fixture_encoder(fixture_state_dict):
    model = SemanticEncoder.from_config(infer_semantic_encoder_config(fixture_state_dict))
    model.load_state_dict(fixture_state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def fixture_outputs(fixture_encoder, fixture_io):
    with torch.inference_mode():
        return fixture_encoder.forward_with_intermediates(fixture_io["x_swapped"])


@pytest.fixture(scope="module")
def official_layout():
    keys_file = fixtures_dir().parent / "keys" / "semantic_encoder.json"
    return json.loads(keys_file.read_text())


def test_config_is_inferred_from_fixture_shapes(fixture_state_dict):
    cfg = infer_semantic_encoder_config(fixture_state_dict)
    assert cfg == SemanticEncoderConfig(widths=(8, 16, 32, 64), depths=(3, 3, 27, 3), emb_dim=64, seq_len=128)


def test_config_round_trips_through_json():
    cfg = SemanticEncoderConfig(widths=(8, 16, 32, 64), depths=(3, 3, 27, 3), emb_dim=64)
    assert SemanticEncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_fixture_state_dict_has_the_same_keys_in_the_same_order(fixture_state_dict, fixture_encoder):
    assert list(fixture_encoder.state_dict()) == list(fixture_state_dict)


@pytest.mark.parametrize("drop", ["backbone.backbone.", "slice_distributed.module.backbone."])
def test_either_backbone_alias_alone_loads_strictly(fixture_state_dict, fixture_encoder, drop):
    partial = {k: v for k, v in fixture_state_dict.items() if not k.startswith(drop)}
    model = SemanticEncoder.from_config(infer_semantic_encoder_config(partial))
    model.load_state_dict(normalise_semantic_encoder_keys(partial), strict=True)
    for k, v in fixture_encoder.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_backbone_aliases_share_storage(fixture_encoder):
    sd = fixture_encoder.state_dict()
    for k, v in sd.items():
        if k.startswith("backbone.backbone."):
            alias = sd["slice_distributed.module." + k[len("backbone."):]]
            assert v.data_ptr() == alias.data_ptr(), k


def test_positional_encoding_matches_the_stored_buffer(fixture_state_dict):
    stored = fixture_state_dict["positional_encoding.pe"]
    # sin/cos of arguments up to 127, whose float32 spacing is 7.6e-6: vector kernels reduce the argument
    # differently per CPU (Intel Xeon AVX-512 AMX: 3.8e-6 at position 108, 2026-12-04). The model loads
    # the stored buffer with the weights; this checks only that a new model starts from the same table.
    torch.testing.assert_close(sinusoidal_positional_encoding(128, 64), stored, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["slice_features", "slice_features_plus_pe", "soft_attention_query", "soft_attention_weights", "y_sem"])
def test_matches_official_outputs(fixture_outputs, fixture_io, name):
    ours, ref = fixture_outputs[name], fixture_io[name]
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    print(f"{name}: max|diff| = {diff:.3g}, max|ref| = {scale:.3g}")
    assert diff <= TOLERANCE * scale


def test_forward_returns_y_sem(fixture_encoder, fixture_io, fixture_outputs):
    with torch.inference_mode():
        y = fixture_encoder(fixture_io["x_swapped"])
    assert torch.equal(y, fixture_outputs["y_sem"])


def test_batch_of_non_contiguous_volumes_is_encoded_slice_wise(fixture_encoder, fixture_io):
    x = fixture_io["x_swapped"]
    flipped = torch.flip(x, dims=[-1])
    batch = torch.cat([x, flipped]).transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, not contiguous
    assert not batch.is_contiguous()
    with torch.inference_mode():
        y = fixture_encoder(batch)
        singles = torch.cat([fixture_encoder(x), fixture_encoder(flipped)])
    assert y.shape == (2, 64)
    torch.testing.assert_close(y, singles, rtol=0, atol=1e-5)


def test_too_many_slices_is_refused(fixture_encoder):
    with pytest.raises(ValueError, match="at most 128 slices"):
        fixture_encoder(torch.zeros(1, 1, 129, 32, 32))


@pytest.fixture(scope="module")
def official_encoder():
    return SemanticEncoder.from_config(SemanticEncoderConfig())


def test_official_size_state_dict_matches_the_authors_layout(official_encoder, official_layout):
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in official_encoder.state_dict().items()]
    theirs = [(e["key"], e["shape"], e["dtype"]) for e in official_layout["keys"]]
    assert len(ours) == official_layout["num_state_dict_entries"] == 699
    assert ours == theirs


def test_official_size_parameter_count(official_encoder, official_layout):
    n = sum(p.numel() for p in official_encoder.parameters())
    assert n == official_layout["num_parameters"] == OFFICIAL_PARAMETERS


def test_official_config_is_inferred_from_official_shapes(official_encoder):
    assert infer_semantic_encoder_config(official_encoder.state_dict()) == SemanticEncoderConfig()
