#!/usr/bin/env python
"""Train the demo model on one GPU within a time budget; hand each finished stage back as a float16 file.

The demo recipe (LDAELib/training/recipes/demo.yaml) takes a 2-core CPU about three hours. On a GPU
the same model trains in minutes, so this script spends a fixed budget of wall time instead of a
fixed number of steps: it makes the cohort (``ldae cohort --subjects 120 --seed 0 --labels``, one
process per core), brings it into model space (likewise), measures one optimizer step of each stage
on the GPU and gives each stage its share of the time left as steps (autoencoder ½, DDPM ⅕,
representation the rest), with larger batches than the CPU recipe. After each stage it writes that
stage's hand-over file (``ldae train STAGE --save-stage``) to ``--out``, so a run stopped by its
time limit still returns every stage it finished. The rest (probes, bundle, evaluation) is CPU work
done where the cohort is, from the hand-over files:

    python scripts/train_demo_gpu.py --work /tmp/run --out OUT --minutes 5          # on the GPU machine
    ldae cohort COHORT --subjects 120 --seed 0 --labels                             # here: the same cohort
    for s in autoencoder ddpm representation; do
      ldae train $s --cohort COHORT --workdir RUN --config OUT/recipe.json --load-stage OUT/$s.safetensors
    done
    ldae train all --cohort COHORT --workdir RUN --config OUT/recipe.json --bundle-dtype float16

``OUT/gpu_training.json`` records the device, every stage's steps, batch, measured and actual seconds
per step, wall time and final losses; it is rewritten after each stage. ``--device cpu --subjects 6
--minutes 0.5`` runs the whole flow on a CPU in a few minutes (how it is tested).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARES = {"autoencoder": 0.5, "ddpm": 0.2, "representation": 0.3}
GPU_BATCH = {"autoencoder": 8, "ddpm": 32, "representation": 32}
MAX_STEPS = {"autoencoder": 40000, "ddpm": 30000, "representation": 30000}
MIN_STEPS = 20
SAFETY = 0.8  # a real step also loads its batch, updates the EMA and logs: plan on 80 % of the measured speed


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _device_info(device) -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _stage_settings(recipe, stage: str, steps: int, batch: int) -> list[str]:
    cfg = recipe.stage(stage)
    sets = [f"{stage}.steps={steps}", f"{stage}.epochs=null", f"{stage}.batch_size={batch}",
            f"{stage}.checkpoint_interval={max(50, steps // 8)}", f"{stage}.val_interval={max(100, steps // 4)}",
            f"{stage}.log_interval={max(10, min(cfg.log_interval * 5, steps // 50 or 1))}",
            f"{stage}.warmup_steps={min(cfg.warmup_steps, max(1, steps // 10))}"]
    return sets


def _augment_seconds(volume, device) -> float:
    """Median seconds of one augmentation of one model-space volume on ``device``.

    The trainers augment each volume of a batch one by one, where the model runs (the draws come from
    a CPU generator); the step measurement (synthetic tensors) does not include it."""
    import statistics

    import torch

    from LDAELib.training.augment import augment_volume

    g, x = torch.Generator().manual_seed(0), torch.from_numpy(volume).to(device)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        augment_volume(x, g)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _augmented_per_step(recipe, stage: str, batch: int) -> float:
    """How many volumes a step of ``stage`` augments on average."""
    if stage == "autoencoder":
        return batch * recipe.autoencoder.augment
    if stage == "representation":
        return batch * recipe.representation.code_augment
    return 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="scratch folder on this machine (cohort, work folder)")
    p.add_argument("--out", required=True, help="folder for the hand-over files, the recipe and gpu_training.json")
    p.add_argument("--minutes", type=float, default=5.0, help="wall time for the three training stages (default 5)")
    p.add_argument("--by", type=float, default=None, metavar="SECONDS",
                   help="plan the stages to end this many seconds after the script starts (less --minutes when the "
                        "cohort took long); for a caller's hard time limit")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (to test the flow)")
    p.add_argument("--subjects", type=int, default=120, help="cohort subjects (default 120, the demo cohort)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the cohort and stage B (default: all cores)")
    p.add_argument("--config", default=str(REPO / "LDAELib" / "training" / "recipes" / "demo.yaml"), help="recipe (default: the demo recipe)")
    p.add_argument("--load", action="append", default=[], metavar="STAGE=FILE",
                   help="take STAGE from a hand-over file (ldae train STAGE --save-stage) instead of training it; "
                        "repeat for several. The time goes to the stages left")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="change a recipe setting (as ldae train --set), e.g. representation.contrast_free_targets=true")
    p.add_argument("--batch", nargs=3, type=int, metavar=("AE", "DDPM", "REPR"), help="batch sizes (default 8 32 32 on a GPU, the recipe's on a CPU)")
    args = p.parse_args(argv)

    import torch

    from LDAELib.cohort.cohort import CohortConfig, generate_cohort
    from LDAELib.training.recipe_file import apply_overrides, load_recipe, save_recipe
    from LDAELib.training.distributed import setup, teardown
    from LDAELib.training.plan import measure_seconds_per_step
    from LDAELib.training.session import TrainingSession

    t_start = time.perf_counter()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("train_demo_gpu: no GPU is visible to torch; use --device cpu to test the flow", file=sys.stderr)
        return 2
    summary = {"machine": _device_info(device), "minutes": args.minutes, "stages": {}}
    summary_path = out / "gpu_training.json"

    def write_summary() -> None:
        summary["wall_s"] = round(time.perf_counter() - t_start, 1)
        summary_path.write_text(json.dumps(summary, indent=1))

    cohort = work / "cohort"
    t0 = time.perf_counter()
    res = generate_cohort(cohort, CohortConfig(n_subjects=args.subjects, seed=0, labels=True), workers=args.workers)
    summary["cohort_s"] = round(time.perf_counter() - t0, 1)
    _say(f"cohort: {args.subjects} subjects ({len(res.generated)} made) in {summary['cohort_s']} s")

    loads = {}
    for item in args.load:
        stage, sep, file = item.partition("=")
        if not sep or stage not in SHARES or not Path(file).is_file():
            print(f"train_demo_gpu: --load takes STAGE=FILE with STAGE one of {', '.join(SHARES)} and an existing "
                  f"hand-over file; got {item!r}", file=sys.stderr)
            return 2
        loads[stage] = Path(file)
    trained = [s for s in SHARES if s not in loads]
    recipe = apply_overrides(load_recipe(args.config), args.overrides)
    batch = dict(zip(SHARES, args.batch)) if args.batch else (
        GPU_BATCH if device.type == "cuda" else {s: recipe.stage(s).batch_size for s in SHARES})
    recipe = apply_overrides(recipe, [f"{s}.batch_size={batch[s]}" for s in trained])
    summary["loaded"] = {s: str(f) for s, f in loads.items()}
    summary["overrides"] = list(args.overrides)
    # The decoder refinement (training/decoder.py) needs no later stage and no hand-over: it is left to
    # the CPU afterwards (ldae train decoder --set decoder.steps=N), so the bundle here keeps the
    # autoencoder stage's decoder.
    recipe = apply_overrides(recipe, ["decoder.steps=0"])
    ctx = setup(args.device)
    try:
        session = TrainingSession(recipe, cohort, work / "run", ctx, progress=False, echo=_say, workers=args.workers)
        t0 = time.perf_counter()
        session.prepare_volumes()
        summary["stage_b_s"] = round(time.perf_counter() - t0, 1)
        _say(f"model space: {session.data.describe()} in {summary['stage_b_s']} s")
        write_summary()

        for stage in SHARES:
            if stage in loads:
                done = session.load_stage(stage, loads[stage])["step"]
                # recipe.json must say the stage is finished at the steps it was trained for, or a later
                # 'ldae train all' with it (finish_gpu_stages.sh) would take the stage up again.
                recipe = apply_overrides(recipe, [f"{stage}.steps={done}", f"{stage}.epochs=null"])
                session.recipe = recipe
                session._check_recipe()
        aug_s = _augment_seconds(session.data.volumes[session.data.indices["train"][0]], device)
        summary["augment_s_per_volume"] = round(aug_s, 5)
        deadline = time.perf_counter() + 60.0 * args.minutes
        if args.by is not None:
            deadline = min(deadline, t_start + args.by)
        for n, stage in enumerate(trained):
            left = deadline - time.perf_counter()
            share = SHARES[stage] / sum(SHARES[s] for s in trained[n:])
            sps = measure_seconds_per_step(recipe, stage, device, batch[stage], steps=3, warmup=2)
            sps += aug_s * _augmented_per_step(recipe, stage, batch[stage])
            steps = int(max(MIN_STEPS, min(MAX_STEPS[stage], SAFETY * share * left / sps)))
            recipe = apply_overrides(recipe, _stage_settings(recipe, stage, steps, batch[stage]))
            session.recipe = recipe
            session._check_recipe()  # the work folder's recipe.json now holds this stage's settings
            save_recipe(recipe, out / "recipe.json")
            _say(f"{stage}: {sps * 1e3:.0f} ms per step expected at batch {batch[stage]} (with the augmentation); "
                 f"{steps} steps in {share * left:.0f} s")
            t0 = time.perf_counter()
            result = session.run(stage)
            wall = time.perf_counter() - t0
            rec = session.save_stage(stage, out / f"{stage}.safetensors")
            summary["stages"][stage] = {
                "steps": steps, "batch": batch[stage], "expected_s_per_step": round(sps, 5),
                "actual_s_per_step": round(wall / steps, 5), "wall_s": round(wall, 1),
                "trainer_s_per_step": result.seconds_per_step, "losses": rec.get("losses") or result.last_losses,
                "file_sha256": rec.get("file_sha256"), "bytes": rec.get("bytes"),
            }
            write_summary()
    finally:
        teardown(ctx)
    _say(f"done in {time.perf_counter() - t_start:.0f} s; {out}")
    write_summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
