"""``ldae``: LDAE on NIfTI files from the command line. Thin over ``pipeline``, ``space`` and ``io``.

Every subcommand: one clear line and a non-zero exit on any error, no partial output, tqdm progress
on stderr, a JSON sidecar of provenance beside each output volume.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_ERROR, EXIT_CANCELLED = 1, 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and run settings")
    g.add_argument("--model", metavar="PATH", help="bundle folder or folder of the authors' files (default: the bundled demo model)")
    g.add_argument("--steps", type=int, default=10, metavar="N", help="DDIM steps each way (default 10; the authors use 50–100)")
    g.add_argument("--seed", type=int, default=None, help="seed for stochastic parts (variations; the sampled latent with --sample-latent)")
    g.add_argument("--sample-latent", action="store_true", help="use the authors' sampled latent μ+σ·ε (seeded by --seed) instead of the deterministic μ")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default cpu)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="network precision (default float32 = the authors' numbers; bfloat16 halves weight memory; float16 on GPUs only)")
    g.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--model-space", action="store_true", help="inputs are already in model space: used exactly as stored, no resampling or rescaling")
    g.add_argument("--registered", action="store_true", help="inputs are already brain-extracted and registered to MNI (e.g. 'ldae preprocess' "
                   "brain_mni.nii.gz): skip stage A (bias correction, brain extraction, registration), resample into model space only")
    g.add_argument("--model-space-output", action="store_true", help="also write each output in model space (NAME_model_space.nii.gz, MNI coordinates)")
    g.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of a bundle's files")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = argparse.ArgumentParser(prog="ldae", description="Latent Diffusion Autoencoder (LDAE) for brain T1 MRI: edit, interpolate, vary, embed.")
    p.add_argument("--version", action="version", version=f"ldae {_version()}")
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
    from .registration.command import add_arguments as add_preprocess_arguments

    add_preprocess_arguments(s)
    s = sub.add_parser("cohort", help="write a synthetic longitudinal cohort (MNI-space NIfTI + CSV of volumes) from real templates")
    from .data.cohort_command import add_arguments

    add_arguments(s)
    s = sub.add_parser("train", help="train an LDAE on a cohort: autoencoder, ddpm, representation, probes, all (docs/training.md)")
    from .training.command import add_arguments as add_train_arguments

    add_train_arguments(s)
    return p


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ldae-slicer")
    except Exception:
        return "dev"


class _Bar:
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


def _load_model(args):
    from .errors import LDAEError
    from .resources import default_model_path
    from .weights import load_model, random_model
    from .model import small_config

    if args.model:
        return load_model(args.model, verify=not args.no_verify)
    path = default_model_path()
    if path is not None:
        return load_model(path, verify=not args.no_verify)
    print(
        "ldae: WARNING: no trained model is installed and --model was not given: using a small model with RANDOM "
        "weights. Its outputs are noise, useful only to check the installation. Download the authors' weights and "
        "pass --model DIR.",
        file=sys.stderr,
    )
    return random_model(small_config(), seed=0)


def _pipeline(args, model):
    import torch

    from .errors import LDAEError
    from .pipeline import LDAEPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = str(args.device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise LDAEError(f"--device {dev} was asked for but this torch has no CUDA device; use --device cpu")
    dtype = getattr(torch, args.dtype)
    if dtype == torch.float16 and not dev.startswith("cuda"):
        raise LDAEError("--dtype float16 runs on GPUs only; on the CPU use bfloat16 or float32")
    return LDAEPipeline(model, device=dev, dtype=dtype)


def _prepare(args, path, space_cfg):
    """Read a NIfTI and map it into model space → (Volume, model-space array, context for ``_back``).

    Raw scans (the default) go through stage A (cached by content), then stage B; ``--registered``
    inputs through stage B only; ``--model-space`` inputs are used as stored."""
    from .io import read_volume
    from .space import model_space_identity, to_model_space

    vol = read_volume(path)
    if args.model_space or args.registered:
        fn = model_space_identity if args.model_space else to_model_space
        x, ctx = fn(vol.data, vol.affine, space_cfg)
        return vol, x, ctx
    from .registration import StageACache, StageASettings, to_model_space_native

    bar = _Bar(args.quiet, f"stage A {Path(path).name}")
    try:
        x, ctx = to_model_space_native(vol.data, vol.affine, space_cfg, StageASettings(threads=args.threads), cache=StageACache(), progress=bar)
    finally:
        bar.close()
    return vol, x, ctx


def _input_space(args) -> str:
    if args.model_space:
        return "model space (used as stored)"
    if args.registered:
        return "registered to MNI (stage B only)"
    return "raw scan: stage A (N4, brain extraction, registration to MNI; LDAELib.registration), then stage B"


def _provenance(args, model, operation: str, inputs: list, **extra) -> dict:
    from .io import now_iso, sha256_of

    ident = model.identity
    prov = {
        "generator": f"LDAE for 3D Slicer {_version()}",
        "note": "synthetic image generated by a model from the input scan(s); not an acquired scan",
        "operation": operation,
        "model": {"name": ident.get("name"), "id": ident.get("id"), "format": ident.get("format"), "files": ident.get("files", {})},
        "steps": args.steps,
        "seed": args.seed,
        "latent": "sampled" if args.sample_latent else "mean",
        "model_space_input": bool(args.model_space),
        "input_space": _input_space(args),
        "device": str(args.device),
        "dtype": args.dtype,
        "inputs": [{"path": str(Path(p).resolve()), "sha256": sha256_of(p)} for p in inputs],
        "created": now_iso(),
    }
    prov.update(extra)
    return prov


def _back(out_tensor, ctx):
    from .space import SpaceContext, from_model_space

    x = out_tensor.detach().float().cpu().numpy()[0, 0]
    if isinstance(ctx, SpaceContext):
        return from_model_space(x, ctx)
    from .registration import from_model_space_native  # raw inputs: through the scan's registration

    return from_model_space_native(x, ctx)


def _add_output(args, outs, path, out_tensor, ctx, like, prov) -> None:
    """The output on the input's grid, and with --model-space-output also in model space."""
    outs.add_volume(path, _back(out_tensor, ctx), like, prov)
    if args.model_space_output:
        from .io import Volume, sidecar_path

        x = out_tensor.detach().float().cpu().numpy()[0, 0]
        model_affine = getattr(ctx, "space", ctx).model_affine
        base = sidecar_path(path)  # out.nii.gz → out.json
        ms_path = base.with_name(base.stem + "_model_space.nii.gz")
        outs.add_volume(ms_path, x, Volume(x, model_affine), {**prov, "space": "model space (MNI coordinates), intensities in [0, 1]"})


def _latent_seed(args) -> int | None:
    """None = the deterministic μ; with --sample-latent, the seed of ε (default 0)."""
    if not args.sample_latent:
        return None
    return 0 if args.seed is None else args.seed


def _direction(model, spec: str):
    from .errors import LDAEError

    if spec in model.directions:
        return model.directions[spec]
    p = Path(spec)
    if p.suffix == ".safetensors" or p.exists():
        from .directions_io import load_direction

        return load_direction(p)
    names = ", ".join(sorted(model.directions)) or "none"
    raise LDAEError(f"unknown direction '{spec}'; this model has: {names} (or give a probe file .safetensors)")


def _run(args, model=None) -> int:
    from .errors import LDAEError
    from .io import OutputSet, check_writable, ensure_folder

    if args.command == "cohort":
        from .data.cohort_command import run

        return run(args, _Bar(args.quiet, "cohort"))
    if args.command == "train":
        from .training.command import run as train

        return train(args)
    if args.command == "preprocess":
        from .registration.command import run as run_preprocess

        return run_preprocess(args, _Bar(args.quiet, "stage A"))
    if args.command == "fit-probe":
        from .directions_io import fit_probe_from_csv

        fit_probe_from_csv(args.embeddings, args.labels, args.target, args.name, args.kind, args.output)
        print(f"wrote {args.output}")
        return 0
    if getattr(args, "steps", 1) < 1:
        raise LDAEError("--steps must be at least 1")

    # Fail on unwritable outputs before the (slow) model load and computation.
    if args.command in ("reconstruct", "edit"):
        check_writable(args.output)
    elif args.command in ("interpolate", "vary"):
        ensure_folder(args.output_dir)
    elif args.command == "embed":
        check_writable(args.output)
    elif args.command == "demo":
        ensure_folder(args.output_dir)
    elif args.command == "convert":
        out = Path(args.output)
        if out.exists() and any(out.iterdir()):
            raise LDAEError(f"{out} exists and is not empty; choose a new folder for the bundle")

    model = model if model is not None else _load_model(args)
    if args.command == "info":
        return _info(args, model)
    if args.command == "convert":
        from .weights.bundle import save_bundle

        save_bundle(model, args.output, name=args.name)
        print(f"wrote bundle {args.output}")
        return 0

    if args.command == "demo":
        return _demo(args, model)

    pipe = _pipeline(args, model)
    space_cfg = model.config.space
    bar = _Bar(args.quiet, args.command)
    try:
        if args.command == "embed":
            import numpy as np

            rows = []
            for path in args.inputs:
                _, x, _ = _prepare(args, path, space_cfg)
                rows.append(pipe.embed(x)[0].float().cpu().numpy())
            _write_embeddings(args.output, args.inputs, np.stack(rows), model)
            print(f"wrote {args.output}")
            return 0

        if args.command in ("reconstruct", "edit"):
            d = _direction(model, args.direction) if args.command == "edit" else None
            vol, x, ctx = _prepare(args, args.input, space_cfg)
            if args.command == "reconstruct":
                out = pipe.reconstruct(x, args.steps, latent_seed=_latent_seed(args), progress=bar)
                extra = {"description": f"LDAE reconstruction T={args.steps}"}
            else:
                out = pipe.edit(x, d, [args.alpha], args.steps, latent_seed=_latent_seed(args), progress=bar)
                extra = {"description": f"LDAE {d.name} alpha={args.alpha:+g} T={args.steps}", "direction": d.name,
                         "direction_meaning": d.describe(), "alpha": args.alpha}
            with OutputSet() as outs:
                _add_output(args, outs, args.output, out, ctx, vol, _provenance(args, model, args.command, [args.input], **extra))
            bar.close()
            print(f"wrote {args.output}")
            return 0

        if args.command == "interpolate":
            fr = args.at
            if any(not (-0.5 <= f <= 1.5) for f in fr):
                raise LDAEError("--at fractions should lie between 0 and 1 (mild extrapolation down to −0.5 and up to 1.5 is allowed)")
            va, xa, ctx_a = _prepare(args, args.input_a, space_cfg)
            vb, xb, _ = _prepare(args, args.input_b, space_cfg)
            out = pipe.interpolate(xa, xb, fr, args.steps, latent_seed=_latent_seed(args), progress=bar)
            with OutputSet() as outs:
                for i, f in enumerate(fr):
                    path = Path(args.output_dir) / f"interp_t{f:.3f}.nii.gz"
                    _add_output(args, outs, path, out[i : i + 1], ctx_a, va, _provenance(
                        args, model, "interpolate", [args.input_a, args.input_b], fraction=f,
                        description=f"LDAE interpolation t={f:.2f} T={args.steps}"))
            bar.close()
            print(f"wrote {len(fr)} volumes to {args.output_dir}")
            return 0

        if args.command == "vary":
            seed = 0 if args.seed is None else args.seed
            vol, x, ctx = _prepare(args, args.input, space_cfg)
            out = pipe.vary(x, args.n, seed=seed, steps=args.steps, progress=bar)
            with OutputSet() as outs:
                for i in range(args.n):
                    path = Path(args.output_dir) / f"variation_{i:02d}.nii.gz"
                    _add_output(args, outs, path, out[i : i + 1], ctx, vol, _provenance(
                        args, model, "vary", [args.input], index=i, seed=seed,
                        description=f"LDAE variation {i} seed={seed} T={args.steps}"))
            bar.close()
            print(f"wrote {args.n} volumes to {args.output_dir}")
            return 0
    finally:
        bar.close()
    raise LDAEError(f"unknown command {args.command}")


def _write_embeddings(path, inputs, codes, model) -> None:
    import numpy as np

    from .io import OutputSet

    path = Path(path)
    with OutputSet() as outs:
        if path.suffix == ".npy":
            outs.add_file(path, lambda tmp: np.save(open(tmp, "wb"), codes.astype(np.float32)))
        else:
            def write(tmp):
                with open(tmp, "w") as f:
                    f.write("path," + ",".join(f"e{i}" for i in range(codes.shape[1])) + "\n")
                    for p, row in zip(inputs, codes):
                        f.write(str(Path(p).resolve()) + "," + ",".join(f"{v:.7g}" for v in row) + "\n")
            outs.add_file(path, write)


def _demo(args, model) -> int:
    """The shipped example visits → reconstruction, edits along every direction, interpolation, each
    through the same command a user would type, with PNG previews (source | result | difference)."""
    import time

    import nibabel as nib
    import numpy as np

    from .previews import write_comparison_png, write_strip_png
    from .resources import example_scans

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
    parser = _parser()
    for label, argv, result in runs:
        t0 = time.perf_counter()
        code = _run(parser.parse_args(argv + common), model)
        if code:
            return code
        took = time.perf_counter() - t0
        if result is not None:
            png = previews / (result.name.replace(".nii.gz", ".png"))
            write_comparison_png(png, source_data, np.asarray(nib.load(str(result)).dataobj, dtype=np.float32), affine)
        else:
            frames = sorted((out / "interpolation").glob("*.nii.gz"))
            vols = [source_data] + [np.asarray(nib.load(str(f)).dataobj, dtype=np.float32) for f in frames]
            vols.append(np.asarray(nib.load(str(last.path)).dataobj, dtype=np.float32))
            png = write_strip_png(previews / "interpolation.png", vols, affine)
        print(f"  {label}: {took:.1f} s  → {png}")
    print(f"demo outputs in {out} (model: {model.name}); previews: rows axial/coronal/sagittal, "
          "columns source | result | result − source (red: brighter, blue: darker)")
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
        f"licence:     {ident.get('licence') or 'see the model card'}",
        f"torch:       {torch.__version__}; threads {torch.get_num_threads()}; CUDA {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}",
        f"python:      {platform.python_version()} on {platform.machine()}",
    ]
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .errors import Cancelled, LDAEError

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


if __name__ == "__main__":
    sys.exit(main())
