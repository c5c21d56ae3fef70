"""``ldae batch``: a CSV of jobs, sharded over torchrun processes, resumable, with a per-row report.

A tiny random-weight model (32×40×32 model space) and model-space inputs keep this file fast.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from LDAELib.cli import main
from conftest import REPO, save_nifti

from LDAELib.testing import phantom_brain

SHAPE = (32, 40, 32)
N_SCANS = 8


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from LDAELib.directions import Direction
    from LDAELib.model import LDAEConfig
    from LDAELib.nets.autoencoder import AutoencoderConfig
    from LDAELib.nets.semantic_encoder import SemanticEncoderConfig
    from LDAELib.nets.unet import UNetConfig
    from LDAELib.space import ModelSpaceConfig
    from LDAELib.weights import random_model
    from LDAELib.weights.bundle import save_bundle

    cfg = LDAEConfig(
        autoencoder=AutoencoderConfig(num_channels=(8, 8, 8), norm_num_groups=4, num_res_blocks=1, attention_levels=(False,) * 3),
        unet=UNetConfig(base_channel=8, channel_multiplier=(1, 2), attention_resolutions=(2,), latent_dim=16, norm_num_groups=4,
                        num_residual_blocks_of_a_block=1),
        encoder=SemanticEncoderConfig(widths=(4, 8, 8, 16), depths=(1, 1, 1, 1), emb_dim=16, num_heads=2, seq_len=32),
        space=ModelSpaceConfig(spacing_mm=(6.0,) * 3, shape=SHAPE),
    )
    model = random_model(cfg, seed=1)
    g = torch.Generator().manual_seed(3)
    model.directions["disease"] = Direction("disease", torch.randn(16, generator=g), torch.zeros(16), torch.ones(16))
    return save_bundle(model, tmp_path_factory.mktemp("models") / "tiny", name="tiny batch test model")


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """N_SCANS model-space scans in a folder (two in a subfolder), and a file that is not an image."""
    d = tmp_path_factory.mktemp("scans")
    (d / "sub").mkdir()
    for i in range(N_SCANS):
        data, affine = phantom_brain(SHAPE, 6.0, seed=i, shift=(0.02 * i, 0.0, 0.0))
        save_nifti(d / ("sub" if i >= 6 else ".") / f"s{i}.nii.gz", data, affine)
    (d / "broken.nii.gz").write_text("not an image")
    return d


def _scan(i: int) -> str:
    return f"sub/s{i}.nii.gz" if i >= 6 else f"s{i}.nii.gz"


def _write_csv(path: Path, rows: list[dict]) -> Path:
    cols = ["input", "operation", "output", "direction", "alpha", "input_b", "at", "n", "seed", "steps"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def _jobs(scans: Path, bad: bool = False) -> Path:
    """20 rows: every operation, several operations on one scan, per-row seed and steps (and a bad 21st)."""
    rows = []
    for i in range(N_SCANS):
        rows.append({"input": _scan(i), "operation": "reconstruct"})
        rows.append({"input": _scan(i), "operation": "edit", "direction": "disease", "alpha": "-2" if i % 2 else "1.5"})
    rows += [
        {"input": _scan(0), "operation": "interpolate", "input_b": _scan(1), "at": "0.25 0.75"},
        {"input": _scan(2), "operation": "vary", "n": "2", "seed": "7"},
        {"input": _scan(3), "operation": "embed", "output": "codes/s3.csv"},
        {"input": _scan(4), "operation": "edit", "direction": "disease", "alpha": "2", "steps": "3", "output": "custom/s4_strong.nii.gz"},
    ]
    if bad:
        rows.append({"input": "broken.nii.gz", "operation": "reconstruct"})
    return _write_csv(scans / ("jobs_bad.csv" if bad else "jobs.csv"), rows)


def _batch(csv_path, out, bundle, *extra):
    return ["batch", str(csv_path), str(out), "--model", str(bundle), "--model-space", "--steps", "2", "--threads", "1", "-q", *extra]


def _run_in_process(argv) -> int:
    before = torch.get_num_threads()
    try:
        return main(argv)
    finally:
        torch.set_num_threads(before)


def _report(out: Path) -> dict:
    return json.loads((out / "batch_report.json").read_text())


def _volumes(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(out.rglob("*.nii.gz"))}


def test_two_torchrun_processes_give_the_same_volumes_as_one(scans, tiny_bundle, tmp_path, capsys):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch has no torch.distributed with gloo")
    jobs = _jobs(scans, bad=True)
    one = tmp_path / "one"
    assert _run_in_process(_batch(jobs, one, tiny_bundle)) == 1
    line = capsys.readouterr().out
    assert "20 done" in line and "1 failed" in line and "scans/hour" in line

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "LDAELib.cli",
           *_batch(jobs, tmp_path / "two", tiny_bundle)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]  # the bad row
    assert done.stdout.count("ldae batch:") == 1 and "1 failed" in done.stdout  # only rank 0 reports

    a, b = _volumes(one), _volumes(tmp_path / "two")
    assert len(a) == 2 * N_SCANS + 2 + 2 + 1 and sorted(a) == sorted(b)
    assert "sub/s6_reconstruct.nii.gz" in a and "s0_to_s1_interpolate/interp_t0.250.nii.gz" in a and "s2_vary_seed7/variation_01.nii.gz" in a
    for name in a:
        assert a[name].dtype == np.float32 and np.array_equal(a[name], b[name]), name
    assert (one / "codes" / "s3.csv").read_text().split("\n")[1].split(",")[1:] == (tmp_path / "two" / "codes" / "s3.csv").read_text().split("\n")[1].split(",")[1:]

    rep = _report(tmp_path / "two")
    assert rep["summary"]["processes"] == 2 and rep["summary"]["done"] == 20 and rep["summary"]["scans_per_hour"] > 0
    assert [r["row"] for r in rep["rows"]] == list(range(1, 22)) and rep["rows"][20]["status"] == "failed"
    assert all(r["rank"] == (r["row"] - 1) % 2 for r in rep["rows"])  # rows rank, rank+K, …
    prov = json.loads((tmp_path / "two" / "custom" / "s4_strong.json").read_text())
    assert prov["operation"] == "edit" and prov["alpha"] == 2.0 and prov["steps"] == 3 and prov["batch"]["row"] == 20
    assert json.loads((one / "s2_vary_seed7" / "variation_00.json").read_text())["seed"] == 7


def test_killed_run_resumes_with_only_the_missing_rows(scans, tiny_bundle, tmp_path, monkeypatch, capsys):
    jobs = _jobs(scans)
    out = tmp_path / "out"
    from LDAELib.batch import run as batch_run

    real_row, computed = batch_run.run_row, []

    def row_then_stop(*args, **kwargs):  # the process is stopped as the 7th row starts, as if killed
        if len(computed) == 6:
            raise KeyboardInterrupt
        computed.append(real_row(*args, **kwargs))

    monkeypatch.setattr(batch_run, "run_row", row_then_stop)
    assert _run_in_process(_batch(jobs, out, tiny_bundle)) == 130  # stopped: no report
    assert not (out / "batch_report.json").exists()
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # rows run grouped by input: s0's rows 1, 2, 17 (interpolation, 2 volumes), then s1's 3, 4, then row 5
    assert len([p for p in first if p.name.endswith(".nii.gz")]) == 7
    assert not [p for p in out.rglob("*.part*")]  # nothing half-written
    # a row whose outputs are incomplete (its sidecar lost) is redone
    (out / "s0_reconstruct.json").unlink()

    monkeypatch.setattr(batch_run, "run_row", real_row)
    assert _run_in_process(_batch(jobs, out, tiny_bundle)) == 0
    assert "20 rows" in capsys.readouterr().out
    status = {r["row"]: r["status"] for r in _report(out)["rows"]}
    assert list(status.values()).count("skipped") == 5 and list(status.values()).count("done") == 15
    assert status[1] == "done"  # s0_reconstruct again
    for p, mtime in first.items():
        if p.name.startswith("s0_reconstruct"):
            continue
        assert p.stat().st_mtime_ns == mtime, f"{p} was rewritten"
    # all complete now: a third run computes nothing
    assert _run_in_process(_batch(jobs, out, tiny_bundle)) == 0
    assert _report(out)["summary"]["skipped"] == 20 and _report(out)["summary"]["scans_per_hour"] is None


def test_bad_rows_are_reported_and_the_others_finish(scans, tiny_bundle, tmp_path, capsys):
    rows = [
        {"input": _scan(0), "operation": "reconstruct"},
        {"input": "broken.nii.gz", "operation": "reconstruct"},
        {"input": "missing.nii.gz", "operation": "edit", "direction": "disease", "alpha": "1"},
        {"input": _scan(1), "operation": "edit", "direction": "nonexistent", "alpha": "1"},
        {"input": _scan(1), "operation": "edit", "direction": "disease"},
        {"input": _scan(1), "operation": "warp"},
        {"input": _scan(1), "operation": "reconstruct", "alpha": "3"},
        {"input": _scan(1), "operation": "interpolate", "input_b": _scan(2), "at": "0.5 x"},
        {"input": _scan(1), "operation": "edit", "direction": "disease", "alpha": "-1", "output": "../escape.nii.gz"},
        {"input": _scan(1), "operation": "edit", "direction": "disease", "alpha": "-1"},
    ]
    out = tmp_path / "out"
    assert _run_in_process(_batch(_write_csv(tmp_path / "jobs.csv", [{**r, "input": str(scans / r["input"]), **(
        {"input_b": str(scans / r["input_b"])} if "input_b" in r else {})} for r in rows]), out, tiny_bundle)) == 1
    cap = capsys.readouterr()
    assert "2 done" in cap.out and "8 failed" in cap.out and "first failure: row 2" in cap.out
    rep = {r["row"]: r for r in _report(out)["rows"]}
    assert [rep[i]["status"] for i in range(1, 11)] == ["done"] + ["failed"] * 8 + ["done"]
    assert "not an image" in rep[2]["error"] and "not found" in rep[3]["error"] and "unknown direction" in rep[4]["error"]
    assert "alpha" in rep[5]["error"] and "unknown operation" in rep[6]["error"] and "does not use" in rep[7]["error"]
    assert "numbers" in rep[8]["error"] and "inside OUTPUT_DIR" in rep[9]["error"]
    assert (out / "s0_reconstruct.nii.gz").exists() and (out / "s1_edit_disease_-1.nii.gz").exists()
    with open(out / "batch_report.csv") as f:
        assert next(csv.reader(f)) == ["row", "line", "operation", "input", "output", "status", "seconds", "rank", "error"]


def test_changed_row_is_recomputed_and_clashing_outputs_are_refused(scans, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    row = {"input": _scan(5), "operation": "edit", "direction": "disease", "alpha": "1", "output": "e.nii.gz"}
    jobs = _write_csv(scans / "one.csv", [row])
    assert _run_in_process(_batch(jobs, out, tiny_bundle)) == 0
    assert _run_in_process(_batch(jobs, out, tiny_bundle)) == 0
    assert _report(out)["rows"][0]["status"] == "skipped"
    _write_csv(scans / "one.csv", [{**row, "alpha": "-1"}])  # same output, another job: redone
    assert _run_in_process(_batch(jobs, out, tiny_bundle)) == 0
    assert _report(out)["rows"][0]["status"] == "done" and json.loads((out / "e.json").read_text())["alpha"] == -1.0

    clash = _write_csv(scans / "clash.csv", [row, {**row, "alpha": "2"}])
    capsys.readouterr()
    assert _run_in_process(_batch(clash, tmp_path / "clash", tiny_bundle)) == 1
    assert "rows 1 and 2 both write e.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "clash" / "batch_report.json").exists()


def test_sharding_is_deterministic_and_groups_rows_by_input():
    from LDAELib.batch.jobs import Job, shard

    inputs = ["a", "b", "a", "c", "b", "a", "d", "c"]
    jobs = [Job(index=i, line=i + 2, raw={}, input=Path(x)) for i, x in enumerate(inputs)]
    assert [j.index for j in shard(jobs, 0, 1)] == [0, 2, 5, 1, 4, 3, 7, 6]
    r0, r1 = shard(jobs, 0, 2), shard(jobs, 1, 2)
    assert sorted(j.index for j in r0) == [0, 2, 4, 6] and sorted(j.index for j in r1) == [1, 3, 5, 7]
    assert [j.index for j in r0] == [0, 2, 4, 6] and [j.index for j in r1] == [1, 3, 7, 5]


def test_a_limitation_on_the_model_card_is_said_once_for_the_rows_it_concerns(scans, tiny_bundle, tmp_path, capsys):
    import json
    import shutil

    from LDAELib.weights.bundle import annotate_bundle

    b = annotate_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"), limitations={"vary": "no brain from noise", "edit": "weak edits"})
    rows = [{"input": str(scans / _scan(0)), "operation": "vary", "n": "2"}, {"input": str(scans / _scan(1)), "operation": "vary", "n": "2"},
            {"input": str(scans / _scan(0)), "operation": "reconstruct"}]
    out = tmp_path / "out"
    assert _run_in_process(_batch(_write_csv(tmp_path / "jobs.csv", rows), out, b)) == 0
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1 and "no brain from noise" in err and "weak edits" not in err  # no edit row
    sidecars = sorted(out.rglob("variation_*.json"))
    assert len(sidecars) == 4 and all(json.loads(p.read_text())["model_limitation"] == "no brain from noise" for p in sidecars)
