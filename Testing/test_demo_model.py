"""The shipped demo model: present, intact, small, documented, and what `ldae` uses by default."""
import json

import pytest

from LDAELib.resources import default_model_path, example_scans

MB = 1e6


@pytest.fixture(scope="module")
def demo_dir():
    path = default_model_path()
    assert path is not None, "LDAELib/resources/demo_model is missing"
    return path


def test_bundle_is_small_verified_and_has_both_directions(demo_dir):
    from LDAELib.weights import load_model

    assert sum(p.stat().st_size for p in demo_dir.iterdir()) < 20 * MB
    model = load_model(demo_dir)  # checks every file's SHA-256 against the manifest
    assert model.config.latent_shape == (16, 16, 20, 16)  # the official latent grid, 16 channels, on a 3 mm grid
    assert model.config.code_guidance == 8.0 and model.reference_code is not None
    assert model.config.code_guidance_mean_free  # edits keep each latent channel's mean (docs/training.md)
    assert tuple(model.config.space.shape) == (64, 80, 64)
    assert set(model.directions) >= {"disease", "age"}
    assert "older" in model.directions["age"].positive and "disease" in model.directions["disease"].positive
    age = model.directions["age"]
    assert "years" in age.alpha_unit and age.meta["kind"] == "contrast"  # ldae orient --age-axis contrast (docs/training.md)
    assert 0 < age.meta["years_per_alpha"] <= 10 and not age.meta["rendered"]["flipped"]  # stated as rendered (ldae orient)
    assert age.meta["rendered"]["agreeing_scans"] == 1.0 and age.meta["rendered"]["ml_per_alpha"]["ventricles"] > 0
    disease = model.directions["disease"]
    assert disease.meta["kind"] == "contrast"  # ldae orient --disease-axis contrast (docs/training.md)
    assert disease.meta["rendered"]["ml_per_alpha"]["ventricles"] > 0  # renders its label's way on the orientation draw


def test_model_card_and_licence(demo_dir):
    card = (demo_dir / "README.md").read_text()
    for needed in ("Intended use", "not for clinical use", "Training", "Evaluation", "Licence"):
        assert needed.lower() in card.lower(), needed
    assert "NOT for clinical use" in (demo_dir / "LICENSE.txt").read_text()


def test_example_subject_was_held_out_of_training(demo_dir):
    """The shipped example scans belong to a test subject of the demo model's own split."""
    split = json.loads((demo_dir / "training_split.json").read_text())["subjects"]
    record = json.loads((demo_dir / "ldae_bundle.json").read_text())["source"]["training"]["split"]
    assert {k: len(v) for k, v in split.items()} == {k: v["subjects"] for k, v in record.items()}
    subject = example_scans()[0].subject
    assert subject in split["test"] and subject not in split["train"] and subject not in split["val"]


def test_manifest_lists_every_weight_file(demo_dir):
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    files = manifest.get("files", manifest)
    for p in demo_dir.glob("*.safetensors"):
        assert p.name in json.dumps(files)


def _example(model, scan):
    import numpy as np

    from LDAELib.inference.image import read_image as read_volume
    from LDAELib.space import to_model_space

    v = read_volume(scan.path)
    x, _ = to_model_space(v.data, v.affine, model.config.space)
    return np.asarray(x, dtype=np.float32).squeeze()


@pytest.fixture(scope="module")
def demo_edits(demo_dir):
    """(model, pipeline, {scan: (input, `disease` edits)}, {scan: `age` edits}) of both example
    visits at alpha −2 … 2, T = 10."""
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.weights import load_model

    model = load_model(demo_dir)
    pipe = LDAEPipeline(model)
    out, out_age = {}, {}
    for scan in example_scans():
        x = _example(model, scan)
        out[scan.path.name] = (x, pipe.edit(x, model.directions["disease"], ALPHAS, steps=10).numpy()[:, 0])
        out_age[scan.path.name] = pipe.edit(x, model.directions["age"], ALPHAS, steps=10).numpy()[:, 0]
    return model, pipe, out, out_age


ALPHAS = [-2.0, -1.0, 0.0, 1.0, 2.0]


def test_reconstructions_of_the_example_scans_keep_their_anatomy(demo_edits):
    """Edit at alpha 0 = the reconstruction at T = 10, at least the `ldae evaluate` target 0.93
    (measured 0.946 and 0.950 with the 5,000-step refined decoder, with and without the anti-aliasing
    of its model space; 0.943 and 0.948 at 2,500 steps;
    0.928 and 0.936 before it)."""
    from LDAELib.evaluation.similarity import ssim

    _, _, out, _ = demo_edits
    for name, (x, edits) in out.items():
        assert ssim(edits[ALPHAS.index(0.0)], x, 1.0) > 0.93, name


def _ventricle_voxels(edits):
    """CSF-dark voxels around the lateral ventricles of each image, dark relative to that image's own
    tissue: below the midpoint of its CSF and grey-matter levels (``tissue_levels``), the threshold of
    the evaluation's volume measure. A fixed threshold would count a global darkening of the brain as
    ventricle growth: the shipped `age` edits of the first example visit go from 292 to 385 voxels
    under 0.25 while the image's own threshold falls from 0.39 to 0.34 and the ventricles stay."""
    import numpy as np

    from LDAELib.evaluation.volumes import BRAIN_THRESHOLD, tissue_levels

    counts = []
    for img in edits:
        csf, gm, _ = tissue_levels(img)
        centre = img[22:42, 25:55, 25:45]  # the lateral ventricles in the 64×80×64 model grid
        counts.append(int(((centre < (csf + gm) / 2) & (centre > BRAIN_THRESHOLD)).sum()))
    return np.array(counts)


def test_disease_edits_grow_the_ventricles_monotonically(demo_edits):
    """Along `disease` the ventricles (``_ventricle_voxels``) must grow at every step of alpha on both
    example visits (shipped, the contrast axis with mean-free code guidance: 710, 752, 795, 852, 930
    and 832, 901, 965, 1123, 1207 voxels over alpha −2 … 2; the group probe with it 625 → 945 and
    675 → 1316, without it 614 → 893 and 698 → 1211), and the image must visibly change (mean |Δ|
    0.015 and 0.014 from −2 to +2 when shipped; the first shipped model's edits changed it by ~1e-5)."""
    import numpy as np

    _, _, out, _ = demo_edits
    for name, (_, edits) in out.items():
        assert np.abs(edits[-1] - edits[0]).mean() > 5e-3, name
        dark = _ventricle_voxels(edits)
        assert (np.diff(dark) > 0).all(), (name, dark)


def test_age_edits_visibly_change_the_image(demo_edits):
    """Along `age` the image visibly changes from alpha −2 to +2 (mean |Δ| 0.013 and 0.014 when
    shipped, the contrast axis; 0.015 along the longitudinal axis, 0.026 without mean-free code
    guidance; the age probe shipped before moved it by 0.001)."""
    import numpy as np

    for name, edits in demo_edits[3].items():
        assert np.abs(edits[-1] - edits[0]).mean() > 5e-3, name


@pytest.mark.xfail(strict=True, reason="the shipped `age` direction grows the example subject's ventricles relative to its tissue "
                                       "on its fourth visit (924, 943, 965, 989, 1002 voxels over alpha −2 … 2) but shrinks them on "
                                       "its first (837, 806, 795, 783, 772): sub-0058 is one of the 2 of 12 test subjects along which "
                                       "it goes the wrong way (docs/demo_model_evaluation: ventricle ρ ≥ 0.9 on the other 10)")
def test_age_edits_grow_the_ventricles(demo_edits):
    """Along `age` (each subject's own ageing of the codes) the ventricles (``_ventricle_voxels``) grow
    from alpha −2 to +2 by at least a tenth and never fall on the way. Strict: when a model passes,
    the marker must go."""
    import numpy as np

    for name, edits in demo_edits[3].items():
        dark = _ventricle_voxels(edits)
        assert dark[-1] > 1.1 * dark[0] and (np.diff(dark) >= 0).all(), (name, dark)


def test_a_variation_is_a_brain_like_the_reconstruction(demo_edits):
    """Sampling from new noise with the scan's code (``ldae vary``) must give a brain: SSIM against
    the scan's reconstruction at least 0.5 (shipped: 0.710; 0.708 before mean-free code guidance), the `ldae evaluate` target, and the
    bundle must not carry a note saying variations fail."""
    import torch

    from LDAELib.evaluation.similarity import ssim

    model, pipe, out, _ = demo_edits
    assert "vary" not in model.limitations
    x, edits = next(iter(out.values()))
    enc = pipe.encode(x, steps=10)
    noise = torch.randn(enc.z0.shape, generator=torch.Generator().manual_seed(0))
    sample = pipe.sample(enc.y_sem, noise, steps=10)[0, 0].numpy()
    assert ssim(sample, edits[ALPHAS.index(0.0)], 1.0) >= 0.5


def test_a_real_head_through_the_raw_path_keeps_its_anatomy(demo_edits, monkeypatch, tmp_path):
    """Colin27 with skull (mricron-data), as a user would load it: stage A, stage B in the demo model's
    space, reconstruction at T = 10, scored in model space against the preprocessed input. The
    `ldae evaluate` target is 0.93 / 0.85 (volume / brain); shipped: 0.942 / 0.887. Without the
    anti-aliasing of the model space it was 0.906 / 0.817, so this guards that the raw path brings a
    1 mm scan to what the model was trained on."""
    from pathlib import Path

    from LDAELib.evaluation.similarity import brain_mask, ssim
    from LDAELib.inference.image import read_image
    from LDAELib.inference.space import to_model

    colin = Path("/usr/share/mricron/templates/ch2.nii.gz")
    if not colin.is_file():
        pytest.skip("Colin27 (ch2.nii.gz) not installed: apt-get install mricron-data")
    monkeypatch.setenv("LDAE_CACHE_DIR", str(tmp_path))
    model, pipe, _, _ = demo_edits
    assert model.config.space.antialias
    prep = to_model(read_image(colin), "raw", model.config.space)
    x = prep.x
    recon = pipe.reconstruct(pipe.encode(x, steps=10), steps=10)[0, 0].numpy()
    assert ssim(recon, x, 1.0) >= 0.93
    assert ssim(recon, x, 1.0, mask=brain_mask(x)) >= 0.85
