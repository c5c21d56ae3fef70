"""The worker process and its JSON-lines protocol, tested by running the real process.

A tiny random model keeps each request well under a second; one worker serves the whole module
(as in Slicer, where one warm worker serves every slider move).
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from LDAELib.server import protocol  # noqa: E402
from LDAELib.server.client import WorkerClient, WorkerError  # noqa: E402
from LDAELib.testing import make_tiny_bundle, phantom_brain  # noqa: E402

STEPS = 10


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    d = tmp_path_factory.mktemp("scans")
    paths = {}
    for name, seed, vent in (("a", 0, 1.0), ("b", 1, 1.4)):
        data, affine = phantom_brain((45, 54, 45), 4.0, ventricle_scale=vent, seed=seed, intensity=80.0)
        paths[name] = d / f"{name}.nii"
        nib.save(nib.Nifti1Image(data, affine), str(paths[name]))
    const = d / "constant.nii"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), str(const))
    paths["constant"] = const
    return paths


@pytest.fixture(scope="module")
def worker(tiny_bundle):
    client = WorkerClient(tiny_bundle, device="cpu", threads=1)
    client.start(timeout=120)
    yield client
    client.close()


def _run(worker, request, timeout=120):
    messages = []
    rid = worker.submit(request)
    final = worker.wait(rid, on_message=lambda m: messages.append(m) if m.get("id") == rid else None, timeout=timeout)
    return final, [m for m in messages if m["type"] == "progress"]


def _edit(scan, out_dir, alpha=2.0, key="a", steps=STEPS, **extra):
    return {"op": "edit", "source": {"path": str(scan), "key": key}, "direction": "cn", "alphas": [alpha], "steps": steps,
            "out_dir": str(out_dir), **extra}


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        return "\nState:\tZ" not in status.read_text()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ready_message_describes_model_and_machine(worker, tiny_bundle):
    info = worker.info
    assert info["type"] == "ready" and info["protocol"] == protocol.PROTOCOL_VERSION
    model = info["model"]
    assert model["name"] == "tiny random test model" and len(model["id"]) == 16 and len(model["hash"]) == 64
    assert "no licence restrictions" in model["licence"]
    assert [d["name"] for d in model["directions"]] == ["cn"]
    assert "CN" in model["directions"][0]["description"] and "AD" in model["directions"][0]["description"]
    diag = info["diagnostics"]
    assert diag["torch"] and diag["device"] == "cpu" and diag["threads"] == 1
    assert set(diag) >= {"python", "memory_total_gb", "cuda_available"}


def test_edit_reports_progress_then_result_on_the_source_grid(worker, scans, tmp_path):
    final, progress = _run(worker, _edit(scans["a"], tmp_path, key="grid"))
    assert final["type"] == "result", final
    assert progress, "no progress messages"
    totals = {m["total"] for m in progress}
    assert len(totals) == 1
    total = totals.pop()
    assert [m["done"] for m in progress] == list(range(1, total + 1))  # step i/N, every step, in order
    assert {m["stage"] for m in progress} >= {"autoencoder", "inversion", "sampling", "decode"}
    assert all(m["eta"] is not None and m["eta"] >= 0 for m in progress)
    assert "step" in protocol.progress_text(progress[0])
    (out,) = final["outputs"]
    assert out["kind"] == "edit" and out["alpha"] == 2.0
    img, src = nib.load(out["path"]), nib.load(str(scans["a"]))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    assert np.isfinite(img.get_fdata()).all()
    prov = final["provenance"]
    assert prov["operation"] == "edit" and prov["direction"] == "cn" and prov["alphas"] == [2.0] and prov["steps"] == STEPS
    assert prov["model"]["id"] == worker.info["model"]["id"] and prov["model"]["hash"] == worker.info["model"]["hash"]
    assert "not an acquired scan" in prov["note"]


def test_second_edit_of_a_source_reuses_its_encoding_and_skips_the_inversion(worker, scans, tmp_path):
    """The second and third edits of one source run no encoder and no inversion: only sampling and
    decoding (the calls and the progress stages say so). How much time that saves is measured by
    benchmarks/bench_worker_cache.py, not asserted here: a wall-clock comparison fails on a loaded
    machine."""
    first, progress = _run(worker, _edit(scans["b"], tmp_path / "1", alpha=1.0, key="cache"))
    assert first["type"] == "result" and first["calls"]["inversion"] == 1 and first["cache"] == {"encoded": False, "inverted": False}
    assert "inversion" in {m["stage"] for m in progress}
    for alpha in (-1.0, 3.0):
        again, progress2 = _run(worker, _edit(scans["b"], tmp_path / f"2{alpha}", alpha=alpha, key="cache"))
        assert again["type"] == "result"
        assert again["cache"] == {"encoded": True, "inverted": True}
        assert again["calls"]["autoencoder_encode"] == 0 and again["calls"]["semantic_encode"] == 0 and again["calls"]["inversion"] == 0
        assert {m["stage"] for m in progress2} == {"sampling", "decode"}


def test_bad_input_gives_one_clear_error_and_the_worker_keeps_serving(worker, scans, tmp_path):
    final, _ = _run(worker, _edit(tmp_path / "missing.nii", tmp_path))
    assert final["type"] == "error" and final["kind"] == "LDAEError" and "does not exist" in final["message"]
    final, _ = _run(worker, _edit(scans["constant"], tmp_path, key="const"))
    assert final["type"] == "error" and "constant" in final["message"]
    final, _ = _run(worker, dict(_edit(scans["a"], tmp_path), direction="age"))
    assert final["type"] == "error" and "unknown direction 'age'" in final["message"] and "cn" in final["message"]
    final, _ = _run(worker, dict(_edit(scans["a"], tmp_path), steps=0))
    assert final["type"] == "error" and "steps" in final["message"]
    final, _ = _run(worker, {"op": "frobnicate"})
    assert final["type"] == "error" and "unknown operation" in final["message"]
    final, _ = _run(worker, _edit(scans["a"], tmp_path, difference_reference="average"))
    assert final["type"] == "error" and "difference_reference" in final["message"]
    assert not list(tmp_path.glob("*.nii"))
    final, _ = _run(worker, _edit(scans["a"], tmp_path, steps=2))
    assert final["type"] == "result"


@pytest.fixture(scope="module")
def in_process(tiny_bundle):
    """A Worker object in this process (same code as the process runs), for hooks that need patching."""
    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.server.worker import Worker
    from LDAELib.weights import load_model

    model = load_model(tiny_bundle)
    messages: list = []
    return Worker(model, LDAEPipeline(model), messages.append), messages


def test_raw_input_goes_through_the_registration_hook_once_per_scan(in_process, scans, tmp_path, monkeypatch):
    from LDAELib.inference import space as worker_module
    from LDAELib.space import from_model_space, to_model_space

    worker, messages = in_process
    calls = []

    class Cache:
        pass

    def to_native(data, affine, space, cache=None, progress=None, cancel=None):
        calls.append(type(cache).__name__)
        progress(1, 1, "registration: affine")
        return to_model_space(data, affine, space)

    def from_native(y, ctx):
        calls.append("back")
        return from_model_space(y, ctx)

    monkeypatch.setattr(worker_module, "registration_api", lambda: (to_native, from_native, Cache))
    for alpha in (1.0, 2.0):
        messages.clear()
        worker.handle(dict(_edit(scans["a"], tmp_path / str(alpha), alpha=alpha, key="raw", steps=2, input_space="raw"), id=alpha))
        final = messages[-1]
        assert final["type"] == "result", final
        assert nib.load(final["outputs"][0]["path"]).shape == nib.load(str(scans["a"])).shape
    assert calls == ["Cache", "back", "back"]  # registered once; each result mapped back through it
    assert final["provenance"]["input_space"] == "raw"


def test_raw_input_without_registration_says_what_to_do(in_process, scans, tmp_path, monkeypatch):
    from LDAELib.errors import LDAEError
    from LDAELib.inference import space as worker_module

    def unavailable():
        raise LDAEError("this scan is marked as not registered to MNI, but raw-scan registration is not available")

    worker, messages = in_process
    monkeypatch.setattr(worker_module, "registration_api", unavailable)
    messages.clear()
    worker.handle(dict(_edit(scans["b"], tmp_path, key="raw-missing", input_space="raw"), id="r"))
    assert messages[-1]["type"] == "error" and "registered to MNI" in messages[-1]["message"]


def test_cancel_stops_a_run_in_the_middle_and_keeps_the_worker_warm(worker, scans, tmp_path):
    rid = worker.submit(_edit(scans["a"], tmp_path / "c", key="cancel-me", steps=400))
    seen = []

    def on_message(m):
        if m.get("id") == rid and m["type"] == "progress":
            seen.append(m)
            if len(seen) == 3:
                worker.cancel(rid)

    final = worker.wait(rid, on_message=on_message, timeout=120)
    assert final["type"] == "cancelled"
    assert 3 <= len(seen) < seen[0]["total"] // 2
    assert not list((tmp_path / "c").glob("*.nii")) if (tmp_path / "c").exists() else True
    again, _ = _run(worker, _edit(scans["a"], tmp_path / "d", key="grid", steps=2))
    assert again["type"] == "result"


def test_interpolation_and_variations(worker, scans, tmp_path):
    final, _ = _run(worker, {"op": "interpolate", "a": {"path": str(scans["a"]), "key": "a"}, "b": {"path": str(scans["b"]), "key": "b"},
                             "fractions": [0.25, 0.5, 0.75], "steps": 3, "out_dir": str(tmp_path / "i")})
    assert final["type"] == "result"
    assert [o["fraction"] for o in final["outputs"]] == [0.25, 0.5, 0.75]
    assert final["provenance"]["fractions"] == [0.25, 0.5, 0.75]
    final, _ = _run(worker, {"op": "vary", "source": {"path": str(scans["a"]), "key": "a"}, "n": 3, "seed": 5, "steps": 3, "out_dir": str(tmp_path / "v")})
    assert final["type"] == "result"
    kinds = [o["kind"] for o in final["outputs"]]
    assert kinds == ["variation"] * 3 + ["spread"]
    vs = np.stack([nib.load(o["path"]).get_fdata() for o in final["outputs"][:3]])
    spread = nib.load(final["outputs"][3]["path"]).get_fdata()
    np.testing.assert_allclose(spread, vs.std(0), rtol=1e-4, atol=1e-4)


def test_an_unreadable_line_is_answered_and_ignored(worker):
    worker.proc.stdin.write("this is not json\n")
    worker.proc.stdin.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msgs = worker.poll(0.1)
        errs = [m for m in msgs if m["type"] == "error" and m.get("kind") == "protocol"]
        if errs:
            assert "unreadable request line" in errs[0]["message"]
            break
    else:
        pytest.fail("no protocol error reported")
    final, _ = _run(worker, {"op": "info"})
    assert final["type"] == "result" and final["model"]["name"] == "tiny random test model"


def test_a_bad_model_folder_fails_at_start_with_its_message(tmp_path):
    client = WorkerClient(tmp_path / "no-such-model", device="cpu", threads=1)
    with pytest.raises(WorkerError, match="model folder not found"):
        client.start(timeout=120)
    assert not client.running


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups; Windows uses taskkill /T /F")
def test_kill_ends_the_whole_process_tree_and_pending_requests_get_an_error(tiny_bundle, scans, tmp_path):
    # A launcher that stays the parent of the Python it starts, as PythonSlicer does.
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\necho launcher-done >&2\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    client = WorkerClient(tiny_bundle, python=str(launcher), device="cpu", threads=1)
    info = client.start(timeout=120)
    launcher_pid, worker_pid = client.proc.pid, info["pid"]
    assert launcher_pid != worker_pid and _alive(worker_pid)
    rid = client.submit(_edit(scans["a"], tmp_path / "k", key="kill", steps=400))
    while not any(m.get("type") == "progress" for m in client.poll(0.1)):
        pass
    client.kill()
    deadline = time.monotonic() + 10
    while (_alive(worker_pid) or _alive(launcher_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker_pid) and not _alive(launcher_pid)
    final = client.wait(rid, timeout=10)
    assert final["type"] == "error" and "stopped unexpectedly" in final["message"]
    assert not list((tmp_path / "k").glob("*.nii")) if (tmp_path / "k").exists() else True


def test_worker_exits_when_its_parent_closes_stdin(tiny_bundle):
    client = WorkerClient(tiny_bundle, device="cpu", threads=1)
    client.start(timeout=120)
    client.proc.stdin.close()
    assert client.proc.wait(timeout=30) == 0


def test_scan_points_reach_model_space_through_the_registration():
    """A raw scan's slice positions go through its registration (ITK, LPS) to MNI, then the model grid."""
    from types import SimpleNamespace

    import SimpleITK as sitk

    from LDAELib.inference.space import registered_points as _registered_points

    shift = sitk.TranslationTransform(3, (2.0, -4.0, 6.0))  # scan LPS → MNI LPS: +2 L, −4 P, +6 S
    model_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    model_affine[:3, 3] = [-90.0, -126.0, -72.0]
    ctx = SimpleNamespace(registration=SimpleNamespace(native_to_mni=shift), space=SimpleNamespace(model_affine=model_affine))
    ras = np.array([[0.0, 0.0, 0.0], [10.0, 20.0, 30.0]])
    mni_ras = ras + [-2.0, 4.0, 6.0]  # L and P flip sign in RAS
    want = (mni_ras - model_affine[:3, 3]) / 3.0
    np.testing.assert_allclose(_registered_points(ctx)(ras), want)


def test_encoding_for_the_slider_prepares_the_previews_of_the_slices_on_screen(worker, scans, tmp_path):
    """After an encode with preview_steps, a preview of the slices on screen costs only its sampling
    and slab decodes: no encoder, no inversion, no full decode (the GroupNorm statistics are kept)."""
    src = {"path": str(scans["b"]), "key": "slider"}
    final, progress = _run(worker, {"op": "encode", "source": src, "steps": 4, "preview_steps": 2})
    assert final["type"] == "result", final
    assert final["calls"]["inversion"] == 2 and final["calls"]["decode"] == 1  # T=4 and T=2; one decode for the statistics
    assert progress[-1]["done"] == progress[-1]["total"]
    region = {"point": [0.0, 0.0, 10.0], "planes": ["axial", "coronal"]}
    final, _ = _run(worker, dict(_edit(scans["b"], tmp_path, key="slider", steps=2), region=region))
    assert final["type"] == "result", final
    assert final["calls"] == {"autoencoder_encode": 0, "semantic_encode": 0, "inversion": 0, "sampling": 1, "decode": 0}
    assert [r["plane"] for r in final["region"]] == ["axial", "coronal"]
    assert final["provenance"]["preview"]["outside_slabs"] == "source"
    assert nib.load(final["outputs"][0]["path"]).shape == nib.load(str(scans["b"])).shape
    bad, _ = _run(worker, {"op": "encode", "source": src, "steps": 4, "preview_steps": 0})
    assert bad["type"] == "error" and "preview_steps" in bad["message"]


def test_a_limitation_on_the_model_card_reaches_the_panel_and_the_provenance(tiny_bundle, scans, tmp_path):
    import shutil

    from LDAELib.pipeline import LDAEPipeline
    from LDAELib.server.worker import Worker, describe_model
    from LDAELib.weights import load_model
    from LDAELib.weights.bundle import annotate_bundle

    b = annotate_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"), limitations={"vary": "no brain from noise"})
    model = load_model(b)
    assert describe_model(model)["limitations"] == {"vary": "no brain from noise"}
    messages: list = []
    worker = Worker(model, LDAEPipeline(model), messages.append)
    worker.handle({"id": 1, "op": "vary", "source": {"path": str(scans["a"]), "key": "a"}, "n": 2, "seed": 5, "steps": 2, "out_dir": str(tmp_path / "v")})
    assert messages[-1]["type"] == "result", messages[-1]
    assert messages[-1]["provenance"]["model_limitation"] == "no brain from noise"
    worker.handle(dict(_edit(scans["a"], tmp_path / "e", alpha=1.0, key="a", steps=2), id=2))
    assert messages[-1]["type"] == "result", messages[-1]
    assert "model_limitation" not in messages[-1]["provenance"]


def test_the_command_line_and_the_worker_record_the_same_provenance(tiny_bundle, scans, tmp_path, capsys):
    """One inference layer under both: the same edit from ``ldae edit`` and from a worker request
    carries the same record, field for field (only the time of writing differs)."""
    import json

    from LDAELib.cli import main
    from LDAELib.inference import RunSettings
    from LDAELib.inference.loading import open_model, open_pipeline
    from LDAELib.server.worker import Worker

    code = main([str(a) for a in ["edit", scans["a"], tmp_path / "cli.nii.gz", "--model", tiny_bundle, "--direction", "cn",
                                  "--alpha", "1.5", "--steps", "2", "-q", "--registered"]])
    assert code == 0, capsys.readouterr().err
    cli = json.loads((tmp_path / "cli.json").read_text())
    settings = RunSettings(input_space="mni")
    model = open_model(str(tiny_bundle), settings)
    messages: list = []
    worker = Worker(model, open_pipeline(model, settings), messages.append, settings)
    worker.handle(dict(_edit(scans["a"], tmp_path / "w", alpha=1.5, key="same", steps=2), id=1))
    assert messages[-1]["type"] == "result", messages[-1]
    served = messages[-1]["outputs"][0]["provenance"]
    for record in (cli, served):
        record.pop("created")
    assert served == cli
    assert cli["inputs"] == [{"path": str(scans["a"].resolve()), "sha256": cli["inputs"][0]["sha256"]}]
    assert cli["model"]["verified"] is True and cli["input_space"] == "mni" and cli["alpha"] == 1.5


def _dying_python(tmp_path, message: str, code: int) -> str:
    """An interpreter that writes ``message`` on stderr and exits, before any protocol line: a
    worker that dies while loading (a CUDA error, a missing module, a native crash)."""
    script = tmp_path / "dying-python"
    script.write_text(f'#!/bin/sh\necho "{message}" >&2\nexit {code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for the interpreter")
def test_a_worker_that_dies_before_any_line_reports_its_exit_code_and_stderr(tmp_path):
    client = WorkerClient(tmp_path, python=_dying_python(tmp_path, "RuntimeError: CUDA error: no kernel image", 3), device="cpu")
    client.start(wait=False)
    deadline, exit_msg = time.monotonic() + 30, None
    while exit_msg is None and time.monotonic() < deadline:
        exit_msg = next((m for m in client.poll(0.1) if m["type"] == "exit"), None)
    assert exit_msg is not None and exit_msg["returncode"] == 3
    assert "exit code 3" in exit_msg["message"] and "CUDA error: no kernel image" in exit_msg["message"]


def test_killing_on_windows_opens_no_console_window(monkeypatch):
    """taskkill is a console program: without CREATE_NO_WINDOW a console window flashes up."""
    from LDAELib.server import client as client_module

    import types

    calls = []
    monkeypatch.setattr(client_module, "os", types.SimpleNamespace(name="nt"))  # the client's view only
    monkeypatch.setattr(client_module, "subprocess", types.SimpleNamespace(
        run=lambda args, **kwargs: calls.append((args, kwargs)), DEVNULL=-3, CREATE_NO_WINDOW=0x08000000))
    client_module.kill_process_tree(type("Proc", (), {"pid": 4242})())
    (args, kwargs), = calls
    assert args[:4] == ["taskkill", "/T", "/F", "/PID"] and args[4] == "4242"
    assert kwargs["creationflags"] & 0x08000000  # CREATE_NO_WINDOW
