"""``ldae``: LDAE on scans from the command line, thin over ``LDAELib.inference`` and ``LDAELib.batch``.

Every subcommand validates its options and its outputs before loading a model, prints one clear
line and exits 1 on any error a user can cause (exit codes: ``LDAELib.errors``), never writes over
an input, leaves no partial output after an error, Ctrl-C or SIGTERM, shows tqdm progress on
stderr, and writes a JSON sidecar of provenance beside each output volume.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from .batch import run_batch
from .cohort.command import add_arguments as add_cohort_arguments
from .cohort.command import run as run_cohort
from .directions.files import fit_probe_from_csv
from .errors import EXIT_CANCELLED, EXIT_ERROR, Cancelled, LDAEError
from .evaluation.command import add_arguments as add_evaluate_arguments
from .evaluation.command import add_orient_arguments
from .evaluation.command import run as run_evaluate
from .evaluation.command import run_orient
from .evaluation.previews import write_comparison_png, write_strip_png
from .inference.files import add_embeddings, add_volumes, check_embedding_output, interpolation_files, variation_files, volume_files
from .inference.loading import open_model, open_pipeline
from .inference.operations import Inference
from .inference.image import check_output_suffix
from .inference.outputs import OutputSet, Sources, check_output, check_outputs
from .inference.provenance import version
from .inference.settings import RunSettings
from .registration.command import add_arguments as add_preprocess_arguments
from .registration.command import run as run_preprocess
from .resources import example_scans
from .training.command import add_arguments as add_train_arguments
from .training.command import run as run_train
from .weights.bundle import save_bundle

VOLUME_COMMANDS = ("reconstruct", "edit", "interpolate", "vary", "embed", "batch", "demo", "info", "convert")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr and exit code 1."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(EXIT_ERROR, f"ldae: error: {message} (see '{self.prog} --help')\n")


class Bar:
    """tqdm bar fed by the pipeline's progress(done, total, stage) callback."""

    def __init__(self, quiet: bool, desc: str) -> None:
        self.quiet, self.desc, self.bar = quiet, desc, None

    def __call__(self, done: int, total: int, stage: str) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if self.bar is None or self.bar.total != total:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.desc, unit="step", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(stage, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_parser() -> argparse.ArgumentParser:
    common = _ArgumentParser(add_help=False)
    g = common.add_argument_group("model and run settings")
    g.add_argument("--model", metavar="PATH", help="bundle folder or folder of the authors' files (default: the bundled demo model)")
    g.add_argument("--steps", type=int, default=10, metavar="N", help="DDIM steps each way (default 10; the authors use 50–100)")
    g.add_argument("--seed", type=int, default=None, help="seed for stochastic parts (variations; the sampled latent with --sample-latent)")
    g.add_argument("--sample-latent", action="store_true", help="use the authors' sampled latent μ+σ·ε (seeded by --seed) instead of the deterministic μ")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … or auto (a GPU when torch sees one; default cpu)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="precision of the encoders and the ShiftUNet (default float32 = the authors' numbers; bfloat16 halves weight "
                   "memory but drifts in the DDIM loop; float16 on GPUs only)")
    g.add_argument("--decode-dtype", choices=["auto", "float32", "bfloat16", "float16"], default="float32",
                   help="precision of the autoencoder's decoder, which runs once after the DDIM loop (default float32: the authors' "
                   "numbers on every machine; auto: bfloat16 where the CPU or GPU computes it natively, ≈3× faster decodes at the "
                   "official size, within SSIM 0.999 of float32 but not the same numbers)")
    g.add_argument("--fast-decode", dest="decode_dtype", action="store_const", const="auto",
                   help="trade exactness for speed in the decoder: the same as --decode-dtype auto")
    g.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--weight-storage", choices=["auto", "float32", "float16"], default="auto",
                   help="keep the float32 ShiftUNet's weights in float16 and widen them layer by layer: 1.6 GiB less at the official "
                   "size, ≈ 7 %% slower, within SSIM 0.9999 of float32 (default auto: only when an edit would fill over 80 %% of the "
                   "available memory)")
    g.add_argument("--cache-dir", metavar="DIR", default=os.environ.get("LDAE_CACHE_DIR") or None,
                   help="keep each scan's encoding (latent, semantic code, inverted noise) in DIR, so that the next run on the same "
                   "scan skips the encoders and the inversion (default: $LDAE_CACHE_DIR, else off; the files are derived from the scans)")
    g.add_argument("--model-space", action="store_true", help="inputs are already in model space: used exactly as stored, no resampling or rescaling")
    g.add_argument("--registered", action="store_true", help="inputs are already brain-extracted and registered to MNI (e.g. 'ldae preprocess' "
                   "brain_mni.nii.gz): skip stage A (bias correction, brain extraction, registration), resample into model space only")
    g.add_argument("--model-space-output", action="store_true", help="also write each output in model space (NAME_model_space.nii.gz, MNI coordinates)")
    g.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of a bundle's files")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = _ArgumentParser(prog="ldae", description="Latent Diffusion Autoencoder (LDAE) for brain T1 MRI: edit, interpolate, vary, embed.")
    p.add_argument("--version", action="version", version=f"ldae {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("reconstruct", parents=[common], help="encode and decode a scan through the diffusion (autoencoding)")
    s.add_argument("input"), s.add_argument("output")
    s = sub.add_parser("edit", parents=[common], help="move a scan along an attribute direction")
    s.add_argument("input"), s.add_argument("output")
    s.add_argument("--direction", required=True, help="a direction of the model (see 'ldae info') or a probe file (.safetensors)")
    s.add_argument("--alpha", type=float, required=True, help="edit strength; the sign picks the side (e.g. cn: + towards CN, − towards AD)")
    s = sub.add_parser("interpolate", parents=[common], help="scans between two timepoints (one file per fraction)")
    s.add_argument("input_a"), s.add_argument("input_b"), s.add_argument("output_dir")
    s.add_argument("--at", type=float, nargs="+", required=True, metavar="F", help="fractions between 0 (first scan) and 1 (second scan)")
    s = sub.add_parser("vary", parents=[common], help="stochastic variations that share the scan's semantic code")
    s.add_argument("input"), s.add_argument("output_dir")
    s.add_argument("--n", type=int, default=4, help="number of variations (default 4)")
    s = sub.add_parser("embed", parents=[common], help="semantic codes y_sem of scans, to a CSV or .npy file")
    s.add_argument("inputs", nargs="+")
    s.add_argument("--output", "-o", required=True, help="embeddings.csv (path + one column per dimension) or .npy")
    s = sub.add_parser("batch", parents=[common], help="run a CSV of scans and operations, resumable; several processes under torchrun (docs/batch.md)")
    s.add_argument("jobs", metavar="JOBS.csv", help="one row per job: input,operation[,output,direction,alpha,input_b,at,n,seed,steps]; "
                   "paths relative to the CSV's folder")
    s.add_argument("output_dir", metavar="OUTPUT_DIR", help="outputs (row 'output' cells are relative to it) and batch_report.csv/.json")
    s = sub.add_parser("fit-probe", help="fit a linear probe on embeddings and labels → a direction file")
    s.add_argument("embeddings", help="CSV written by 'ldae embed'")
    s.add_argument("labels", help="CSV with columns path,<target>")
    s.add_argument("--target", required=True, help="label column (0/1 for a binary probe, numbers for a continuous one)")
    s.add_argument("--name", required=True, help="the direction's name")
    s.add_argument("--kind", choices=["binary", "continuous"], default="binary")
    s.add_argument("--output", "-o", required=True, help="direction file (.safetensors)")
    s = sub.add_parser("convert", parents=[common], help="write a model (e.g. the authors' files) as an LDAE bundle")
    s.add_argument("output", help="new bundle folder")
    s.add_argument("--name", help="model name stored in the bundle")
    s = sub.add_parser("info", parents=[common], help="model, directions, licence and this machine")
    s = sub.add_parser("demo", parents=[common], help="run the main operations end to end on bundled example scans")
    s.add_argument("output_dir")
    s = sub.add_parser("preprocess", help="stage A on a raw scan: bias correction, brain extraction, registration to MNI "
                       "(registered brain, brain mask, transforms, model-space volume; cached)")
    add_preprocess_arguments(s)
    s = sub.add_parser("cohort", help="write a synthetic longitudinal cohort (MNI-space NIfTI + CSV of volumes) from real templates")
    add_cohort_arguments(s)
    s = sub.add_parser("train", help="train an LDAE on a cohort: autoencoder, ddpm, representation, probes, all (docs/training.md)")
    add_train_arguments(s)
    s = sub.add_parser("evaluate", help="judge a trained model on its held-out test subjects: report.md, metrics.json, figures (docs/training.md)")
    add_evaluate_arguments(s)
    s = sub.add_parser("orient", help="orient a trained model's directions by what its edits render on training subjects "
                       "(+alpha towards disease or older enlarges the ventricles); writes a new bundle (docs/training.md)")
    add_orient_arguments(s)
    return p


def _outputs_of(args) -> tuple[list[Path], list[str], bool]:
    """(output files, input files, whether the outputs are volumes) of a volume command."""
    cmd = args.command
    if cmd in ("reconstruct", "edit"):
        check_output_suffix(args.output)  # first: a volume named out.json is a bad name, not a clash with its sidecar
        return volume_files(args.output, args.model_space_output), [args.input], True
    if cmd == "interpolate":
        paths = interpolation_files(args.output_dir, args.at)
        return [f for p in paths for f in volume_files(p, args.model_space_output)], [args.input_a, args.input_b], True
    if cmd == "vary":
        if not 1 <= args.n <= 64:
            raise LDAEError(f"--n must lie between 1 and 64, got {args.n}")
        paths = variation_files(args.output_dir, args.n)
        return [f for p in paths for f in volume_files(p, args.model_space_output)], [args.input], True
    if cmd == "embed":
        return [check_embedding_output(args.output)], list(args.inputs), False
    return [], [], False


def _check_inputs(paths) -> None:
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise LDAEError(f"input not found: {p}")
        if not os.access(p, os.R_OK):
            raise LDAEError(f"cannot read {p}: permission denied")


def _run(args, model=None) -> int:
    if args.command == "cohort":
        return run_cohort(args, Bar(args.quiet, "cohort"))
    if args.command == "train":
        return run_train(args)
    if args.command == "evaluate":
        return run_evaluate(args)
    if args.command == "orient":
        return run_orient(args)
    if args.command == "preprocess":
        return run_preprocess(args, Bar(args.quiet, "stage A"))
    if args.command == "fit-probe":
        check_output(args.output, Sources([args.embeddings, args.labels]), volume=False)
        fit_probe_from_csv(args.embeddings, args.labels, args.target, args.name, args.kind, args.output)
        print(f"wrote {args.output}")
        return 0

    # Everything is checked before the (slow) model load and computation.
    settings = RunSettings.from_args(args)
    if args.command == "edit" and not np.isfinite(args.alpha):
        raise LDAEError(f"--alpha must be a finite number, got {args.alpha}")
    if args.command == "interpolate" and any(not (-0.5 <= f <= 1.5) for f in args.at):
        raise LDAEError("--at fractions should lie between 0 and 1 (mild extrapolation down to −0.5 and up to 1.5 is allowed)")
    if args.command == "batch":
        return run_batch(args.jobs, args.output_dir, settings, args.model, quiet=args.quiet)
    files, inputs, volumes = _outputs_of(args)
    _check_inputs(inputs)
    check_outputs(files, inputs, volumes=volumes)
    if args.command == "convert":
        out = Path(args.output)
        if out.exists() and any(out.iterdir()):
            raise LDAEError(f"{out} exists and is not empty; choose a new folder for the bundle")

    model = model if model is not None else open_model(args.model, settings, warn=lambda m: print(f"ldae: WARNING: {m}", file=sys.stderr))
    if args.command == "info":
        return _info(args, model)
    if args.command == "convert":
        save_bundle(model, args.output, name=args.name)
        print(f"wrote bundle {args.output}")
        return 0
    if args.command == "demo":
        return _demo(args, model)

    note = model.limitations.get(args.command)
    if note:  # the model's own card says this operation does not work well with it
        print(f"warning: {model.name}: {note}", file=sys.stderr)
    inf = Inference(model, open_pipeline(model, settings), settings)
    bar = Bar(args.quiet, args.command)
    try:
        with OutputSet(inputs) as outs:
            if args.command == "embed":
                codes, _ = inf.embed(args.inputs, progress=bar)
                add_embeddings(outs, args.output, args.inputs, codes)
                done = f"wrote {args.output}"
            elif args.command in ("reconstruct", "edit"):
                outputs = inf.reconstruct(args.input, progress=bar) if args.command == "reconstruct" else \
                    inf.edit(args.input, args.direction, [args.alpha], progress=bar)
                paths, done = [args.output], f"wrote {args.output}"
            elif args.command == "interpolate":
                outputs = inf.interpolate(args.input_a, args.input_b, args.at, progress=bar)
                paths, done = interpolation_files(args.output_dir, args.at), f"wrote {len(args.at)} volumes to {args.output_dir}"
            else:
                outputs = inf.vary(args.input, args.n, progress=bar)
                paths, done = variation_files(args.output_dir, args.n), f"wrote {args.n} volumes to {args.output_dir}"
            if args.command != "embed":
                first = args.input_a if args.command == "interpolate" else args.input
                add_volumes(outs, outputs, paths, model_space_output=settings.model_space_output,
                            model_affine=inf.source(first).prepared.model_affine)
    finally:
        bar.close()
    print(done)
    return 0


def _demo(args, model) -> int:
    """The shipped example visits → reconstruction, edits along every direction, interpolation, each
    through the same command a user would type, with PNG previews (source | result | difference, and
    for edits the difference from the reconstruction)."""
    out = Path(args.output_dir)
    scans = example_scans()
    first, last = scans[0], scans[-1]
    model_args = ["--model", args.model] if args.model else []
    # The example scans are stage-A output (MNI space): stage B only.
    common = [*model_args, "--registered", "--steps", str(args.steps), "--device", str(args.device)] + (["-q"] if args.quiet else [])
    if args.threads:
        common += ["--threads", str(args.threads)]
    src = str(first.path)
    runs = [("reconstruct", ["reconstruct", src, str(out / "reconstruction.nii.gz")], out / "reconstruction.nii.gz")]
    for name in model.directions:
        for alpha in (-2.0, 2.0):
            f = out / f"edit_{name}_{alpha:+g}.nii.gz"
            runs.append((f"edit {name} {alpha:+g}", ["edit", src, str(f), "--direction", name, "--alpha", str(alpha)], f))
    fractions = (0.25, 0.5, 0.75)
    runs.append(("interpolate", ["interpolate", src, str(last.path), str(out / "interpolation"), "--at", *map(str, fractions)], None))
    if not model.directions:
        print("ldae demo: this model has no directions, so no edits are run", file=sys.stderr)
    print(f"ldae demo: {first.label} and {last.label} of a synthetic {first.group} subject the model never saw "
          f"(ventricles {first.ventricles_ml:.1f} → {last.ventricles_ml:.1f} ml)")
    source = nib.load(str(first.path))
    source_data, affine = np.asarray(source.dataobj, dtype=np.float32), source.affine
    previews = out / "previews"
    previews.mkdir(parents=True, exist_ok=True)
    parser = build_parser()
    reconstruction = None
    for label, argv, result in runs:
        t0 = time.perf_counter()
        code = _run(parser.parse_args(argv + common), model)
        if code:
            return code
        took = time.perf_counter() - t0
        if result is not None:
            png = previews / (result.name.replace(".nii.gz", ".png"))
            data = np.asarray(nib.load(str(result)).dataobj, dtype=np.float32)
            # Edits get a fourth column, result − reconstruction: the edit itself, without the blur.
            reference = None if label == "reconstruct" else reconstruction
            write_comparison_png(png, source_data, data, affine, reference=reference)
            if label == "reconstruct":
                reconstruction = data
        else:
            frames = sorted((out / "interpolation").glob("*.nii.gz"))
            vols = [source_data] + [np.asarray(nib.load(str(f)).dataobj, dtype=np.float32) for f in frames]
            vols.append(np.asarray(nib.load(str(last.path)).dataobj, dtype=np.float32))
            png = write_strip_png(previews / "interpolation.png", vols, affine)
        print(f"  {label}: {took:.1f} s  → {png}")
    print(f"demo outputs in {out} (model: {model.name}); previews: rows axial/coronal/sagittal, "
          "columns source | result | result − source, and for edits result − reconstruction "
          "(the edit's own change; red: brighter, blue: darker)")
    return 0


def _info(args, model) -> int:
    import platform

    import torch

    ident = model.identity
    lines = [
        f"model:       {ident.get('name')}",
        f"id:          {ident.get('id')}  ({ident.get('format')})",
        f"parameters:  {model.num_parameters() / 1e6:.1f} M",
        f"model space: {model.config.space.shape} voxels at {model.config.space.spacing_mm} mm; latent {model.config.latent_shape}",
        "directions:  " + ("; ".join(d.describe() for d in model.directions.values()) or "none"),
        *([f"guidance:    code guidance {model.config.code_guidance:g} around the training codes' mean (1 is the authors' rule)"
           + ("; mean-free: an edit keeps each latent channel's mean" if model.config.code_guidance_mean_free else "")]
          if model.config.guided else []),
        f"licence:     {ident.get('licence') or 'see the model card'}",
        *(f"limitation:  {op}: {text}" for op, text in model.limitations.items()),
        f"torch:       {torch.__version__}; threads {torch.get_num_threads()}; CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}",
        f"python:      {platform.python_version()} on {platform.machine()}",
    ]
    print("\n".join(lines))
    return 0


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt  # SIGTERM: the same clean stop as Ctrl-C (no partial output)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error (one line, exit 1)
        return int(stop.code or 0)
    # nibabel's header notes (e.g. an unusual qfac) are not errors: they must not end a run's output
    logging.getLogger("nibabel").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="nibabel")
    previous = signal.signal(signal.SIGTERM, _terminate) if hasattr(signal, "SIGTERM") else None
    try:
        return _run(args)
    except LDAEError as err:
        print(f"ldae: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, Cancelled):
        print("ldae: cancelled; no output was written", file=sys.stderr)
        return EXIT_CANCELLED
    except MemoryError:
        print("ldae: error: out of memory; close other programs, or use a GPU (--device cuda)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
