"""Where results go on disk, and writing them: the file conventions ``ldae`` and ``ldae batch`` share.

    out.nii.gz + out.json                      a reconstruction or edit (any WRITE_SUFFIXES format)
    out_model_space.nii.gz + …json             with ``model_space_output``: the result in model space
    DIR/interp_t0.250.nii.gz + …json           interpolation frames, one per fraction
    DIR/variation_00.nii.gz + …json            variations
    codes.csv | codes.npy (+ codes.json)       semantic codes (the sidecar in ``ldae batch``)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import LDAEError
from .image import model_space_image
from .operations import Output
from .outputs import OutputSet, sidecar_path

EMBEDDING_SUFFIXES = (".csv", ".npy")


def model_space_path(path: str | Path) -> Path:
    """``out.nii.gz`` → ``out_model_space.nii.gz`` (written with ``model_space_output``)."""
    base = sidecar_path(path)  # out.nii.gz → out.json
    return base.with_name(base.stem + "_model_space.nii.gz")


def volume_files(path: str | Path, model_space_output: bool = False) -> list[Path]:
    """Every file one volume output writes: the volume, its sidecar, and the model-space pair."""
    files = [Path(path), sidecar_path(path)]
    if model_space_output:
        files += [model_space_path(path), sidecar_path(model_space_path(path))]
    return files


def interpolation_files(output_dir: str | Path, fractions: Sequence[float], suffix: str = ".nii.gz") -> list[Path]:
    return [Path(output_dir) / f"interp_t{f:.3f}{suffix}" for f in fractions]


def variation_files(output_dir: str | Path, n: int, suffix: str = ".nii.gz") -> list[Path]:
    return [Path(output_dir) / f"variation_{i:02d}{suffix}" for i in range(n)]


def embedding_sidecar(path: str | Path) -> Path:
    """``codes.csv`` → ``codes.json`` (the provenance ``ldae batch`` writes beside an embedding)."""
    return Path(path).with_suffix(".json")


def check_embedding_output(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise LDAEError(f"cannot write codes to {path.name!r}: the name must end with .csv (a table) or .npy (an array)")
    return path


def add_volumes(outs: OutputSet, outputs: Sequence[Output], paths: Sequence[str | Path], *, model_space_output: bool = False,
                model_affine: np.ndarray | None = None, extra: dict | None = None) -> None:
    """Each output (on its source's grid) to its path with its provenance sidecar, and with
    ``model_space_output`` also in model space (``model_affine``: the model grid's world affine)."""
    for out, path in zip(outputs, paths):
        prov = {**out.provenance, **(extra or {})}
        outs.add_image(path, out.like, out.data, prov)
        if model_space_output and out.model_space is not None:
            outs.add_image(model_space_path(path), model_space_image(out.model_space, model_affine), out.model_space,
                           {**prov, "space": "model space (MNI coordinates), intensities in [0, 1]"})


def add_embeddings(outs: OutputSet, path: str | Path, inputs: Sequence[str | Path], codes: np.ndarray) -> None:
    """``.npy`` (N×E float32) or CSV (path + one column per dimension)."""
    path = check_embedding_output(path)
    if path.suffix.lower() == ".npy":
        def write_npy(tmp):
            with open(tmp, "wb") as f:
                np.save(f, codes.astype(np.float32))
        outs.add_file(path, write_npy)
    else:
        def write_csv(tmp):
            with open(tmp, "w") as f:
                f.write("path," + ",".join(f"e{i}" for i in range(codes.shape[1])) + "\n")
                for p, row in zip(inputs, codes):
                    f.write(str(Path(p).resolve()) + "," + ",".join(f"{v:.7g}" for v in row) + "\n")
        outs.add_file(path, write_csv)

