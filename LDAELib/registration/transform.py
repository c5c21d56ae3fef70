"""A scan's registration to MNI, kept as a transform so results can go back onto the scan's grid.

Two ITK composite transforms, both in LPS millimetres as every ITK transform file is:

* ``mni_to_native`` maps MNI points to scan points: the affine after the displacement field
  (p ↦ A(p + u(p))). It is ITK's *resampling* transform for the scan: sampling the scan through it
  gives the scan on an MNI grid. In 3D Slicer, putting the scan under this transform shows it in MNI
  space.
* ``native_to_mni`` maps scan points to MNI points (the inverse: A⁻¹, then the inverse field). Sampling
  an MNI-space result (the registered brain, a model output) through it gives that result on the
  scan's own grid. In Slicer, putting an MNI-space result under this transform overlays it on the scan.

Files: ``mni_to_native.h5`` and ``native_to_mni.h5`` (ITK HDF5 composite transforms: an affine and a
displacement field; read by SimpleITK, ANTs and 3D Slicer), plus ``bias_field.nii.gz`` (the N4
multiplicative bias field on a coarse grid in the scan's orientation; the scan = bias × corrected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import LDAEError
from . import images
from .template import MNI_AFFINE, MNI_SHAPE

FORWARD_FILE = "mni_to_native.h5"
INVERSE_FILE = "native_to_mni.h5"
BIAS_FILE = "bias_field.nii.gz"


@dataclass
class Registration:
    """How one scan maps onto the MNI template.

    Attributes:
        native_shape: (I, J, K) of the scan.
        native_affine: 4×4 voxel → world (RAS mm) affine of the scan.
        mni_to_native: ITK transform, MNI points → scan points (LPS mm).
        native_to_mni: its inverse, scan points → MNI points.
        log_bias: N4 log bias field (scalar SimpleITK image on a coarse grid over the scan), or None.
        quality: the quality-check figures (see ``stage_a.QualityReport``).
    """

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    mni_to_native: sitk.Transform
    native_to_mni: sitk.Transform
    log_bias: sitk.Image | None = None
    quality: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.native_shape = tuple(int(n) for n in self.native_shape)
        self.native_affine = np.asarray(self.native_affine, dtype=np.float64).reshape(4, 4)

    # -- resampling ------------------------------------------------------------------------------
    def native_grid(self) -> sitk.Image:
        return images.grid(self.native_shape, self.native_affine)

    def bias_on(self, reference: sitk.Image, transform: sitk.Transform | None = None) -> sitk.Image:
        """Multiplicative bias field sampled on ``reference`` (1 everywhere without bias correction)."""
        if self.log_bias is None:
            out = sitk.Image(reference.GetSize(), sitk.sitkFloat32) + 1.0
            out.CopyInformation(reference)
            return out
        return images.exp(images.resample(self.log_bias, reference, transform, order=1, default=0.0))

    def to_mni(
        self,
        data: np.ndarray,
        *,
        shape: tuple[int, int, int] = MNI_SHAPE,
        affine: np.ndarray = MNI_AFFINE,
        order: int = 1,
        correct_bias: bool = False,
    ) -> np.ndarray:
        """A volume on the scan's grid (I, J, K), resampled onto an MNI grid (default the 1 mm FSL
        grid). ``correct_bias`` divides by the bias field. Returns float32 (I, J, K) of ``shape``."""
        self._check_native(data)
        ref = images.grid(shape, affine)
        out = images.resample(images.to_sitk(data, self.native_affine), ref, self.mni_to_native, order=order)
        if correct_bias:
            out = sitk.Divide(out, self.bias_on(ref, self.mni_to_native))
        return images.to_numpy(out)

    def to_native(
        self,
        data: np.ndarray,
        affine: np.ndarray,
        *,
        order: int = 1,
        default: float = 0.0,
        restore_bias: bool = False,
    ) -> np.ndarray:
        """A volume on any grid in MNI world coordinates (``data`` I, J, K placed by ``affine``, e.g.
        the MNI grid or the model grid), resampled onto the scan's own grid. Scan voxels that fall
        outside it get ``default``. ``restore_bias`` multiplies by the scan's bias field, so the
        result has the scan's shading. Returns float32 (I, J, K) of ``native_shape``."""
        ref = self.native_grid()
        out = images.resample(images.to_sitk(data, affine), ref, self.native_to_mni, order=order, default=default)
        if restore_bias:
            out = out * self.bias_on(ref)
        return images.to_numpy(out)

    def _check_native(self, data: np.ndarray) -> None:
        if tuple(np.shape(data)) != self.native_shape:
            raise LDAEError(
                f"The volume has shape {tuple(np.shape(data))} but this registration belongs to a scan of "
                f"shape {self.native_shape}; use the registration computed for that scan."
            )

    # -- files -----------------------------------------------------------------------------------
    def write_files(self, folder: str | Path) -> list[Path]:
        """Write the transforms and the bias field into ``folder``; returns the paths written."""
        folder = Path(folder)
        out = [folder / FORWARD_FILE, folder / INVERSE_FILE]
        sitk.WriteTransform(self.mni_to_native, str(out[0]))
        sitk.WriteTransform(self.native_to_mni, str(out[1]))
        if self.log_bias is not None:
            out.append(folder / BIAS_FILE)
            sitk.WriteImage(images.exp(self.log_bias), str(out[-1]), useCompression=True)
        return out

    @classmethod
    def read_files(cls, folder: str | Path, native_shape, native_affine, quality: dict | None = None) -> "Registration":
        folder = Path(folder)
        try:
            fwd = sitk.ReadTransform(str(folder / FORWARD_FILE))
            inv = sitk.ReadTransform(str(folder / INVERSE_FILE))
            bias = folder / BIAS_FILE
            log_bias = sitk.Log(sitk.Cast(sitk.ReadImage(str(bias)), sitk.sitkFloat32)) if bias.exists() else None
        except RuntimeError as err:
            raise LDAEError(
                f"The registration files in {folder} cannot be read ({str(err).strip().splitlines()[-1][:160]}); "
                "run the preprocessing again."
            ) from None
        return cls(native_shape, native_affine, fwd, inv, log_bias, dict(quality or {}))
