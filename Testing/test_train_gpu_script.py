"""scripts/train_demo_gpu.py, the one-call GPU training, run through on the CPU at a tiny size.

On a GPU it makes the demo cohort, trains each stage for its share of a time budget and writes the
stages' hand-over files; here a 4-subject cohort and the test suite's tiny recipe stand in, with a
budget so small that every stage runs its minimum of steps. The files must load into a new work
folder on the same cohort, as they will on the CPU machine that finishes the model.
"""

from __future__ import annotations

import importlib.util
import json
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


def test_a_budgeted_run_hands_back_every_stage_and_they_load_elsewhere(tmp_path):
    from test_training import tiny_recipe

    from LDAELib.training.recipe_file import load_recipe, save_recipe
    from LDAELib.training.session import TrainingSession

    save_recipe(tiny_recipe(), tmp_path / "tiny.json")
    out = tmp_path / "out"
    rc = _script().main(["--work", str(tmp_path / "gpu"), "--out", str(out), "--device", "cpu", "--subjects", "4",
                         "--minutes", "0.01", "--workers", "2", "--config", str(tmp_path / "tiny.json")])
    assert rc == 0
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
