"""Volumes on disk: NIfTI, NRRD and MetaImage, read and written with the geometry their readers see.

An ``Image`` is a 3-D array in nibabel's I,J,K voxel order (float32) with its 4×4 voxel → RAS (mm)
affine, and what is needed to write a result *on the same grid as the readers see the source*:

* NIfTI (``.nii``, ``.nii.gz``, ``.hdr``/``.img`` pairs) is read with nibabel. A result is written
  with the source's own geometry fields (qform and sform with their codes, pixdim with the qfac,
  units), whatever they are, so every reader (nibabel prefers the sform, ITK and therefore Slicer
  apply their own rules when the two disagree or both codes are 0) sees the result exactly where
  it sees the source. Nothing else of the source header is copied: its description, ``db_name``,
  ``aux_file``, ``intent_name`` and extensions can hold patient identifiers.
* NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``), the formats Slicer saves, are read
  and written with SimpleITK (Slicer's own reader, ITK): spacing, origin and direction are kept
  exactly; no other metadata travels.

The format of an output is decided by its extension; an unknown one is refused before anything is
computed (``check_output_suffix``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import LDAEError
from ..space import validate_volume

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".img.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
READ_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
"""Single-file formats a result can be written in (a header/data pair would be two files to publish)."""

_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS ↔ LPS (ITK's world)
_NIFTI_GEOMETRY = ("pixdim", "xyzt_units", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                   "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "dim_info", "slice_code",
                   "slice_start", "slice_end", "slice_duration", "toffset")


def suffix_of(path: str | Path) -> str:
    """The image suffix of a file name (``.nii.gz`` counts as one), lower case; '' when none is known."""
    name = Path(path).name.lower()
    for s in sorted(READ_SUFFIXES + (".gz",), key=len, reverse=True):
        if name.endswith(s):
            return s
    return Path(name).suffix


def check_output_suffix(path: str | Path) -> str:
    """The output's format suffix; an LDAEError (before any computation) when it cannot be written."""
    s = suffix_of(path)
    if s not in WRITE_SUFFIXES:
        raise LDAEError(f"cannot write a volume named {Path(path).name!r}: its extension must be one of "
                        f"{', '.join(WRITE_SUFFIXES)} (NIfTI, NRRD or MetaImage)")
    return s


@dataclass(frozen=True)
class ItkGeometry:
    """A grid as ITK sees it: spacing (mm), origin (LPS mm) and the 3×3 direction (row-major, LPS)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def affine(self) -> np.ndarray:
        """The voxel (I,J,K) → RAS affine of this grid."""
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        a = np.eye(4)
        a[:3, :3] = _LPS @ d @ np.diag(self.spacing)
        a[:3, 3] = _LPS @ np.asarray(self.origin, dtype=np.float64)
        return a

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> "ItkGeometry":
        a = np.asarray(affine, dtype=np.float64)
        m = _LPS @ a[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        return cls(tuple(map(float, spacing)), tuple(map(float, _LPS @ a[:3, 3])), tuple(map(float, (m / spacing).ravel())))


@dataclass(frozen=True)
class Image:
    """A 3-D scan: ``data`` float32 (I, J, K), ``affine`` 4×4 voxel → RAS (mm), and where it came from.

    ``nifti_header`` (NIfTI sources) and ``itk`` (NRRD/MetaImage sources) keep the source's own
    geometry, so results written ``like`` it land where the readers see the source.
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    format: str = "nifti"
    nifti_header: nib.Nifti1Header | None = field(default=None, repr=False)
    itk: ItkGeometry | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "volume"

    def with_data(self, data: np.ndarray) -> "Image":
        """The same grid holding other voxels (float32, I,J,K, the same shape)."""
        data = np.asarray(data, dtype=np.float32)
        if data.shape != self.data.shape:
            raise ValueError(f"voxels of shape {data.shape} do not fit this grid {self.data.shape}")
        return replace(self, data=data)


def _folder_message(path: Path) -> str:
    dicom = False
    try:
        for f in sorted(path.iterdir())[:20]:
            if f.is_file():
                with open(f, "rb") as fh:
                    head = fh.read(132)
                if head[128:132] == b"DICM" or f.suffix.lower() == ".dcm":
                    dicom = True
                    break
    except OSError:
        pass
    if dicom:
        return (f"{path} is a folder of DICOM files; LDAE reads one volume file. Load the series in Slicer's DICOM "
                "module and save it as NRRD or NIfTI, or convert it with dcm2niix, then give that file")
    return f"{path} is a folder; give a volume file ({', '.join(READ_SUFFIXES)})"


def _checked_array(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.names is not None or (data.ndim == 4 and data.shape[-1] in (3, 4) and data.dtype == np.uint8):
        raise LDAEError(f"{path} is a colour (RGB) image; LDAE needs a grey-scale 3-D T1 scan")
    if np.iscomplexobj(data):
        raise LDAEError(f"{path} holds complex numbers (e.g. raw k-space or phase data); LDAE needs a real-valued magnitude T1 scan")
    if data.dtype == bool or data.dtype.kind not in "biuf":
        raise LDAEError(f"{path} holds values of type {data.dtype}; LDAE needs numbers (a grey-scale T1 scan)")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise LDAEError(f"{path} is a 4-D series of {data.shape[3]} volumes; LDAE works on one 3-D scan at a time (split the series first)")
    if data.ndim < 3 or min(data.shape) == 1:
        raise LDAEError(f"{path} is a 2-D image ({'×'.join(map(str, data.shape))}); LDAE needs a 3-D brain volume")
    if data.ndim > 4:
        raise LDAEError(f"{path} has {data.ndim} dimensions; LDAE needs a 3-D brain volume")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(data, dtype=np.float32)
    if np.isfinite(data).all() and not np.isfinite(out).all():
        raise LDAEError(f"{path} holds values too large for 32-bit floats (beyond ±3.4e38); rescale the scan's intensities")
    return out


def _check_geometry(affine: np.ndarray, zooms, path: Path) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    z = np.asarray(zooms, dtype=np.float64)
    if not (np.isfinite(z).all() and (z > 0).all()):
        raise LDAEError(f"{path} has voxel sizes {' × '.join(f'{v:g}' for v in z)} mm: a size is zero, negative or not a number. "
                        "Fix the header (pixdim / spacing) so that the scan's geometry is known")
    if a.shape != (4, 4) or not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-9:
        raise LDAEError(f"{path}: the voxel-to-world matrix is not invertible; fix the image header")
    return a


def read_image(path: str | Path) -> Image:
    """Read a 3-D scan (NIfTI, NRRD or MetaImage, by extension). A 4-D file with one volume is
    accepted. Anything else (another format, 2-D, a colour or complex image, a series, a folder,
    no voxel size, NaN or constant voxels) raises one LDAEError that says what to do."""
    path = Path(path)
    if not path.exists():
        raise LDAEError(f"input not found: {path}")
    if path.is_dir():
        raise LDAEError(_folder_message(path))
    suffix = suffix_of(path)
    if suffix in ITK_SUFFIXES:
        image = _read_itk(path)
    elif suffix in NIFTI_SUFFIXES or suffix == ".gz":
        image = _read_nifti(path)
    else:
        raise LDAEError(f"{path.name}: unknown file type; give a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) volume")
    validate_volume(image.data, name=path.name)
    return image


def _read_nifti(path: Path) -> Image:
    try:
        img = nib.load(str(path))
        header = img.header
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for unreadable files
        raise LDAEError(f"{path} is not an image nibabel can read ({str(err).splitlines()[0][:160]}); "
                        "give a NIfTI (.nii, .nii.gz), NRRD or MetaImage file") from None
    if not isinstance(header, nib.Nifti1Header):  # Analyze, MGH…: read, but written back as plain NIfTI
        header = None
    data = _checked_array(np.asarray(data), path)
    zooms = _stored_zooms(img, path) if header is not None else img.header.get_zooms()[:3]
    affine = _check_geometry(img.affine, zooms, path)
    return Image(data, affine, path, "nifti", header.copy() if header is not None else None)


def _stored_zooms(img, path: Path):
    """The voxel sizes as the file stores them: nibabel quietly turns a zero into 1 mm on load."""
    try:
        holder = img.file_map.get("header") or img.file_map["image"]  # a pair's .hdr, else the .nii itself
        source = holder.filename or str(path)
        with nib.openers.ImageOpener(source) as f:
            raw = type(img.header).from_fileobj(f, check=False)
        return raw["pixdim"][1:4]
    except Exception:  # noqa: BLE001 - an unusual container: keep what nibabel made of it
        return img.header["pixdim"][1:4]


def _read_itk(path: Path) -> Image:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise LDAEError(f"{path} is not an image ITK can read ({str(err).strip().splitlines()[-1][:160]})") from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise LDAEError(f"{path} has {img.GetNumberOfComponentsPerPixel()} values per voxel (a colour or vector image); "
                        "LDAE needs a grey-scale 3-D T1 scan")
    dim = img.GetDimension()
    if dim == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
        dim = 3
    if dim == 2:
        raise LDAEError(f"{path} is a 2-D image ({'×'.join(map(str, img.GetSize()))}); LDAE needs a 3-D brain volume")
    if dim != 3:
        raise LDAEError(f"{path} has {dim} dimensions ({'×'.join(map(str, img.GetSize()))}); LDAE works on one 3-D scan at a time")
    data = _checked_array(sitk.GetArrayViewFromImage(img).transpose(2, 1, 0), path)  # ITK's K,J,I → I,J,K
    geom = ItkGeometry(tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()))
    affine = _check_geometry(geom.affine() if all(s > 0 for s in geom.spacing) else np.eye(4), geom.spacing, path)
    return Image(np.ascontiguousarray(data), affine, path, "itk", None, geom)


def _nifti_for(data: np.ndarray, like: Image, description: str) -> nib.Nifti1Image:
    header = nib.Nifti1Header()
    src = like.nifti_header
    if src is not None and tuple(src.get_data_shape()[:3]) == data.shape:
        for name in _NIFTI_GEOMETRY:
            header[name] = src[name]
        header.set_data_shape(data.shape)
        header.set_data_dtype(np.float32)
        header["pixdim"][4:] = 0.0
        header["pixdim"][0] = src["pixdim"][0] if src["pixdim"][0] in (-1.0, 1.0) else 1.0
        img = nib.Nifti1Image(data, None, header=header)
    else:
        img = nib.Nifti1Image(data, like.affine, header=header)
        img.set_qform(like.affine, 1)
        img.set_sform(like.affine, 1)
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    img.header["cal_min"], img.header["cal_max"] = 0.0, 0.0
    return img


def write_image(path: str | Path, like: Image, data: np.ndarray, description: str = "LDAE output") -> Path:
    """Write ``data`` (float32, I,J,K, ``like``'s shape) on ``like``'s grid to ``path``, in the format of
    its extension (``WRITE_SUFFIXES``). Callers publish through ``outputs.OutputSet`` (all or nothing)."""
    path = Path(path)
    data = np.asarray(data, dtype=np.float32)
    suffix = check_output_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        nib.save(_nifti_for(data, like, description), str(path))
        return path
    import SimpleITK as sitk

    geom = like.itk if like.itk is not None else ItkGeometry.from_affine(like.affine)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(geom.spacing)
    img.SetOrigin(geom.origin)
    img.SetDirection(geom.direction)
    try:
        sitk.WriteImage(img, str(path), True)
    except RuntimeError as err:
        raise OSError(f"ITK could not write {path.name}: {str(err).strip().splitlines()[-1][:160]}") from None
    return path


def model_space_image(x: np.ndarray, model_affine: np.ndarray) -> Image:
    """A model-space array as an Image on the model grid (for ``--model-space-output``)."""
    return Image(np.asarray(x, dtype=np.float32), np.asarray(model_affine, dtype=np.float64), None, "nifti")


def files_of(path: str | Path) -> list[Path]:
    """The files an image consists of on disk (a .hdr/.img or .nhdr/.mhd header names its data)."""
    path = Path(path)
    out = [path]
    s = suffix_of(path)
    if s == ".hdr":
        out.append(path.with_suffix(".img"))
    elif s == ".img":
        out.append(path.with_suffix(".hdr"))
    elif s in (".nhdr", ".mhd"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            key, _, value = line.partition(":" if s == ".nhdr" else "=")
            if key.strip().lower() in ("data file", "datafile", "elementdatafile"):
                value = value.strip()
                if value and value.upper() not in ("LOCAL", "LIST") and not value.startswith("LIST"):
                    out.append(path.parent / value)
    return [p for p in out if os.path.lexists(p)]
