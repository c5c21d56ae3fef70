"""The MNI template stage A registers to, and the MNI grid its results are written on.

Template: the ICBM 2009a nonlinear symmetric T1 average (Fonov et al. 2009, 2011), skull-stripped,
1 mm, 197×233×189, as installed by nilearn (``nilearn/datasets/data/``); its brain mask is every
non-zero voxel of it (1.89 L: brain, cerebellum, brainstem to z = −72 mm, and the CSF around them).
Nothing is downloaded. The template comes under the McConnell Brain Imaging Centre notice kept in
``LDAELib/resources/MNI_TEMPLATE_NOTICE.txt``.

Output grid: the authors' stage A writes the registered brain on the grid of ANTs' ``mni`` image,
the FSL MNI152 1 mm grid: 182×218×182 voxels, voxel (i, j, k) ↦ (90 − i, j − 126, k − 72) mm RAS
(i runs right → left). Stage B (``LDAELib.space``) takes that array as stored, so the same grid is
used here.

Arrays are nibabel I,J,K with RAS affines.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LDAEError

MNI_SHAPE = (182, 218, 182)
MNI_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 90.0], [0.0, 1.0, 0.0, -126.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
TEMPLATE_NAME = "ICBM 2009a nonlinear symmetric T1, skull-stripped, 1 mm (nilearn)"
_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
NOTICE_FILE = Path(__file__).resolve().parents[1] / "resources" / "MNI_TEMPLATE_NOTICE.txt"


@dataclass(frozen=True)
class Template:
    """The registration target.

    Attributes:
        t1: float32 (I, J, K) T1 average scaled to [0, 1]; 0 outside the brain.
        mask: bool (I, J, K) brain mask (t1 > 0).
        affine: 4×4 voxel → MNI world (mm, RAS).
    """

    t1: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


def template_path() -> Path:
    """Path of the installed ICBM 2009a T1 file; ``LDAEError`` if nilearn is missing."""
    try:
        from importlib.resources import files

        path = Path(str(files("nilearn") / "datasets" / "data" / _T1_FILE))
    except ModuleNotFoundError:
        raise LDAEError(
            "Registration to MNI needs the ICBM 2009a template that nilearn installs; "
            "run `pip install nilearn` (nothing is downloaded at run time)."
        ) from None
    if not path.is_file():
        raise LDAEError(
            f"The MNI template {_T1_FILE} is missing from the installed nilearn ({path.parent}); "
            "reinstall it with `pip install --force-reinstall nilearn`."
        )
    return path


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    import nibabel as nib

    img = nib.load(str(template_path()))
    raw = np.asarray(img.dataobj, dtype=np.float32)
    t1 = raw / np.float32(raw.max())
    t1.setflags(write=False)
    mask = raw > 0
    mask.setflags(write=False)
    return Template(t1=t1, mask=mask, affine=np.asarray(img.affine, dtype=np.float64))


def template_notice() -> str:
    """The MNI notice that travels with the template and with every volume registered to it."""
    return NOTICE_FILE.read_text()
