"""Bad input, across the command line, ``ldae batch`` and the Python API: one clear error, nothing lost.

Every case asserts the exit code (or the exception type), the message, that no output and no
temporary file was left, and that every input file is byte for byte what it was.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from LDAELib.cli import main
from LDAELib.errors import LDAEError
from LDAELib.testing import make_tiny_bundle, phantom_brain

SHAPE, SPACING = (45, 54, 45), 4.0


def _save(path: Path, data, affine, header=None) -> Path:
    img = nib.Nifti1Image(data, affine, header=header)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture()
def place(tmp_path):
    """A folder with two registered phantom scans, recording every file's hash."""
    a = _save(tmp_path / "scan.nii.gz", *phantom_brain(SHAPE, SPACING, seed=0, intensity=80.0))
    b = _save(tmp_path / "later.nii.gz", *phantom_brain(SHAPE, SPACING, ventricle_scale=1.3, seed=1, intensity=80.0))
    return tmp_path, a, b


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".ldae-" in p.name or p.name.endswith(".part")]


def _cli(args, capsys):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [line for line in err.strip().splitlines() if line]


def _refused(args, capsys, folder: Path, match: str, new_files_allowed=()):
    """Run the command; assert exit 1, one line naming the problem, no new file and every old file unchanged."""
    before = _hashes(folder)
    code, lines = _cli(args, capsys)
    assert code == 1, lines
    assert len(lines) == 1 and lines[0].startswith("ldae: error:"), lines
    assert match.lower() in lines[0].lower(), lines[0]
    after = _hashes(folder)
    assert {p: h for p, h in after.items() if p in before} == before  # nothing overwritten
    assert set(after) - set(before) <= set(new_files_allowed), sorted(set(after) - set(before))
    assert not _leftovers(folder)
    return lines[0]


def _opts(bundle, *extra):
    return ["--model", bundle, "--steps", "2", "--threads", "1", "-q", "--registered", *extra]


# ----------------------------------------------------------------------------- sources are never written
def test_output_equal_to_input_is_refused(place, bundle, capsys):
    d, a, _ = place
    _refused(["edit", a, a, "--direction", "cn", "--alpha", "1", *_opts(bundle)], capsys, d, "is the input")


def test_relative_and_absolute_spellings_of_the_input_are_one_file(place, bundle, capsys, monkeypatch):
    d, a, _ = place
    monkeypatch.chdir(d)
    _refused(["reconstruct", "./scan.nii.gz", a.resolve(), *_opts(bundle)], capsys, d, "is the input")


def test_a_hard_link_to_the_input_is_the_input(place, bundle, capsys):
    d, a, _ = place
    link = d / "link.nii.gz"
    os.link(a, link)
    _refused(["reconstruct", a, link, *_opts(bundle)], capsys, d, "is the input")


def test_interpolation_frames_over_an_input_are_refused(place, bundle, capsys):
    d, a, b = place
    frames = d / "frames"
    frames.mkdir()
    inside = frames / "interp_t0.500.nii.gz"
    inside.write_bytes(b.read_bytes())
    _refused(["interpolate", a, inside, frames, "--at", "0.5", *_opts(bundle)], capsys, d, "is the input")


def test_embed_refuses_to_write_codes_over_a_scan(place, bundle, capsys):
    d, a, _ = place
    _refused(["embed", a, "-o", a, *_opts(bundle)], capsys, d, ".csv")


def test_a_fifo_output_is_refused(place, bundle, capsys):
    d, a, _ = place
    fifo = d / "pipe.nii.gz"
    os.mkfifo(fifo)
    _refused(["reconstruct", a, fifo, *_opts(bundle)], capsys, d, "not a regular file")
    assert fifo.is_fifo()


def test_preprocess_never_writes_over_its_input(place, capsys):
    d, a, _ = place
    out = d / "prep"
    out.mkdir()
    src = out / "brain_mni.nii.gz"
    src.write_bytes(a.read_bytes())
    _refused(["preprocess", src, out], capsys, d, "is the input")


def test_a_sidecar_path_that_is_a_folder_leaves_nothing(place, bundle, capsys):
    d, a, _ = place
    (d / "out.json").mkdir()
    _refused(["reconstruct", a, d / "out.nii.gz", *_opts(bundle)], capsys, d, "is a folder")
    assert not (d / "out.nii.gz").exists()


# ----------------------------------------------------------------------------- numbers and options
@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf"])
def test_non_finite_alphas_are_refused(place, bundle, capsys, alpha):
    d, a, _ = place
    _refused(["edit", a, d / "o.nii.gz", "--direction", "cn", f"--alpha={alpha}", *_opts(bundle)], capsys, d, "finite")


def test_non_finite_fractions_are_refused(place, bundle, capsys):
    d, a, b = place
    _refused(["interpolate", a, b, d / "f", "--at", "nan", *_opts(bundle)], capsys, d, "fractions")


@pytest.mark.parametrize("option, match", [
    (["--steps", "100000"], "steps must lie between"),
    (["--steps", "0"], "steps must lie between"),
    (["--threads", "-1"], "threads must lie between"),
    (["--device", "gpu0"], "unknown device"),
    (["--seed", str(2**70), "--sample-latent"], "seed must lie between"),
    (["--dtype", "float16"], "GPUs only"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_options_are_one_line_before_any_work(place, bundle, capsys, option, match):
    d, a, _ = place
    _refused(["reconstruct", a, d / "o.nii.gz", "--model", bundle, "-q", "--registered", *option], capsys, d, match)


@pytest.mark.parametrize("name, match", [("out", "extension"), ("out.json", "extension"), ("out.png", "extension"),
                                         ("x" * 243 + ".nii.gz", "characters long")])
def test_unwritable_output_names_are_refused_before_any_work(place, bundle, capsys, name, match):
    d, a, _ = place
    _refused(["reconstruct", a, d / name, *_opts(bundle)], capsys, d, match)


# ----------------------------------------------------------------------------- images
def _bad_image(d: Path, kind: str) -> Path:
    data, affine = phantom_brain(SHAPE, SPACING, intensity=80.0)
    if kind == "complex":
        return _save(d / "c.nii.gz", data.astype(np.complex64) * (1 + 1j), affine)
    if kind == "rgb":
        rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        return _save(d / "rgb.nii.gz", rgb, affine)
    if kind == "zero pixdim":  # both codes 0 and a zero voxel size: nibabel would quietly read 1 mm
        import struct

        img = nib.Nifti1Image(data, affine)
        img.set_qform(None, 0)
        img.set_sform(None, 0)
        nib.save(img, str(d / "z.nii"))
        raw = bytearray((d / "z.nii").read_bytes())
        raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1], as a broken converter writes it (nibabel's save would fix it)
        (d / "z.nii").write_bytes(bytes(raw))
        return d / "z.nii"
    if kind == "2-D":
        return _save(d / "flat.nii.gz", data[:, :, 20], affine)
    if kind == "4-D":
        return _save(d / "series.nii.gz", np.stack([data, data], -1), affine)
    if kind == "NaN":
        data[3, 3, 3] = np.nan
        return _save(d / "nan.nii.gz", data, affine)
    if kind == "constant":
        return _save(d / "empty.nii.gz", np.zeros(SHAPE, np.float32), affine)
    if kind == "overflow":
        big = data.astype(np.float64)
        big[20, 20, 20] = 1e300
        return _save(d / "big.nii.gz", big, affine)
    if kind == "not an image":
        (d / "text.nii.gz").write_text("hello")
        return d / "text.nii.gz"
    if kind == "dicom folder":
        folder = d / "dicom"
        folder.mkdir()
        (folder / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
        return folder
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, match", [
    ("complex", "complex"), ("rgb", "colour"), ("zero pixdim", "voxel sizes"), ("2-D", "2-D"), ("4-D", "4-D"),
    ("NaN", "NaN"), ("constant", "constant"), ("overflow", "too large for 32-bit"), ("not an image", "not an image"),
    ("dicom folder", "DICOM"),
])
def test_bad_images_are_one_line(place, bundle, capsys, kind, match):
    d, _, _ = place
    bad = _bad_image(d, kind)
    _refused(["reconstruct", bad, d / "o.nii.gz", *_opts(bundle)], capsys, d, match)


def _implausible(d: Path, kind: str) -> Path:
    data, affine = phantom_brain(SHAPE, SPACING, intensity=80.0)
    rng = np.random.default_rng(0)
    if kind == "noise":
        data = rng.random(SHAPE).astype(np.float32)
    elif kind == "cube":
        data = np.zeros(SHAPE, np.float32)
        data[10:35, 12:42, 10:35] = 50 + rng.random((25, 30, 25))
    elif kind == "one voxel":
        data = np.zeros(SHAPE, np.float32)
        data[22, 27, 22] = 1.0
    elif kind == "mask":
        data = (data > 5).astype(np.float32)
    elif kind == "head with skull":
        g = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
        head = (g[0] / 0.97) ** 2 + (g[1] / 0.97) ** 2 + (g[2] / 0.97) ** 2 < 1
        data = np.where((data == 0) & head, 40.0, data).astype(np.float32)
    return _save(d / f"{kind}.nii.gz", data, affine)


@pytest.mark.parametrize("kind, match", [("noise", "does not look like"), ("cube", "box"), ("one voxel", "empty"),
                                         ("mask", "flat"), ("head with skull", "volume of a brain")])
def test_registered_input_that_is_no_registered_brain_is_refused(place, bundle, capsys, kind, match):
    d, _, _ = place
    bad = _implausible(d, kind)
    line = _refused(["reconstruct", bad, d / "o.nii.gz", *_opts(bundle)], capsys, d, match)
    assert "without --registered" in line


# ----------------------------------------------------------------------------- models and files
def test_a_file_the_manifest_does_not_list_is_refused(place, bundle, capsys, tmp_path_factory):
    import shutil

    d, a, _ = place
    b = Path(shutil.copytree(bundle, tmp_path_factory.mktemp("m") / "b"))
    (b / "extra.safetensors").write_bytes(b"x")
    _refused(["reconstruct", a, d / "o.nii.gz", *_opts(b)], capsys, d, "manifest does not list")


def test_a_truncated_bundle_json_is_refused(place, bundle, capsys, tmp_path_factory):
    import shutil

    d, a, _ = place
    b = Path(shutil.copytree(bundle, tmp_path_factory.mktemp("m") / "b"))
    text = (b / "ldae_bundle.json").read_text()
    (b / "ldae_bundle.json").write_text(text[: len(text) // 2])
    _refused(["reconstruct", a, d / "o.nii.gz", *_opts(b)], capsys, d, "ldae_bundle.json")


def test_a_random_bytes_direction_file_is_named_for_what_it_is(place, bundle, capsys):
    d, a, _ = place
    junk = d / "probe.pt"
    junk.write_bytes(os.urandom(4096))
    _refused(["edit", a, d / "o.nii.gz", "--direction", junk, "--alpha", "1", *_opts(bundle)], capsys, d, "not a PyTorch weight file")


def test_fit_probe_refuses_labels_that_are_not_numbers(place, capsys):
    d, a, _ = place
    (d / "codes.csv").write_text(f"path,e0,e1\n{a},0.1,0.2\n{a}2,0.3,0.1\n{a}3,0.5,0.4\n")
    (d / "labels.csv").write_text(f"path,group\n{a},AD\n{a}2,CN\n{a}3,AD\n")
    _refused(["fit-probe", d / "codes.csv", d / "labels.csv", "--target", "group", "--name", "g", "-o", d / "g.safetensors"],
             capsys, d, "not a number")


def test_no_verify_is_said_in_the_provenance(place, bundle, capsys):
    d, a, _ = place
    code, _ = _cli(["reconstruct", a, d / "o.nii.gz", *_opts(bundle, "--no-verify")], capsys)
    assert code == 0
    model = json.loads((d / "o.json").read_text())["model"]
    assert model["verified"] is False and model["files"]  # the manifest's hashes, not checked


# ----------------------------------------------------------------------------- batch
def _batch_csv(d: Path, rows: list[dict]) -> Path:
    p = d / "jobs.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["input", "operation", "output", "direction", "alpha", "steps"])
        w.writeheader()
        w.writerows(rows)
    return p


def test_batch_rows_that_would_harm_an_input_or_lie_fail_alone(place, bundle, capsys):
    d, a, b = place
    jobs = _batch_csv(d, [
        {"input": a.name, "operation": "reconstruct", "output": a.name},                       # over its own input
        {"input": a.name, "operation": "edit", "direction": "cn", "alpha": "nan", "output": "e1.nii.gz"},
        {"input": a.name, "operation": "edit", "direction": "cn", "alpha": "inf", "output": "e2.nii.gz"},
        {"input": a.name, "operation": "reconstruct", "steps": "100000", "output": "r1.nii.gz"},
        {"input": a.name, "operation": "reconstruct", "output": "r2.out"},
        {"input": b.name, "operation": "reconstruct", "output": "ok.nii.gz"},
    ])
    before = _hashes(d)
    (d / ".ldae-stale.part").write_bytes(b"left by a killed run")
    code = main([str(x) for x in ["batch", jobs, d, *_opts(bundle)]])
    out = capsys.readouterr()
    assert code == 1 and "5 failed" in out.out
    rep = {r["row"]: r for r in json.loads((d / "batch_report.json").read_text())["rows"]}
    assert "is the input" in rep[1]["error"] and "finite" in rep[2]["error"] and "finite" in rep[3]["error"]
    assert "steps" in rep[4]["error"] and ".nii.gz" in rep[5]["error"] and rep[6]["status"] == "done"
    after = _hashes(d)
    assert {p: h for p, h in after.items() if p in before} == before
    assert not (d / "e1.nii.gz").exists() and not (d / "r1.nii.gz").exists() and (d / "ok.nii.gz").exists()
    assert not _leftovers(d)  # the stale temporary was removed too


# ----------------------------------------------------------------------------- Python API
@pytest.fixture(scope="module")
def api(bundle):
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.weights import load_model

    model = load_model(bundle)
    pipe = LDAEPipeline(model)
    x = torch.rand(1, 1, *model.config.space.shape)
    return model, pipe, x


@pytest.mark.parametrize("call, match", [
    (lambda m, p, x: p.encode(torch.rand(1, 1, 64, 80, 64), 2), "model-space volumes of 32×40×32"),
    (lambda m, p, x: p.encode(torch.rand(1, 1, 128, 160, 128), 2), "model-space volumes of 32×40×32"),
    (lambda m, p, x: p.edit(x, m.directions["cn"], [1.0], steps=0), "steps"),
    (lambda m, p, x: p.edit(x, m.directions["cn"], [1.0], steps=2.5), "steps"),
    (lambda m, p, x: p.edit(x, "cn", [1.0], steps=2), "direction must be a Direction"),
    (lambda m, p, x: p.edit(x, m.directions["cn"], [], steps=2), "at least one alpha"),
    (lambda m, p, x: p.edit(x, m.directions["cn"], [float("nan")], steps=2), "finite"),
    (lambda m, p, x: p.interpolate(x, x, [float("nan")], steps=2), "finite"),
    (lambda m, p, x: p.vary(x, 0, steps=2), "variations"),
    (lambda m, p, x: p.vary(x, 2, seed=-1, steps=2), "seed"),
    (lambda m, p, x: p.sample(torch.zeros(2, 32), torch.zeros(1, *m.config.latent_shape), steps=2), "one code per noise"),
    (lambda m, p, x: p.encode(torch.rand(1, 2, 32, 40, 32), 2), "single-channel"),
    (lambda m, p, x: __import__("LDAELib.pipeline", fromlist=["x"]).LDAEPipeline(m, device="gpu0"), "device"),
])
def test_user_errors_in_the_python_api_are_LDAEErrors(api, call, match):
    model, pipe, x = api
    with pytest.raises(LDAEError, match=match):
        call(model, pipe, x)


def test_the_inference_layer_refuses_non_finite_alphas_and_implausible_inputs(place, bundle):
    from LDAELib.inference import Inference, RunSettings
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.weights import load_model

    d, a, _ = place
    model = load_model(bundle)
    inf = Inference(model, LDAEPipeline(model), RunSettings(steps=2, input_space="mni"))
    with pytest.raises(LDAEError, match="finite"):
        inf.edit(a, "cn", [float("inf")])
    with pytest.raises(LDAEError, match="does not look like"):
        inf.reconstruct(_implausible(d, "noise"))
    with pytest.raises(LDAEError, match="steps"):
        RunSettings(steps=1000)


def test_sigterm_mid_run_leaves_no_output_and_no_temporary_file(place, bundle):
    """A run ended by SIGTERM (a batch system's time limit, a killed terminal) stops like Ctrl-C:
    exit 130, no result, no hidden temporary file, no new folder."""
    import signal
    import subprocess
    import sys
    import time

    d, a, b = place
    before = _hashes(d)
    proc = subprocess.Popen([sys.executable, "-m", "LDAELib.cli", "interpolate", str(a), str(b), str(d / "frames"), "--at", "0.25", "0.5",
                             "0.75", "--model", str(bundle), "--steps", "400", "--threads", "1", "--registered"],
                            stderr=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[1]))
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline and "step" not in line:  # the progress bar is running: work has started
        line = proc.stderr.read(200)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-500:]
    assert "cancelled" in err and "no output was written" in err
    assert not (d / "frames").exists() and not _leftovers(d)
    assert {p: h for p, h in _hashes(d).items() if p in before} == before


def test_noise_on_the_raw_path_is_named_for_what_it_is(place, bundle, capsys):
    """Stage A on a volume of noise says it is not a T1 head scan (not that the brain lies outside the field of view)."""
    d, _, _ = place
    noise = _save(d / "noise_raw.nii.gz", np.random.default_rng(3).random((60, 72, 60)).astype(np.float32) * 100, np.diag([3.0, 3.0, 3.0, 1.0]))
    line = _refused(["reconstruct", noise, d / "o.nii.gz", "--model", bundle, "--steps", "2", "--threads", "1", "-q"], capsys, d,
                    "does not look like a T1-weighted head")
    assert "outside" not in line
