"""Code guidance: g(ȳ) + w·(g(y) − g(ȳ)) at inference, from the network call to the bundle."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from LDAELib.directions import Direction
from LDAELib.errors import LDAEError
from LDAELib.model import LDAEConfig, small_config
from LDAELib.pipeline import LDAEPipeline
from LDAELib.weights import load_model, random_model
from LDAELib.weights.bundle import save_bundle

STEPS = 3


def _guided(model, weight: float, reference: torch.Tensor):
    m = copy.deepcopy(model)
    m.config = copy.deepcopy(model.config)
    m.config.code_guidance = weight
    m.reference_code = reference.clone()
    m.identity = {}
    return m


@pytest.fixture(scope="module")
def model():
    m = random_model(small_config(), seed=1)
    g = torch.Generator().manual_seed(3)
    m.directions["disease"] = Direction("disease", torch.randn(64, generator=g), torch.zeros(64), torch.ones(64))
    return m


@pytest.fixture(scope="module")
def scan():
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 1, 64, 80, 64, generator=g)


def test_forward_with_reference_gives_forwards_eps_and_g_and_the_references_g(model):
    unet = model.shift_unet
    g = torch.Generator().manual_seed(5)
    x, y, ref = torch.randn(2, 3, 16, 20, 16, generator=g), torch.randn(2, 64, generator=g), torch.randn(64, generator=g)
    t = torch.tensor([10, 700])
    with torch.inference_mode():
        eps, gy = unet(x, t, y)
        eps2, gy2, gref = unet.forward_with_reference(x, t, y, ref)
        _, gref_direct = unet(x, t, ref.expand(2, -1))
    assert torch.equal(eps, eps2) and torch.equal(gy, gy2)
    assert torch.equal(gref, gref_direct)
    assert not torch.equal(gy, gref)


def test_pipeline_shift_is_the_guided_blend(model):
    ref = torch.randn(64, generator=torch.Generator().manual_seed(7))
    pipe = LDAEPipeline(_guided(model, 3.0, ref))
    g = torch.Generator().manual_seed(6)
    x, y, t = torch.randn(1, 3, 16, 20, 16, generator=g), torch.randn(1, 64, generator=g), torch.tensor([500])
    with torch.inference_mode():
        eps, shift = pipe._unet(x, t, y)
        e0, gy = model.shift_unet(x, t, y)
        _, gr = model.shift_unet(x, t, ref[None])
    assert torch.equal(eps, e0)
    assert torch.allclose(shift, gr + 3.0 * (gy - gr), atol=1e-6)


def test_guidance_around_the_scans_own_code_leaves_its_reconstruction_alone_and_scales_its_edits(model, scan):
    plain = LDAEPipeline(model)
    y = plain.embed(scan)[0]
    guided = LDAEPipeline(_guided(model, 4.0, y))
    # with ȳ = y the blend is g(y) exactly, so inversion and sampling are the authors'
    assert torch.equal(guided.reconstruct(scan, STEPS), plain.reconstruct(scan, STEPS))
    # a small move of the code (the linear regime) moves the sampled latent about w times as far
    d = model.directions["disease"]
    _, z_plain, _ = plain.edit(scan, d, [0.0, 0.01], STEPS, return_latents=True)
    _, z_guided, _ = guided.edit(scan, d, [0.0, 0.01], STEPS, return_latents=True)
    ratio = float((z_guided[1] - z_guided[0]).norm() / (z_plain[1] - z_plain[0]).norm())
    assert 3.0 < ratio < 5.0


def test_a_guided_bundle_keeps_its_weight_and_reference_code(model, tmp_path, capsys):
    ref = torch.randn(64, generator=torch.Generator().manual_seed(8))
    folder = save_bundle(_guided(model, 6.0, ref), tmp_path / "b", name="guided")
    meta = json.loads((folder / "ldae_bundle.json").read_text())
    assert meta["config"]["code_guidance"] == 6.0
    loaded = load_model(folder)
    assert loaded.config.guided and loaded.config.code_guidance == 6.0
    assert torch.equal(loaded.reference_code, ref)
    from LDAELib.cli import main

    assert main(["info", "--model", str(folder)]) == 0
    assert "code guidance 6" in capsys.readouterr().out
    # an unguided model writes neither the setting nor the file
    plain = save_bundle(model, tmp_path / "plain", name="plain")
    assert "code_guidance" not in json.loads((plain / "ldae_bundle.json").read_text())["config"]
    assert not (plain / "reference_code.safetensors").exists() and load_model(plain).reference_code is None


def test_a_guided_bundle_without_its_reference_code_is_refused(model, tmp_path):
    folder = save_bundle(_guided(model, 6.0, torch.ones(64)), tmp_path / "b", name="guided")
    (folder / "reference_code.safetensors").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["reference_code.safetensors"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LDAEError, match="reference_code.safetensors"):
        load_model(folder)


def test_guidance_settings_are_checked(model):
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="code_guidance"):
            LDAEConfig(code_guidance=bad)
    assert LDAEConfig.from_dict({"code_guidance": 2}).code_guidance == 2.0
    assert "code_guidance" not in LDAEConfig().to_dict()
    broken = _guided(model, 2.0, torch.zeros(64))
    broken.reference_code = None
    with pytest.raises(LDAEError, match="no reference code"):
        LDAEPipeline(broken)


def test_provenance_names_the_guidance_weight_of_a_guided_model(model):
    from LDAELib.inference.provenance import provenance
    from LDAELib.inference.settings import RunSettings

    guided = _guided(model, 6.0, torch.zeros(64))
    settings = RunSettings(input_space="model")
    assert provenance(guided, LDAEPipeline(guided), settings, "edit", [])["code_guidance"] == 6.0
    assert "code_guidance" not in provenance(model, LDAEPipeline(model), settings, "edit", [])


def test_the_evaluation_report_names_a_models_guidance():
    from LDAELib.evaluation.report import _guidance

    assert _guidance({"code_guidance": 8.0}) == ", code guidance 8" and _guidance({"code_guidance": 1.0}) == _guidance({}) == ""


# ------------------------------------------------------------------ mean-free code guidance
def _mean_free(model, weight: float, reference: torch.Tensor):
    m = _guided(model, weight, reference)
    m.config.code_guidance_mean_free = True
    return m


def test_mean_free_guidance_removes_each_channels_mean_from_the_guided_part_only(model):
    ref = torch.randn(64, generator=torch.Generator().manual_seed(7))
    pipe = LDAEPipeline(_mean_free(model, 3.0, ref))
    g = torch.Generator().manual_seed(6)
    x, y, t = torch.randn(2, 3, 16, 20, 16, generator=g), torch.randn(2, 64, generator=g), torch.tensor([500, 20])
    with torch.inference_mode():
        _, shift = pipe._unet(x, t, y)
        _, gy = model.shift_unet(x, t, y)
        _, gr = model.shift_unet(x, t, ref[None].expand(2, -1))
    d = gy - gr
    expected = gr + 3.0 * (d - d.mean(dim=(2, 3, 4), keepdim=True))
    assert torch.allclose(shift, expected, atol=1e-5)
    # the reference's own answer keeps its mean; the code's part has none, per item and channel
    assert torch.allclose((shift - gr).mean(dim=(2, 3, 4)), torch.zeros(2, 3), atol=1e-5)
    assert (d.mean(dim=(2, 3, 4)).abs() > 1e-4).any()  # so the check above is not trivially true
    assert not torch.allclose(shift, gr + 3.0 * d, atol=1e-4)


def test_mean_free_guidance_leaves_the_reconstruction_around_the_scans_own_code_alone(model, scan):
    plain = LDAEPipeline(model)
    y = plain.embed(scan)[0]
    assert torch.equal(LDAEPipeline(_mean_free(model, 4.0, y)).reconstruct(scan, STEPS), plain.reconstruct(scan, STEPS))


def test_mean_free_guidance_is_a_checked_setting_kept_by_bundles_provenance_and_info(model, tmp_path, capsys):
    with pytest.raises(ValueError, match="needs code guidance"):
        LDAEConfig(code_guidance_mean_free=True)
    with pytest.raises(ValueError, match="true or false"):
        LDAEConfig.from_dict({"code_guidance": 2, "code_guidance_mean_free": "yes"})
    assert "code_guidance_mean_free" not in LDAEConfig(code_guidance=2.0).to_dict()
    folder = save_bundle(_mean_free(model, 6.0, torch.ones(64)), tmp_path / "b", name="mf")
    assert json.loads((folder / "ldae_bundle.json").read_text())["config"]["code_guidance_mean_free"] is True
    loaded = load_model(folder)
    assert loaded.config.code_guidance_mean_free
    from LDAELib.cli import main
    from LDAELib.inference.provenance import provenance
    from LDAELib.inference.settings import RunSettings

    assert main(["info", "--model", str(folder)]) == 0
    assert "mean-free" in capsys.readouterr().out
    prov = provenance(loaded, LDAEPipeline(loaded), RunSettings(input_space="model"), "edit", [])
    assert prov["code_guidance_mean_free"] is True
    assert "code_guidance_mean_free" not in provenance(model, LDAEPipeline(model), RunSettings(input_space="model"), "edit", [])


def test_annotate_bundle_switches_mean_free_guidance_without_touching_the_weights(model, tmp_path):
    from LDAELib.weights.bundle import annotate_bundle

    folder = save_bundle(_guided(model, 6.0, torch.ones(64)), tmp_path / "b", name="guided")
    before = {f.name: f.read_bytes() for f in folder.glob("*.safetensors")}
    annotate_bundle(folder, inference={"code_guidance_mean_free": True})
    assert load_model(folder).config.code_guidance_mean_free
    assert {f.name: f.read_bytes() for f in folder.glob("*.safetensors")} == before
    with pytest.raises(LDAEError, match="cannot be changed in a bundle"):
        annotate_bundle(folder, inference={"code_guidance": 2.0})
    plain = save_bundle(model, tmp_path / "plain", name="plain")
    with pytest.raises(LDAEError, match="needs code guidance"):
        annotate_bundle(plain, inference={"code_guidance_mean_free": True})
    assert not load_model(plain).config.code_guidance_mean_free  # the refused change left it as it was


def test_the_evaluation_report_names_mean_free_guidance():
    from LDAELib.evaluation.report import _guidance

    assert _guidance({"code_guidance": 8.0, "code_guidance_mean_free": True}) == ", code guidance 8, mean-free"
