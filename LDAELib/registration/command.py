"""``ldae preprocess``: stage A on one raw scan, its results written where they can be inspected and reused."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..inference.image import Image, read_image
from ..inference.outputs import OutputSet, Sources, check_output, ensure_folder
from ..inference.provenance import now_iso, sha256_of
from ..resources import default_model_path
from ..space import ModelSpaceConfig, to_model_space
from .native import run_stage_a
from .stage_a import StageASettings
from .store import MASK_FILE, StageACache, write_result
from .template import MNI_AFFINE, TEMPLATE_NAME

MODEL_SPACE_FILE = "model_space.nii.gz"


def add_arguments(parser) -> None:
    """The ``preprocess`` subcommand's options (argparse)."""
    parser.add_argument("input", help="raw T1 scan (NIfTI): any orientation and spacing, with or without skull")
    parser.add_argument("output_dir", help="folder for the results (created if missing; files of the same names are replaced)")
    parser.add_argument("--model", metavar="PATH", help="write the model-space volume for this model's space "
                        "(default: the bundled demo model's, else the authors' 1.5 mm 128×160×128)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor fill the stage-A cache ($LDAE_CACHE_DIR, "
                        "default ~/.cache/ldae)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: all)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _model_space(model_path):
    path = model_path or default_model_path()
    if path is None:
        return ModelSpaceConfig()
    from ..weights import load_model

    return load_model(path).config.space


def run(args, progress=None) -> int:
    """Write into ``args.output_dir``: the registered brain (MNI grid), the brain mask (scan grid), the
    transforms both ways (ITK .h5), the bias field, the model-space volume and ``stage_a.json``. All
    files appear together or none does."""

    vol = read_image(args.input)
    out = Path(args.output_dir)
    for name in ("brain_mni.nii.gz", "brain_mask.nii.gz", "mni_to_native.h5", "native_to_mni.h5", "bias_field.nii.gz", "stage_a.json", MODEL_SPACE_FILE):
        check_output(out / name, Sources([args.input]), volume=False)  # never over the input
    space = _model_space(args.model)
    try:
        result, key = run_stage_a(
            vol.data, vol.affine, StageASettings(threads=args.threads),
            cache=None if args.no_cache else StageACache(), progress=progress,
        )
    finally:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
    x, ctx = to_model_space(result.brain_mni, MNI_AFFINE, space)
    source = {"path": str(Path(args.input).resolve()), "sha256": sha256_of(args.input)}
    prov = {"generator": "LDAE for 3D Slicer: stage A (LDAELib.registration)", "input": source, "key": key,
            "template": TEMPLATE_NAME, "quality": result.quality, "created": now_iso()}
    ensure_folder(out)
    with tempfile.TemporaryDirectory() as tmp, OutputSet([args.input]) as outs:
        for f in write_result(tmp, result, {"input": source, "key": key, "created": prov["created"]}):
            if f.name == MASK_FILE:  # on the scan's grid, with the scan's header
                outs.add_image(out / MASK_FILE, vol, result.brain_mask, {**prov, "description": "LDAE brain mask"})
            else:
                outs.add_file(out / f.name, lambda t, f=f: shutil.copyfile(f, t))
        outs.add_image(out / MODEL_SPACE_FILE, Image(x, ctx.model_affine), x, {
            **prov, "description": "LDAE model-space input", "model_space": space.to_dict(), "space_context": ctx.to_dict(),
        })
    q = result.quality
    print(f"wrote {out}: brain_mni.nii.gz, brain_mask.nii.gz, mni_to_native.h5, native_to_mni.h5, {MODEL_SPACE_FILE} "
          f"(similarity to template {q['similarity']:.2f}, brain {q['brain_volume_ml']:.0f} mL)")
    return 0
