"""The ``ldae`` command line: outputs on the input's grid with provenance, and one clear error otherwise."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from LDAELib.cli import main
from conftest import save_nifti

from LDAELib.testing import phantom_brain

# The synthetic scans are made on an MNI-like grid already: stage B only (stage A: test_registration.py).
STEPS = ["--steps", "2", "-q", "--registered"]


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("scans")
    a = save_nifti(d / "a.nii.gz", *phantom_brain(seed=0))
    b = save_nifti(d / "b.nii.gz", *phantom_brain(seed=1, shift=(0.05, 0.0, 0.0)))
    return a, b


def _sha(p) -> str:
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_edit_writes_volume_on_input_grid_with_provenance(tmp_path, scans, small_bundle, capsys):
    src = scans[0]
    before = _sha(src)
    out = tmp_path / "edited.nii.gz"
    code, _, err = _run(["edit", src, out, "--model", small_bundle, "--direction", "disease", "--alpha", "2", *STEPS], capsys)
    assert code == 0, err
    img, ref = nib.load(str(out)), nib.load(str(src))
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine)
    assert np.isfinite(img.get_fdata()).all()
    prov = json.loads((tmp_path / "edited.json").read_text())
    assert prov["operation"] == "edit" and prov["direction"] == "disease" and prov["alpha"] == 2.0
    assert prov["steps"] == 2 and prov["model"]["id"] and prov["model"]["files"]
    assert prov["inputs"][0]["sha256"] == before
    assert _sha(src) == before


def test_reconstruct_and_model_space_input_keep_geometry(tmp_path, small_bundle, capsys):
    x = np.random.default_rng(0).random((64, 80, 64)).astype(np.float32)
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    src = save_nifti(tmp_path / "ms.nii.gz", x, aff)
    out = tmp_path / "rec.nii.gz"
    code, _, err = _run(["reconstruct", src, out, "--model", small_bundle, "--model-space", *STEPS], capsys)
    assert code == 0, err
    img = nib.load(str(out))
    assert img.shape == (64, 80, 64)
    np.testing.assert_allclose(img.affine, aff)
    assert json.loads((tmp_path / "rec.json").read_text())["input_space"] == "model"


def test_interpolate_writes_one_file_per_fraction(tmp_path, scans, small_bundle, capsys):
    code, _, err = _run(["interpolate", *scans, tmp_path / "frames", "--at", "0.25", "0.5", "0.75", "--model", small_bundle, *STEPS], capsys)
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "frames").glob("*.nii.gz"))
    assert files == ["interp_t0.250.nii.gz", "interp_t0.500.nii.gz", "interp_t0.750.nii.gz"]
    prov = json.loads((tmp_path / "frames" / "interp_t0.500.json").read_text())
    assert prov["fraction"] == 0.5 and len(prov["inputs"]) == 2


def test_vary_and_embed_and_probe(tmp_path, scans, small_bundle, capsys):
    code, _, err = _run(["vary", scans[0], tmp_path / "var", "--n", "2", "--seed", "5", "--model", small_bundle, *STEPS], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "var").glob("*.nii.gz"))) == 2
    emb = tmp_path / "emb.csv"
    code, _, err = _run(["embed", *scans, scans[0], "--output", emb, "--model", small_bundle, "-q", "--registered"], capsys)
    assert code == 0, err
    rows = emb.read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("path,e0,") and len(rows[1].split(",")) == 65


def test_an_operation_the_model_card_warns_about_is_flagged_on_screen_and_in_provenance(tmp_path, scans, small_bundle, capsys):
    import shutil

    from LDAELib.weights.bundle import annotate_bundle

    b = annotate_bundle(shutil.copytree(small_bundle, tmp_path / "b"), limitations={"vary": "variations fail with this model"})
    code, _, err = _run(["vary", scans[0], tmp_path / "var", "--n", "2", "--model", b, *STEPS], capsys)
    assert code == 0, err
    assert "warning: small random test model: variations fail with this model" in err
    sidecars = sorted((tmp_path / "var").glob("*.json"))
    assert len(sidecars) == 2 and all(json.loads(p.read_text())["model_limitation"] == "variations fail with this model" for p in sidecars)
    out = tmp_path / "rec.nii.gz"
    code, _, err = _run(["reconstruct", scans[0], out, "--model", b, *STEPS], capsys)
    assert code == 0 and "warning" not in err
    assert "model_limitation" not in json.loads(next(tmp_path.glob("rec*.json")).read_text())
    code, text, _ = _run(["info", "--model", b], capsys)
    assert code == 0 and "limitation:  vary: variations fail with this model" in text


def test_info_names_model_and_directions(small_bundle, capsys):
    code, out, _ = _run(["info", "--model", small_bundle], capsys)
    assert code == 0 and "small random test model" in out and "disease" in out


def test_convert_writes_a_loadable_bundle(tmp_path, official_dir, capsys):
    code, _, err = _run(["convert", tmp_path / "b", "--model", official_dir], capsys)
    assert code == 0, err
    code, out, _ = _run(["info", "--model", tmp_path / "b"], capsys)
    assert code == 0 and "bundle" in out


def _nifti(tmp_path, name, data, affine=None):
    return save_nifti(tmp_path / name, np.asarray(data, dtype=np.float32), np.eye(4) if affine is None else affine)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: _nifti(p, "flat.nii.gz", np.random.rand(64, 64)), "2-D"),
        (lambda p: _nifti(p, "slice.nii.gz", np.random.rand(64, 64, 1)), "2-D"),
        (lambda p: _nifti(p, "series.nii.gz", np.random.rand(20, 20, 20, 3)), "4-D"),
        (lambda p: _nifti(p, "nan.nii.gz", np.full((30, 30, 30), np.nan)), "NaN"),
        (lambda p: _nifti(p, "const.nii.gz", np.zeros((30, 30, 30))), "constant|empty"),
        (lambda p: (p / "notes.nii.gz").write_text("not an image") and p / "notes.nii.gz", "NIfTI"),
        (lambda p: p / "missing.nii.gz", "not found"),
    ],
)
def test_bad_input_gives_one_clear_error_and_writes_nothing(tmp_path, small_bundle, capsys, make, match):
    src = make(tmp_path)
    out_dir = tmp_path / "out"
    code, _, err = _run(["edit", src, out_dir / "o.nii.gz", "--model", small_bundle, "--direction", "disease", "--alpha", "1", *STEPS], capsys)
    assert code == 1
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("ldae: error:")
    import re

    assert re.search(match, lines[0]), lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_unwritable_output_fails_before_any_work(tmp_path, scans, small_bundle, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = _run(["edit", scans[0], blocker / "o.nii.gz", "--model", small_bundle, "--direction", "disease", "--alpha", "1", *STEPS], capsys)
    assert code == 1 and "cannot create the output folder" in err


def test_unknown_direction_lists_the_known_ones(tmp_path, scans, small_bundle, capsys):
    code, _, err = _run(["edit", scans[0], tmp_path / "o.nii.gz", "--model", small_bundle, "--direction", "age", "--alpha", "1", *STEPS], capsys)
    assert code == 1 and "disease" in err
    assert not list(tmp_path.glob("o*"))


def test_failure_while_writing_leaves_no_partial_outputs(tmp_path, scans, small_bundle, capsys, monkeypatch):
    import LDAELib.inference.image as lio

    real_save, calls = lio.nib.save, {"n": 0}

    def flaky_save(img, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while the second frame was written
        real_save(img, path)

    monkeypatch.setattr(lio.nib, "save", flaky_save)
    code, _, err = _run(["interpolate", *scans, tmp_path / "frames", "--at", "0.3", "0.6", "--model", small_bundle, *STEPS], capsys)
    assert code == 130 and "no output" in err
    assert not (tmp_path / "frames").exists()  # not even the folder: it would be created only with the outputs


def test_missing_model_folder_is_one_line(tmp_path, scans, capsys):
    code, _, err = _run(["reconstruct", scans[0], tmp_path / "o.nii.gz", "--model", tmp_path / "nowhere", "-q"], capsys)
    assert code == 1 and err.count("\n") == 1 and "not found" in err


def test_entry_point_runs_as_a_program(small_bundle):
    r = subprocess.run([sys.executable, "-m", "LDAELib.cli", "info", "--model", str(small_bundle)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "directions" in r.stdout


def test_bfloat16_run_is_recorded_in_provenance(tmp_path, scans, small_bundle, capsys):
    out = tmp_path / "bf.nii.gz"
    code, _, err = _run(["reconstruct", scans[0], out, "--model", small_bundle, "--dtype", "bfloat16", *STEPS], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "bf.json").read_text())["dtype"] == "bfloat16"


def test_float16_on_cpu_is_refused_with_advice(tmp_path, scans, small_bundle, capsys):
    code, _, err = _run(["reconstruct", scans[0], tmp_path / "o.nii.gz", "--model", small_bundle, "--dtype", "float16", *STEPS], capsys)
    assert code == 1 and "bfloat16" in err


def test_cache_dir_keeps_encodings_for_the_next_run(tmp_path, scans, small_bundle, capsys, monkeypatch):
    from LDAELib.pipeline import EncodingStore

    loaded = []
    real_load = EncodingStore.load

    def spy(self, pipeline, key):
        enc = real_load(self, pipeline, key)
        loaded.append(enc is not None)
        return enc

    monkeypatch.setattr(EncodingStore, "load", spy)
    cache = tmp_path / "encodings"
    args = ["--model", small_bundle, "--direction", "disease", "--cache-dir", cache, *STEPS]
    code, _, err = _run(["edit", scans[0], tmp_path / "one.nii.gz", "--alpha", "1", *args], capsys)
    assert code == 0, err
    assert loaded == [False] and len(list(cache.glob("*.safetensors"))) == 1
    code, _, err = _run(["edit", scans[0], tmp_path / "two.nii.gz", "--alpha", "1", *args], capsys)
    assert code == 0, err
    assert loaded == [False, True]  # the second run started warm
    np.testing.assert_array_equal(nib.load(str(tmp_path / "one.nii.gz")).get_fdata(), nib.load(str(tmp_path / "two.nii.gz")).get_fdata())
