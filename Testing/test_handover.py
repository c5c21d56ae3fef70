"""Stage hand-overs (LDAELib.training.handover): a finished stage as float16, loaded into another work
folder of the same training, and refused anywhere else. Tiny model and phantom cohort of test_training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from test_training import tiny_cohort, tiny_recipe  # noqa: F401  (tiny_cohort is a fixture)

from LDAELib.errors import LDAEError


def _session(recipe, cohort, work):
    from LDAELib.training import TrainingSession

    return TrainingSession(recipe, cohort, work, progress=False, echo=lambda s: None)


@pytest.fixture(scope="module")
def handed(tiny_cohort, tmp_path_factory):  # noqa: F811
    """Work folder A with its autoencoder and DDPM stages finished, and both handed over."""
    a = tmp_path_factory.mktemp("run_a")
    recipe = tiny_recipe(steps=6)
    s = _session(recipe, tiny_cohort, a)
    s.run("autoencoder")
    s.run("ddpm")
    out = tmp_path_factory.mktemp("handover")
    recs = {st: s.save_stage(st, out / f"{st}.safetensors") for st in ("autoencoder", "ddpm")}
    return a, out, recs, recipe


def _ema(work, stage):
    from LDAELib.training.checkpoint import final_checkpoint, load_checkpoint

    return load_checkpoint(final_checkpoint(work / stage), with_optimizer=False).groups["ema"]


def test_a_handover_is_float16_ema_weights_with_its_record(handed):
    a, out, recs, _ = handed
    path = out / "ddpm.safetensors"
    with safe_open(str(path), "pt") as f:
        record = json.loads(f.metadata()["ldae_handover"])
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}
    assert record["stage"] == "ddpm" and record["step"] == 6 and record["upstream"]["autoencoder"]["stage"] == "autoencoder"
    final = a / "ddpm" / "checkpoints" / json.loads((a / "ddpm" / "final.json").read_text())["checkpoint"]
    assert record["weights_sha256"] == json.loads((final / "state.json").read_text())["files"]["weights.safetensors"]["sha256"]
    assert recs["ddpm"]["bytes"] == path.stat().st_size


def test_loaded_stages_carry_on_the_training_elsewhere(handed, tiny_cohort, tmp_path):  # noqa: F811
    """B loads A's autoencoder and DDPM: its weights are A's rounded to float16, the DDPM stage counts as
    trained on B's (loaded) autoencoder, so `all` goes straight on with the representation stage."""
    a, out, _, recipe = handed
    b = tmp_path / "run_b"
    s = _session(recipe, tiny_cohort, b)
    s.load_stage("autoencoder", out / "autoencoder.safetensors")
    s.load_stage("ddpm", out / "ddpm.safetensors")
    for stage in ("autoencoder", "ddpm"):
        wa, wb = _ema(a, stage), _ema(b, stage)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wb[k], wa[k].half().float()), k
    ddpm_files = sorted(p.name for p in (b / "ddpm" / "checkpoints").rglob("*"))
    bundle = _session(recipe, tiny_cohort, b).run("all")
    assert sorted(p.name for p in (b / "ddpm" / "checkpoints").rglob("*")) == ddpm_files  # not retrained
    assert (b / "representation" / "final.json").is_file() and (bundle / "ldae_bundle.json").is_file()


def test_a_handover_is_refused_where_it_does_not_belong(handed, tiny_cohort, tmp_path):  # noqa: F811
    from LDAELib.training.recipe_file import apply_overrides

    a, out, _, recipe = handed
    s = _session(recipe, tiny_cohort, tmp_path / "order")
    with pytest.raises(LDAEError, match="other weights of an earlier stage"):
        s.load_stage("ddpm", out / "ddpm.safetensors")  # its autoencoder is not there yet
    with pytest.raises(LDAEError, match="holds the autoencoder stage, not ddpm"):
        s.load_stage("ddpm", out / "autoencoder.safetensors")
    s.load_stage("autoencoder", out / "autoencoder.safetensors")
    with pytest.raises(LDAEError, match="already complete"):
        s.load_stage("autoencoder", out / "autoencoder.safetensors")

    # Settings of the stage and those before it must match; a later stage's may differ.
    wider_unet = apply_overrides(recipe, ["model.unet_args.base_channel=16"])
    s2 = _session(wider_unet, tiny_cohort, tmp_path / "wider_unet")
    s2.load_stage("autoencoder", out / "autoencoder.safetensors")
    with pytest.raises(LDAEError, match="other model or data settings"):
        s2.load_stage("ddpm", out / "ddpm.safetensors")
    other_plane = _session(apply_overrides(recipe, ["model.slicing_plane=coronal"]), tiny_cohort, tmp_path / "plane")
    other_plane.load_stage("autoencoder", out / "autoencoder.safetensors")
    other_plane.load_stage("ddpm", out / "ddpm.safetensors")  # the encoder's slicing plane is the next stage's
    other_vae = apply_overrides(recipe, ["model.vae_args.latent_channels=2"])
    with pytest.raises(LDAEError, match="other model or data settings"):
        _session(other_vae, tiny_cohort, tmp_path / "other").load_stage("autoencoder", out / "autoencoder.safetensors")
    fewer = tmp_path / "fewer"  # the same cohort less one subject: another split
    shutil.copytree(tiny_cohort, fewer)
    rows = (fewer / "cohort.csv").read_text().splitlines(keepends=True)
    (fewer / "cohort.csv").write_text("".join(r for r in rows if not r.startswith("sub-07")))
    with pytest.raises(LDAEError, match="another split"):
        _session(recipe, fewer, tmp_path / "fewer_run").load_stage("autoencoder", out / "autoencoder.safetensors")

    not_one = tmp_path / "weights.safetensors"
    not_one.write_bytes((a / "autoencoder" / "checkpoints").joinpath(
        json.loads((a / "autoencoder" / "final.json").read_text())["checkpoint"], "weights.safetensors").read_bytes())
    with pytest.raises(LDAEError, match="not an LDAE stage hand-over"):
        _session(recipe, tiny_cohort, tmp_path / "x").load_stage("autoencoder", not_one)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((out / "autoencoder.safetensors").read_bytes()[:500])
    with pytest.raises(LDAEError, match="could not be read"):
        _session(recipe, tiny_cohort, tmp_path / "y").load_stage("autoencoder", cut)
    assert not (tmp_path / "y" / "autoencoder").exists()


def test_only_a_finished_stage_is_handed_over(tiny_cohort, tmp_path):  # noqa: F811
    s = _session(tiny_recipe(steps=6), tiny_cohort, tmp_path / "run")
    s.run("autoencoder", stop_at=3)
    with pytest.raises(LDAEError, match="not complete"):
        s.save_stage("autoencoder", tmp_path / "ae.safetensors")
    assert not (tmp_path / "ae.safetensors").exists()


def test_the_command_line_saves_and_loads(handed, tiny_cohort, tmp_path):  # noqa: F811
    from LDAELib.training.recipe_file import save_recipe

    a, _, _, recipe = handed
    save_recipe(recipe, tmp_path / "tiny.yaml")
    base = [sys.executable, "-m", "LDAELib.cli", "train", "--cohort", str(tiny_cohort), "--config", str(tmp_path / "tiny.yaml"), "-q"]
    f = tmp_path / "ae.safetensors"
    r = subprocess.run(base[:4] + ["autoencoder"] + base[4:] + ["--workdir", str(a), "--save-stage", str(f)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and f.is_file(), r.stderr
    r = subprocess.run(base[:4] + ["autoencoder"] + base[4:] + ["--workdir", str(tmp_path / "b"), "--load-stage", str(f)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and (tmp_path / "b" / "autoencoder" / "final.json").is_file(), r.stderr
    r = subprocess.run(base[:4] + ["all"] + base[4:] + ["--workdir", str(tmp_path / "b"), "--load-stage", str(f)], capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "one training stage" in r.stderr and "Traceback" not in r.stderr
