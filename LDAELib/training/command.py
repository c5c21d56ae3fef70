"""``ldae train``: the command-line face of :class:`~.session.TrainingSession`.

    ldae train all --cohort COHORT --workdir RUN                      # every stage, then the bundle
    ldae train ddpm --cohort COHORT --workdir RUN --steps 2000        # one stage
    ldae train --dry-run --cohort COHORT [--config recipe.yaml]        # plan and estimated time
    ldae train autoencoder --cohort C --workdir RUN --save-stage F     # a finished stage as float16 (handover.py)
    ldae train decoder --cohort C --workdir RUN --into-bundle B --output NEW  # B with the decoder refined in RUN
    ldae train bundle --cohort C --workdir RUN --set decoder.steps=0 --decoder-from B  # the bundle with B's decoder
    torchrun --nproc_per_node 4 -m LDAELib.cli train all --cohort … --workdir …   # data-parallel
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from ..errors import EXIT_CANCELLED, LDAEError
from .config import DEMO_RECIPE, STAGES
from .recipe_file import apply_overrides, load_recipe, save_recipe
from .data import TrainingData
from .distributed import resolve_device, setup, teardown
from .plan import plan

STAGE_CHOICES = ("all", "autoencoder", "decoder", "ddpm", "representation", "probes", "bundle")


def add_arguments(parser) -> None:
    parser.add_argument("stage", nargs="?", default="all", choices=STAGE_CHOICES,
                        help="which stage to run (default all: every incomplete stage, then the bundle)")
    parser.add_argument("--cohort", required=True, metavar="DIR", help="cohort folder (with cohort.csv, as 'ldae cohort' writes) or a cohort CSV")
    parser.add_argument("--workdir", metavar="DIR", help="work folder for the split, caches, checkpoints, logs and the bundle; run the same command again to resume")
    parser.add_argument("--config", metavar="RECIPE", help="recipe file (.yaml, .yml or .json); default: the recipe the work folder was trained with "
                        "(WORKDIR/recipe.json), else the demo model's recipe, LDAELib/training/recipes/demo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe setting, e.g. --set ddpm.lr=2e-4 (repeatable)")
    parser.add_argument("--steps", type=int, metavar="N", help="steps of the named stage (shorthand for --set STAGE.steps=N)")
    parser.add_argument("--output", metavar="DIR", help="bundle folder written at the end (default WORKDIR/bundle)")
    parser.add_argument("--bundle-dtype", choices=["float32", "float16"], default="float32",
                        help="storage of the bundle's weights (float16: half the size, read back as float32; default float32)")
    parser.add_argument("--device", default="auto", help="auto (this process's GPU if any, else CPU), cpu, cuda, cuda:1 … (default auto)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes that bring the cohort's scans into model space before training (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the estimated time (measured on a few steps) and stop")
    parser.add_argument("--no-measure", action="store_true", help="with --dry-run: print the plan without measuring the time")
    parser.add_argument("--write-recipe", metavar="PATH", help="write the recipe in use (after --config/--set/--steps) to PATH and stop")
    parser.add_argument("--save-stage", metavar="FILE", help="with a stage name: write that finished stage's EMA weights in float16 to FILE "
                        "(a hand-over, to go on training elsewhere) and stop")
    parser.add_argument("--load-stage", metavar="FILE", help="with a stage name: take that stage from a hand-over FILE as finished "
                        "(same recipe and cohort; earlier stages loaded first) and stop")
    parser.add_argument("--into-bundle", metavar="BUNDLE", help="with 'decoder': write BUNDLE with this work folder's refined decoder to --output "
                        "(BUNDLE trained on this folder's autoencoder, e.g. the shipped demo model) and stop")
    parser.add_argument("--decoder-from", metavar="BUNDLE", help="with 'bundle' or 'all' and --set decoder.steps=0: the bundle takes BUNDLE's "
                        "refined decoder (BUNDLE trained on this folder's autoencoder, e.g. the shipped demo model)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _recipe(args):
    in_use = Path(args.workdir) / "recipe.json" if args.workdir else None
    if args.config:
        recipe = load_recipe(args.config)
    elif in_use is not None and in_use.is_file():
        recipe = load_recipe(in_use)  # go on with the recipe the work folder was trained with
    else:
        recipe = load_recipe(DEMO_RECIPE)
    sets = list(args.set)
    if args.steps is not None:
        if args.stage not in STAGES:
            raise LDAEError(f"--steps applies to one training stage ({', '.join(STAGES)}); with '{args.stage}' use --set STAGE.steps=N")
        sets += [f"{args.stage}.steps={args.steps}", f"{args.stage}.epochs=null"]
    return apply_overrides(recipe, sets) if sets else recipe


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = _recipe(args)
    if args.write_recipe:
        save_recipe(recipe, args.write_recipe)
        print(f"wrote {args.write_recipe}")
        return 0
    if args.dry_run:
        return _dry_run(args, recipe)
    if not args.workdir:
        raise LDAEError("ldae train needs --workdir DIR (where checkpoints, logs and the bundle go)")
    ctx = setup(args.device)
    try:
        from .session import TrainingSession

        session = TrainingSession(recipe, args.cohort, args.workdir, ctx, progress=not args.quiet, bundle_dtype=args.bundle_dtype,
                                  workers=args.workers)
        if args.save_stage or args.load_stage:
            if args.stage not in ("autoencoder", "ddpm", "representation") or (args.save_stage and args.load_stage):
                raise LDAEError("--save-stage and --load-stage take one training stage: ldae train autoencoder|ddpm|representation --save-stage FILE (or --load-stage FILE)")
            if ctx.is_main:
                if args.save_stage:
                    session.save_stage(args.stage, args.save_stage)
                else:
                    session.load_stage(args.stage, args.load_stage)
            return 0
        if args.into_bundle:
            if args.stage != "decoder" or not args.output:
                raise LDAEError("--into-bundle goes with the decoder stage and an --output folder: "
                                "ldae train decoder --cohort C --workdir RUN --into-bundle BUNDLE --output NEW")
            print(f"wrote {session.refine_bundle_decoder(args.into_bundle, args.output)}")
            return 0
        if args.decoder_from:
            if args.stage not in ("all", "bundle"):
                raise LDAEError("--decoder-from goes with the bundle: ldae train bundle --cohort C --workdir RUN "
                                "--set decoder.steps=0 --decoder-from BUNDLE --output NEW")
            session.decoder_from = Path(args.decoder_from)
        try:
            result = session.run(args.stage, args.output)
        except KeyboardInterrupt:
            if ctx.is_main:
                print(f"ldae train: interrupted; the checkpoints in {args.workdir} are intact: run the same command again to resume", file=sys.stderr)
            return EXIT_CANCELLED
        if ctx.is_main and args.stage in ("all", "bundle"):
            print(f"wrote {result}")
        return 0
    finally:
        teardown(ctx)


def _dry_run(args, recipe) -> int:
    device = resolve_device(args.device)
    data = TrainingData.open(args.cohort, recipe.data, recipe.model.space, args.workdir, write_split=False)
    uncached = [i for s in ("train", "val") for i in data.indices[s] if not data.volumes.is_cached(i)] if args.workdir else \
        [i for s in ("train", "val") for i in data.indices[s]]
    stage_b = None
    if uncached and not args.no_measure:
        t0 = time.perf_counter()
        data.volumes._compute(uncached[0])
        stage_b = time.perf_counter() - t0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    text, _ = plan(recipe, data, device, world, measure=not args.no_measure, stage_B_seconds=stage_b, uncached=len(uncached))
    print(text)
    return 0
