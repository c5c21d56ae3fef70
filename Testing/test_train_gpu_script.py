"""scripts/train_demo_gpu.py, the one-call GPU training, run through on the CPU at a tiny size.

On a GPU it makes the demo cohort, trains each stage for its share of a time budget and writes the
stages' hand-over files; here a 4-subject cohort and the test suite's tiny recipe stand in, with a
budget so small that every stage runs its minimum of steps. The files must load into a new work
folder on the same cohort, as they will on the CPU machine that finishes the model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from LDAELib.cohort.templates import templates_available

REPO = Path(__file__).resolve().parents[1]
_MISSING = templates_available()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"cohort templates not installed: {_MISSING}")


def _script():
    spec = importlib.util.spec_from_file_location("train_demo_gpu", REPO / "scripts" / "train_demo_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def budgeted_run(tmp_path_factory):
    """One whole run of the script at the tiny size: (its folder, the hand-over folder)."""
    from test_training import tiny_recipe

    from LDAELib.training.recipe_file import save_recipe

    tmp_path = tmp_path_factory.mktemp("gpu_script")
    save_recipe(tiny_recipe(), tmp_path / "tiny.json")
    out = tmp_path / "out"
    rc = _script().main(["--work", str(tmp_path / "gpu"), "--out", str(out), "--device", "cpu", "--subjects", "4",
                         "--minutes", "0.01", "--workers", "2", "--config", str(tmp_path / "tiny.json")])
    assert rc == 0
    return tmp_path, out


def test_a_budgeted_run_hands_back_every_stage_and_they_load_elsewhere(budgeted_run):
    from LDAELib.training.recipe_file import load_recipe
    from LDAELib.training.session import TrainingSession

    tmp_path, out = budgeted_run
    summary = json.loads((out / "gpu_training.json").read_text())
    assert summary["machine"]["device"] == "cpu" and summary["cohort_s"] >= 0 and summary["augment_s_per_volume"] > 0
    for stage in ("autoencoder", "ddpm", "representation"):
        s = summary["stages"][stage]
        assert s["steps"] == 20 and s["batch"] == 2 and s["expected_s_per_step"] > 0, s  # the minimum: no time was left
        assert (out / f"{stage}.safetensors").stat().st_size == s["bytes"]
    recipe = load_recipe(out / "recipe.json")
    assert [recipe.stage(s).steps for s in ("autoencoder", "ddpm", "representation")] == [20, 20, 20]

    session = TrainingSession(recipe, tmp_path / "gpu" / "cohort", tmp_path / "here", progress=False, echo=lambda s: None)
    for stage in ("autoencoder", "ddpm", "representation"):
        assert session.load_stage(stage, out / f"{stage}.safetensors")["step"] == 20


def test_a_run_can_take_finished_stages_and_train_only_the_rest(budgeted_run, tmp_path, capsys):
    """--load takes stages from hand-over files (here the first run's), --set changes the recipe and
    --by caps the plan; only the stage left is trained and handed back, and it loads after the others."""
    from LDAELib.training.recipe_file import load_recipe
    from LDAELib.training.session import TrainingSession

    first, first_out = budgeted_run
    script = _script()
    out = tmp_path / "out"
    shutil.copytree(first / "gpu" / "cohort", tmp_path / "gpu" / "cohort")  # made already: not made again
    common = ["--work", str(tmp_path / "gpu"), "--out", str(out), "--device", "cpu", "--subjects", "4",
              "--workers", "2", "--config", str(first_out / "recipe.json")]
    assert script.main([*common, "--load", "autoencoder"]) == 2
    assert "--load takes STAGE=FILE" in capsys.readouterr().err
    loads = [f"--load=autoencoder={first_out / 'autoencoder.safetensors'}", f"--load=ddpm={first_out / 'ddpm.safetensors'}"]
    rc = script.main([*common, *loads, "--minutes", "5", "--by", "0", "--set", "representation.seed=3",
                      "--set", "autoencoder.steps=999"])
    assert rc == 0
    summary = json.loads((out / "gpu_training.json").read_text())
    assert set(summary["stages"]) == {"representation"} and summary["stages"]["representation"]["steps"] == 20
    assert summary["loaded"] == {"autoencoder": str(first_out / "autoencoder.safetensors"),
                                 "ddpm": str(first_out / "ddpm.safetensors")}
    assert summary["overrides"] == ["representation.seed=3", "autoencoder.steps=999"]
    assert not (out / "autoencoder.safetensors").exists() and not (out / "ddpm.safetensors").exists()
    recipe = load_recipe(out / "recipe.json")
    assert recipe.representation.seed == 3 and recipe.autoencoder.batch_size == load_recipe(first_out / "recipe.json").autoencoder.batch_size
    # The loaded stages are finished in recipe.json at the steps they were trained for, so that
    # 'ldae train all' with it (finish_gpu_stages.sh) goes on to the probes instead of training them on.
    assert (recipe.autoencoder.steps, recipe.ddpm.steps) == (20, 20)

    # The same cohort, a new work folder: the loaded stages first, then the one trained here.
    session = TrainingSession(recipe, first / "gpu" / "cohort", tmp_path / "here", progress=False, echo=lambda s: None)
    for stage in ("autoencoder", "ddpm"):
        session.load_stage(stage, first_out / f"{stage}.safetensors")
    assert session.load_stage("representation", out / "representation.safetensors")["step"] == 20
