"""Pipeline behaviour: the encoding cache, batching, progress, cancel, determinism and bad input."""

from __future__ import annotations

import pytest
import torch

from LDAELib.directions import Direction
from LDAELib.errors import Cancelled, LDAEError
from LDAELib.pipeline import LDAEPipeline, slerp
from conftest import load_fixture, rel_err

STEPS = 3


@pytest.fixture()
def pipe(official_model):
    return LDAEPipeline(official_model)


@pytest.fixture(scope="module")
def scan():
    return load_fixture("aekl_io.pt")["x"]  # 1×1×32×64×64 in [0,1]


@pytest.fixture(scope="module")
def direction():
    g = torch.Generator().manual_seed(0)
    return Direction("d", torch.randn(64, generator=g), torch.zeros(64), torch.ones(64))


def test_second_edit_of_a_scan_repeats_neither_encoders_nor_inversion(pipe, scan, direction):
    pipe.edit(scan, direction, 1.0, STEPS)
    before = dict(pipe.calls)
    pipe.edit(scan, direction, -1.0, STEPS)
    assert pipe.calls["autoencoder_encode"] == before["autoencoder_encode"]
    assert pipe.calls["semantic_encode"] == before["semantic_encode"]
    assert pipe.calls["inversion"] == before["inversion"]
    assert pipe.calls["sampling"] == before["sampling"] + 1


def test_a_new_step_count_reuses_the_encoders(pipe, scan):
    enc = pipe.encode(scan, 3)
    calls = dict(pipe.calls)
    enc2 = pipe.encode(scan, 5)
    assert enc2 is enc and set(enc.z_T) == {3, 5}
    assert pipe.calls["autoencoder_encode"] == calls["autoencoder_encode"]
    assert pipe.calls["inversion"] == calls["inversion"] + 1


def test_encoding_is_deterministic_by_default(official_model, scan):
    a = LDAEPipeline(official_model).encode(scan, STEPS)
    b = LDAEPipeline(official_model).encode(scan, STEPS)
    mu, _ = official_model.autoencoder.encode(scan)
    assert torch.equal(a.z_T[STEPS], b.z_T[STEPS])
    assert torch.allclose(a.z0, mu * official_model.config.latent_scale)


def test_batched_alphas_equal_one_by_one(pipe, scan, direction):
    enc = pipe.encode(scan, STEPS)
    batch = pipe.edit(enc, direction, [-1.0, 0.5, 2.0], STEPS)
    single = torch.cat([pipe.edit(enc, direction, [a], STEPS) for a in (-1.0, 0.5, 2.0)])
    assert rel_err(batch, single) < 1e-4


def test_alpha_zero_is_the_reconstruction(pipe, scan, direction):
    enc = pipe.encode(scan, STEPS)
    assert torch.allclose(pipe.edit(enc, direction, 0.0, STEPS), pipe.reconstruct(enc, STEPS), atol=1e-6)


def test_edit_moves_the_code_along_the_direction(pipe, scan, direction):
    enc = pipe.encode(scan, STEPS)
    _, _, y = pipe.edit(enc, direction, [-2.0, 0.0, 2.0], STEPS, return_latents=True)
    s = direction.score(y)
    assert s[0] < s[1] < s[2]


def test_interpolation_ends_are_the_reconstructions(pipe, scan):
    other = torch.flip(scan, dims=[-1])
    frames = pipe.interpolate(scan, other, [0.0, 1.0], STEPS)
    assert rel_err(frames[0:1], pipe.reconstruct(scan, STEPS)) < 1e-4
    assert rel_err(frames[1:2], pipe.reconstruct(other, STEPS)) < 1e-4


def test_slerp_keeps_endpoints_and_handles_parallel_vectors():
    a, b = torch.randn(1, 3, 4, 4, 4), torch.randn(1, 3, 4, 4, 4)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    assert torch.isfinite(slerp(a, 2 * a, 0.5)).all()


def test_variations_are_reproducible_from_the_seed_and_differ_between_seeds(pipe, scan):
    a = pipe.vary(scan, 2, seed=7, steps=STEPS)
    b = pipe.vary(scan, 2, seed=7, steps=STEPS)
    c = pipe.vary(scan, 2, seed=8, steps=STEPS)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])


def test_progress_counts_every_network_call_up_to_the_total(pipe, scan, direction):
    seen = []
    pipe.edit(scan, direction, [1.0, 2.0], STEPS, progress=lambda d, t, s: seen.append((d, t, s)))
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and done[-1] == seen[-1][1]
    assert {s for _, _, s in seen} >= {"autoencoder", "semantic encoder", "inversion", "sampling", "decode"}


def test_cancel_stops_the_run_and_leaves_the_cache_usable(pipe, scan, direction):
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        pipe.edit(scan, direction, 1.0, STEPS, cancel=cancel)
    out = pipe.edit(scan, direction, 1.0, STEPS)  # a later run works
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((1, 1, 32, 64, 64), float("nan")), "NaN"),
        (torch.rand(1, 2, 32, 64, 64), "single-channel"),
        (torch.rand(32, 64), "single-channel"),
        (torch.rand(1, 1, 30, 64, 64), "divisible"),
    ],
)
def test_bad_model_space_input_is_refused(pipe, bad, match):
    with pytest.raises(LDAEError, match=match):
        pipe.encode(bad, STEPS)


def test_inputs_are_not_modified(pipe, scan, direction):
    x = scan.clone()
    pipe.edit(x, direction, 1.0, STEPS)
    assert torch.equal(x, scan)


def test_bfloat16_networks_stay_close_to_float32(official_model, scan):
    ref = LDAEPipeline(official_model).reconstruct(scan, STEPS)
    import copy

    bf = LDAEPipeline(copy.deepcopy(official_model), dtype=torch.bfloat16).reconstruct(scan, STEPS)
    assert bf.dtype == torch.float32 and torch.isfinite(bf).all()
    assert float(torch.corrcoef(torch.stack([bf.flatten(), ref.flatten()]))[0, 1]) > 0.9


# ------------------------------------------------------------------ encodings on disk
def test_encodings_on_disk_make_a_new_pipeline_warm(official_model, scan, direction, tmp_path):
    first = LDAEPipeline(official_model, cache_dir=tmp_path)
    want = first.edit(scan, direction, 1.0, STEPS)
    assert first.store.writes == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    second = LDAEPipeline(official_model, cache_dir=tmp_path)  # a new process, in effect
    got = second.edit(scan, direction, 1.0, STEPS)
    assert second.calls["autoencoder_encode"] == second.calls["semantic_encode"] == second.calls["inversion"] == 0
    assert second.store.hits == 1
    assert torch.equal(got, want)
    # a new step count is inverted once and written back beside the first
    second.encode(scan, STEPS + 1)
    third = LDAEPipeline(official_model, cache_dir=tmp_path)
    enc = third.encode(scan, STEPS + 1)
    assert set(enc.z_T) == {STEPS, STEPS + 1} and third.calls["inversion"] == 0


def test_a_corrupt_or_foreign_cache_file_is_only_a_miss(official_model, scan, tmp_path):
    pipe = LDAEPipeline(official_model, cache_dir=tmp_path)
    want = pipe.encode(scan, STEPS)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    again = LDAEPipeline(official_model, cache_dir=tmp_path)
    enc = again.encode(scan, STEPS)
    assert again.calls["autoencoder_encode"] == 1 and again.store.hits == 0
    assert torch.equal(enc.z_T[STEPS], want.z_T[STEPS])
    # rewritten: the next pipeline reads it
    third = LDAEPipeline(official_model, cache_dir=tmp_path)
    third.encode(scan, STEPS)
    assert third.store.hits == 1 and third.calls["autoencoder_encode"] == 0


def test_the_disk_cache_tells_models_apart(official_model, scan, tmp_path):
    from LDAELib.model import LDAEModel

    LDAEPipeline(official_model, cache_dir=tmp_path).encode(scan, STEPS)
    other = LDAEModel(official_model.config)  # same configuration, other (random) weights
    pipe = LDAEPipeline(other, cache_dir=tmp_path)
    pipe.encode(scan, STEPS)
    assert pipe.store.hits == 0 and pipe.calls["autoencoder_encode"] == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
