"""Stage A: a raw T1 scan → the MNI template and back (bias correction, brain extraction,
affine + deformable registration), in SimpleITK, with a quality check and a content-keyed cache.

    from LDAELib.registration import to_model_space_native, from_model_space_native, StageACache
    x, ctx = to_model_space_native(vol.data, vol.affine, model.config.space, cache=StageACache())
    ...                                               # x: model space, as the networks expect
    native = from_model_space_native(edited, ctx)     # the result on the scan's own grid

Lower level: :func:`register_to_mni` (one scan → :class:`StageAResult`: registered brain on the MNI
grid, brain mask on the scan's grid, :class:`Registration` = the transforms both ways),
:func:`write_result` / :func:`read_result` (the files, see ``store``). Modules: ``template`` (the ICBM
2009a template from nilearn, the MNI grid), ``images`` (nibabel ⇄ SimpleITK), ``stage_a`` (the steps
and the checks), ``transform`` (the registration as ITK transforms), ``store`` (files and cache),
``native`` (stage A + stage B and the way back).
"""

try:
    import SimpleITK  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover - depends on the installation
    from ..errors import LDAEError

    raise LDAEError(
        "Registering a raw scan to MNI (stage A) needs SimpleITK: run `pip install SimpleITK`, or pass a scan "
        "that is already brain-extracted and registered to MNI with --registered."
    ) from None

from .native import NativeContext, from_model_space_native, run_stage_a, to_mni, to_model_space_native
from .stage_a import StageAResult, StageASettings, check_scan, register_to_mni
from .store import StageACache, default_cache_dir, read_result, scan_key, write_result
from .template import MNI_AFFINE, MNI_SHAPE, TEMPLATE_NAME, load_template, template_notice
from .transform import Registration

__all__ = [
    "NativeContext", "from_model_space_native", "run_stage_a", "to_mni", "to_model_space_native",
    "StageAResult", "StageASettings", "check_scan", "register_to_mni",
    "StageACache", "default_cache_dir", "read_result", "scan_key", "write_result",
    "MNI_AFFINE", "MNI_SHAPE", "TEMPLATE_NAME", "load_template", "template_notice",
    "Registration",
]
