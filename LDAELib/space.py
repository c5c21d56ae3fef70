"""Model space: the grid and intensity range the LDAE networks were trained on, and the way back.

The forward path is the authors' stage-B preprocessing, run through MONAI itself so it
matches bit for bit:

    voxel array as stored in the NIfTI (I,J,K, no reorientation), float32, channel first
    [→ Gaussian anti-aliasing, only with ``antialias`` (the demo model's space; not the authors')]
    → ``Spacing(pixdim=spacing_mm)``            bilinear, padding "border", align_corners False
    → ``ResizeWithPadOrCrop(shape, "minimum")`` centre pad/crop (odd remainder: extra voxel high end)
    → ``ScaleIntensity(minv=0, maxv=1)``         global min-max

(for the official model: 182×218×182 @ 1 mm → 122×146×122 @ 1.5 mm → 128×160×128 in [0, 1]).

The inverse is written here: every voxel of the input grid is mapped through
``inv(model_affine) @ input_affine`` into the model-space grid and sampled there (trilinear by
default), then the min-max is undone. Affines follow the nibabel/MONAI convention: they map a voxel
*centre* index (i, j, k) to world millimetres; a grid's field of view is its voxels' extent, i.e.
index −0.5 … n−0.5 on each axis.

All arrays here are plain numpy in nibabel's I,J,K axis order (not Slicer's K,J,I).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LDAEError

_MIN_VOXELS_PER_AXIS = 8
_INTENSITY_MODES = ("minmax",)


@dataclass
class ModelSpaceConfig:
    """The model space a network expects.

    Attributes:
        spacing_mm: voxel size (mm) of the model grid along the I, J, K axes.
        shape: model grid size (I, J, K) in voxels.
        intensity: intensity normalisation; ``"minmax"`` = global min-max to [0, 1] (the only mode).
        antialias: before resampling, smooth each voxel axis the model grid is coarser along by a
            Gaussian of σ = (f − 1) / 2 input voxels, f = model spacing / input spacing (the usual
            anti-aliasing rule, as in scikit-image's ``rescale``). Bilinear resampling alone keeps
            detail finer than the model grid as aliasing: a 1 mm scan in the demo model's 3 mm space
            gets σ = 1 voxel; the demo cohort's 2 mm scans σ = 0.25, which changes them by less than
            0.1 % of a neighbour's difference. Off for the authors' model (their stage B has none).
    """

    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    shape: tuple[int, int, int] = (128, 160, 128)
    intensity: str = "minmax"
    antialias: bool = False

    def __post_init__(self) -> None:
        try:
            self.spacing_mm = tuple(float(s) for s in self.spacing_mm)
            self.shape = tuple(int(n) for n in self.shape)
        except (TypeError, ValueError) as e:
            raise LDAEError(
                f"Model-space settings are malformed ({e}); spacing_mm must be three numbers (mm) "
                "and shape three integers, e.g. spacing_mm=[1.5, 1.5, 1.5], shape=[128, 160, 128]."
            ) from None
        if len(self.spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing_mm):
            raise LDAEError(
                f"Model-space spacing_mm must be three positive numbers (mm), got {self.spacing_mm}."
            )
        if len(self.shape) != 3 or not all(n > 0 for n in self.shape):
            raise LDAEError(f"Model-space shape must be three positive integers, got {self.shape}.")
        if not isinstance(self.antialias, bool):
            raise LDAEError(f"Model-space antialias must be true or false, got {self.antialias!r}.")
        if self.intensity not in _INTENSITY_MODES:
            raise LDAEError(
                f"Unknown model-space intensity mode {self.intensity!r}; "
                f"supported: {', '.join(_INTENSITY_MODES)}."
            )

    def to_dict(self) -> dict:
        d = {"spacing_mm": list(self.spacing_mm), "shape": list(self.shape), "intensity": self.intensity}
        if self.antialias:  # written only when on, so the authors' space (and older bundles) read as before
            d["antialias"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpaceConfig":
        unknown = set(d) - {"spacing_mm", "shape", "intensity", "antialias"}
        if unknown:
            raise LDAEError(
                f"Unknown model-space setting(s) {sorted(unknown)}; "
                "expected only spacing_mm, shape, intensity, antialias."
            )
        return cls(**d)


@dataclass
class SpaceContext:
    """Everything needed to bring a model-space volume back onto the input's grid.

    Attributes:
        input_shape: (I, J, K) of the input volume.
        input_affine: 4×4 voxel-centre → world (mm) affine of the input.
        model_shape: (I, J, K) of the model grid (= ``ModelSpaceConfig.shape``).
        model_affine: 4×4 affine of the model grid in the same world coordinates.
        intensity_min, intensity_max: min-max of the volume the scaling saw (the resampled, padded /
            cropped input); model intensity x maps back to ``x * (max - min) + min``.
            (0, 1) on the identity path, where nothing was rescaled.
        resampled: False when the input was already in model space (identity path).
        background: model-space value given to input voxels outside the model field of view
            (0 = the intensity minimum after min-max).
    """

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    model_shape: tuple[int, int, int]
    model_affine: np.ndarray
    intensity_min: float
    intensity_max: float
    resampled: bool
    background: float = 0.0

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(n) for n in self.input_shape)
        self.model_shape = tuple(int(n) for n in self.model_shape)
        self.input_affine = np.array(self.input_affine, dtype=np.float64).reshape(4, 4)
        self.model_affine = np.array(self.model_affine, dtype=np.float64).reshape(4, 4)
        self.intensity_min = float(self.intensity_min)
        self.intensity_max = float(self.intensity_max)
        self.resampled = bool(self.resampled)
        self.background = float(self.background)

    def to_dict(self) -> dict:
        """JSON-ready dict (affines as nested lists)."""
        return {
            "input_shape": list(self.input_shape),
            "input_affine": self.input_affine.tolist(),
            "model_shape": list(self.model_shape),
            "model_affine": self.model_affine.tolist(),
            "intensity_min": self.intensity_min,
            "intensity_max": self.intensity_max,
            "resampled": self.resampled,
            "background": self.background,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SpaceContext":
        required = ("input_shape", "input_affine", "model_shape", "model_affine",
                    "intensity_min", "intensity_max", "resampled")
        missing = [k for k in required if k not in d]
        if missing:
            raise LDAEError(
                f"The model-space record is incomplete (missing {', '.join(missing)}); "
                "re-run the preprocessing to write a fresh sidecar file."
            )
        try:
            return cls(**{k: d[k] for k in (*required, "background") if k in d})
        except (TypeError, ValueError) as e:
            raise LDAEError(
                f"The model-space record is malformed ({e}); "
                "re-run the preprocessing to write a fresh sidecar file."
            ) from None


def validate_volume(data: np.ndarray, name: str = "input") -> None:
    """Raise ``LDAEError`` unless ``data`` is a usable 3-D scalar volume.

    Rejected: non-numeric arrays, anything not 3-D (2-D images, 4-D series), fewer than 8 voxels on
    an axis, NaN or ±inf values, and constant volumes (max == min).
    """
    data = np.asarray(data)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_) or np.iscomplexobj(data):
        raise LDAEError(f"The {name} volume has non-numeric voxels (dtype {data.dtype}); "
                        "load a scalar image (e.g. a T1-weighted NIfTI).")
    if data.ndim == 4:
        if data.shape[3] == 1:
            raise LDAEError(
                f"The {name} volume is 4-D with a single volume (shape {data.shape}); "
                "drop the trailing axis of length 1 and pass the 3-D volume."
            )
        raise LDAEError(
            f"The {name} volume is a 4-D series of {data.shape[3]} volumes (shape {data.shape}); "
            "extract one 3-D volume first (a 4-D file whose 4th axis has length 1 is accepted "
            "and squeezed)."
        )
    if data.ndim != 3:
        kind = "a 2-D image" if data.ndim == 2 else f"{data.ndim}-D"
        raise LDAEError(
            f"The {name} volume is {kind} (shape {data.shape}); a 3-D brain volume is needed."
        )
    if min(data.shape) < _MIN_VOXELS_PER_AXIS:
        raise LDAEError(
            f"The {name} volume is far too small (shape {data.shape}); each axis needs at least "
            f"{_MIN_VOXELS_PER_AXIS} voxels. Load a whole-brain 3-D image."
        )
    if data.dtype.kind in "fc":
        finite = np.isfinite(data)
        if not finite.all():
            n_bad = int(finite.size - np.count_nonzero(finite))
            raise LDAEError(
                f"The {name} volume has {n_bad} NaN or infinite voxel(s); "
                "fix or re-export the image (e.g. replace them with 0) and try again."
            )
    if data.max() == data.min():
        raise LDAEError(
            f"The {name} volume is empty or constant (every voxel is {data.flat[0]}); "
            "check that the right file was loaded."
        )


def _validate_affine(affine: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise LDAEError(f"The {name} volume's affine must be a finite 4×4 matrix, got shape {a.shape}; "
                        "check the image header (qform/sform).")
    if not np.allclose(a[3], [0, 0, 0, 1]) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise LDAEError(f"The {name} volume's affine is not an invertible voxel-to-world matrix; "
                        "check the image header (qform/sform).")
    return a.copy()


def _as_float32_volume(data: np.ndarray, name: str) -> np.ndarray:
    """Validated float32 copy of ``data`` (never a view of the caller's array)."""
    validate_volume(data, name)
    out = np.array(data, dtype=np.float32, copy=True)
    # A finite float64 can still overflow float32.
    validate_volume(out, name)
    return out


def antialias_sigmas(affine: np.ndarray, spacing_mm) -> tuple[float, float, float]:
    """Per voxel axis, the Gaussian σ (input voxels) that anti-aliases resampling to ``spacing_mm``:
    (f − 1) / 2 with f = model spacing / input spacing, 0 where the model grid is not coarser."""
    voxel = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    return tuple(max(0.0, (float(t) / float(v) - 1.0) / 2.0) for t, v in zip(spacing_mm, voxel))


def antialias(vol: np.ndarray, affine: np.ndarray, spacing_mm) -> np.ndarray:
    """``vol`` smoothed for resampling to ``spacing_mm`` (:func:`antialias_sigmas`; a copy)."""
    from scipy.ndimage import gaussian_filter

    sigmas = antialias_sigmas(affine, spacing_mm)
    if not any(s > 0 for s in sigmas):
        return vol
    return gaussian_filter(vol, sigmas, mode="nearest").astype(np.float32, copy=False)


def to_model_space(
    data: np.ndarray, affine: np.ndarray, config: ModelSpaceConfig = ModelSpaceConfig()
) -> tuple[np.ndarray, SpaceContext]:
    """Resample a volume into model space, as the authors' stage-B preprocessing does.

    Args:
        data: 3-D array (I, J, K) as nibabel gives it (any real dtype; not modified).
        affine: 4×4 voxel → world (mm) affine of ``data``.
        config: target spacing, shape and intensity mode.

    Returns:
        ``(x, ctx)``: ``x`` is a float32 array of ``config.shape`` with values in [0, 1];
        ``ctx`` is what :func:`from_model_space` needs to go back.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import ResizeWithPadOrCrop, ScaleIntensity, Spacing

    vol = _as_float32_volume(data, "input")
    aff = _validate_affine(affine, "input")
    if config.antialias:
        vol = antialias(vol, aff, config.spacing_mm)

    img = MetaTensor(torch.from_numpy(vol[None]), affine=torch.from_numpy(aff.copy()))
    img = Spacing(pixdim=config.spacing_mm)(img)
    img = ResizeWithPadOrCrop(spatial_size=config.shape, mode="minimum")(img)
    assert isinstance(img, MetaTensor), "MONAI meta tracking is off; the model grid affine is lost"
    model_affine = img.affine.detach().cpu().numpy().astype(np.float64)
    padded = img.as_tensor()
    lo, hi = float(padded.min()), float(padded.max())
    if not hi > lo:
        raise LDAEError(
            "After resampling to model space the volume is constant: the brain lies outside the "
            f"model field of view ({config.shape} voxels at {config.spacing_mm} mm). Is the image "
            "registered to MNI space?"
        )
    img = ScaleIntensity(minv=0.0, maxv=1.0)(img)
    x = np.ascontiguousarray(img.as_tensor().detach().cpu().numpy()[0], dtype=np.float32)

    ctx = SpaceContext(
        input_shape=vol.shape,
        input_affine=aff,
        model_shape=config.shape,
        model_affine=model_affine,
        intensity_min=lo,
        intensity_max=hi,
        resampled=True,
        background=0.0,
    )
    return x, ctx


def model_space_identity(
    data: np.ndarray, affine: np.ndarray, config: ModelSpaceConfig = ModelSpaceConfig()
) -> tuple[np.ndarray, SpaceContext]:
    """Take a volume that is already in model space, unchanged (``--model-space``).

    The volume enters the networks exactly as stored: no resampling and no rescaling (it is only
    cast to float32). Its shape must equal ``config.shape``. The returned context makes
    :func:`from_model_space` give any model-space array back unchanged on the same grid.

    Returns:
        ``(x, ctx)``: ``x`` float32 copy of ``data``, shape ``config.shape``.
    """
    vol = _as_float32_volume(data, "input")
    aff = _validate_affine(affine, "input")
    if vol.shape != tuple(config.shape):
        raise LDAEError(
            f"The input is declared to be in model space but its shape is {vol.shape}, not "
            f"{tuple(config.shape)}; drop the model-space option to resample it, or pass the "
            "preprocessed volume."
        )
    ctx = SpaceContext(
        input_shape=vol.shape,
        input_affine=aff,
        model_shape=vol.shape,
        model_affine=aff,
        intensity_min=0.0,
        intensity_max=1.0,
        resampled=False,
        background=float(vol.min()),
    )
    return vol, ctx


def from_model_space(
    x: np.ndarray, ctx: SpaceContext, *, rescale_intensity: bool = True, order: int = 1
) -> np.ndarray:
    """Bring a model-space volume (e.g. a decoded, edited brain) back onto the input's grid.

    Every voxel of the input grid is mapped to its model-grid coordinate through
    ``inv(ctx.model_affine) @ ctx.input_affine`` and sampled there with a spline of ``order``
    (1 = trilinear, 0 = nearest for label maps). Input voxels outside the model field of view get
    ``ctx.background`` (the intensity minimum); those within half a voxel of its edge take the edge
    value. With ``rescale_intensity`` the min-max is undone: ``x * (max - min) + min``.

    Args:
        x: float array of ``ctx.model_shape`` (I, J, K); leading axes of length 1
            (batch / channel) are dropped. Not modified.
        ctx: the context returned by :func:`to_model_space` or :func:`model_space_identity`.
        rescale_intensity: undo the min-max scaling.
        order: interpolation order, 0…5.

    Returns:
        float32 array of ``ctx.input_shape`` on the input's grid.
    """
    from scipy import ndimage

    if order not in range(6):
        raise ValueError(f"order must be an integer 0..5, got {order!r}")
    arr = np.asarray(x)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != tuple(ctx.model_shape):
        raise LDAEError(
            f"The model-space volume has shape {np.asarray(x).shape}, expected {tuple(ctx.model_shape)}; "
            "it must come from the same model space as the context (same spacing and shape)."
        )
    arr = np.asarray(arr, dtype=np.float64)

    if not ctx.resampled:
        out = arr.copy()
    else:
        # input voxel index -> world -> model voxel index
        t = np.linalg.solve(ctx.model_affine, ctx.input_affine)
        out = ndimage.affine_transform(
            arr, t[:3, :3], offset=t[:3, 3], output_shape=ctx.input_shape,
            order=order, mode="nearest", prefilter=order > 1,
        )
        out[~_inside_field_of_view(t, ctx.input_shape, ctx.model_shape)] = ctx.background

    if rescale_intensity:
        out = out * (ctx.intensity_max - ctx.intensity_min) + ctx.intensity_min
    return out.astype(np.float32)


def _inside_field_of_view(t: np.ndarray, in_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> np.ndarray:
    """Bool mask over the input grid: True where the voxel centre lies inside the model grid's extent.

    ``t`` maps input voxel indices to model voxel indices; the model grid covers −0.5 … n−0.5.
    """
    i, j, k = (np.arange(n, dtype=np.float64) for n in in_shape)
    inside = np.ones(tuple(in_shape), dtype=bool)
    for d, n in enumerate(model_shape):
        c = (t[d, 0] * i)[:, None, None] + (t[d, 1] * j)[None, :, None] + (t[d, 2] * k)[None, None, :] + t[d, 3]
        inside &= (c >= -0.5) & (c <= n - 0.5)
    return inside
