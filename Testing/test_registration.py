"""Stage A (``LDAELib.registration``) on a real head: Colin27 (``ch2.nii.gz``, with skull) moved off MNI
by known random affine transforms and stored in other orientations, spacings and obliquities.

Ground truth comes from the motion itself: ``ch2bet`` (Colin27's own skull-stripped brain) moved the
same way is the true brain mask, and the AAL regions' centres moved the same way are landmarks whose
MNI position must be the one found for the unmoved head. Needs the Debian package mricron-data
(``apt-get install mricron-data``), SimpleITK and nilearn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("nilearn")

from LDAELib.errors import LDAEError  # noqa: E402
from LDAELib.inference.image import read_image as read_volume  # noqa: E402
from LDAELib.registration import (  # noqa: E402
    MNI_AFFINE, NativeContext, StageACache, StageASettings, check_scan, from_model_space_native, read_result,
    register_to_mni, run_stage_a, scan_key, write_result,
)
from LDAELib.registration.stage_a import clip_bright_voxels, quality_failure  # noqa: E402
from LDAELib.space import ModelSpaceConfig, to_model_space  # noqa: E402

COLIN = Path(os.environ.get("LDAE_COLIN27_DIR", "/usr/share/mricron/templates"))
if not (COLIN / "ch2.nii.gz").is_file():
    pytest.skip(f"Colin27 (ch2.nii.gz) not found in {COLIN}: apt-get install mricron-data", allow_module_level=True)

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


# -- the moved head ---------------------------------------------------------------------------------
def _load(name: str):
    img = nib.load(str(COLIN / name))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine.astype(np.float64)


def random_motion(seed: int, rot_deg: float = 15.0, shift_mm: float = 20.0, scale: float = 0.08) -> np.ndarray:
    """A 4×4 world (RAS mm) affine: rotations up to ``rot_deg`` about each axis, shifts up to
    ``shift_mm``, per-axis scaling within ±``scale``."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", rng.uniform(-rot_deg, rot_deg, 3), degrees=True).as_matrix() @ np.diag(
        rng.uniform(1 - scale, 1 + scale, 3))
    m[:3, 3] = rng.uniform(-shift_mm, shift_mm, 3)
    return m


def scanner_grid(motion, src_shape, src_affine, spacing, axes, signs, tilt_deg):
    """(shape, affine) of a grid around the moved head: voxel axes ``axes`` (a permutation of the
    world axes) with ``signs``, ``spacing`` mm, tilted by ``tilt_deg`` about the first world axis."""
    from scipy.spatial.transform import Rotation

    corners = np.array([[i, j, k, 1.0] for i in (0, src_shape[0] - 1) for j in (0, src_shape[1] - 1) for k in (0, src_shape[2] - 1)]).T
    world = (motion @ src_affine @ corners)[:3]
    rot = Rotation.from_euler("x", tilt_deg, degrees=True).as_matrix() @ (np.eye(3)[:, list(axes)] * np.asarray(signs, float))
    lin = rot * np.asarray(spacing, float)
    idx = np.linalg.solve(lin, world)
    lo, hi = idx.min(1) - 4.0 / np.asarray(spacing), idx.max(1) + 4.0 / np.asarray(spacing)
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = lin, lin @ lo
    return tuple(int(np.ceil(h - l)) + 1 for l, h in zip(lo, hi)), affine


def move(data, src_affine, motion, shape, affine, order=1):
    """``data`` physically moved by ``motion`` and sampled on the grid (shape, affine)."""
    from scipy import ndimage

    m = np.linalg.inv(src_affine) @ np.linalg.inv(motion) @ affine
    return ndimage.affine_transform(data, m[:3, :3], m[:3, 3], output_shape=shape, order=order, mode="constant", cval=0.0)


def dice(a, b) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def to_mni_points(registration, ras_points):
    tx = registration.native_to_mni
    return np.array([np.array(tx.TransformPoint((p * RAS_TO_LPS).tolist())) * RAS_TO_LPS for p in ras_points])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One stage-A cache for the module (the CLI tests find the fixtures' results there)."""
    d = tmp_path_factory.mktemp("stage_a_cache")
    old = os.environ.get("LDAE_CACHE_DIR")
    os.environ["LDAE_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("LDAE_CACHE_DIR", None)
    else:
        os.environ["LDAE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def colin():
    head, affine = _load("ch2.nii.gz")
    bet, _ = _load("ch2bet.nii.gz")
    aal, _ = _load("aal.nii.gz")
    labels = np.unique(aal[aal > 0])
    from scipy import ndimage

    centres = np.array(ndimage.center_of_mass(np.ones_like(aal), aal, labels))
    landmarks = centres @ affine[:3, :3].T + affine[:3, 3]  # 116 AAL region centres, RAS mm
    return {"head": head, "brain": bet > 0, "bet": bet, "affine": affine, "landmarks": landmarks}


@pytest.fixture(scope="module")
def reference(colin, cache_dir):
    """Stage A on Colin27 as distributed (1 mm, RAS, MNI-aligned): where each landmark belongs in MNI."""
    result, _ = run_stage_a(colin["head"], colin["affine"], cache=StageACache())
    return to_mni_points(result.registration, colin["landmarks"])


def _moved_case(colin, tmp_path_factory, name, image, seed, spacing, axes, signs, tilt):
    motion = random_motion(seed)
    shape, affine = scanner_grid(motion, image.shape, colin["affine"], spacing, axes, signs, tilt)
    data = move(image, colin["affine"], motion, shape, affine)
    path = tmp_path_factory.mktemp(name) / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    vol = read_volume(path)  # as the command line will see it (the header stores the affine in float32)
    data, affine = vol.data, vol.affine
    result, key = run_stage_a(data, affine, cache=StageACache())
    brain = move(colin["brain"].astype(np.float32), colin["affine"], motion, shape, affine) > 0.5
    landmarks = colin["landmarks"] @ motion[:3, :3].T + motion[:3, 3]
    return {"data": data, "affine": affine, "path": path, "result": result, "key": key, "brain": brain, "landmarks": landmarks}


@pytest.fixture(scope="module")
def moved_head(colin, tmp_path_factory, cache_dir):
    """Colin27 with skull, moved; stored as tilted coronal slices (i: left→right, j: superior→inferior,
    k: posterior→anterior), 1.2 × 1.2 × 2.5 mm."""
    return _moved_case(colin, tmp_path_factory, "moved_head", colin["head"], seed=3, spacing=(1.2, 1.2, 2.5),
                       axes=(0, 2, 1), signs=(-1, -1, 1), tilt=12.0)


@pytest.fixture(scope="module")
def moved_brain(colin, tmp_path_factory, cache_dir):
    """Colin27 skull-stripped (ch2bet), moved another way; stored LPS (i: right→left, j:
    anterior→posterior), 1 mm."""
    return _moved_case(colin, tmp_path_factory, "moved_brain", colin["bet"], seed=11, spacing=(1.0, 1.0, 1.0),
                       axes=(0, 1, 2), signs=(-1, -1, 1), tilt=-8.0)


# -- quality on the moved head ----------------------------------------------------------------------
def test_brain_mask_of_moved_head_matches_ch2bet(moved_head):
    mask = moved_head["result"].brain_mask
    assert mask.shape == moved_head["data"].shape
    assert dice(mask > 0, moved_head["brain"]) >= 0.90


def test_brain_mask_of_skull_stripped_input_matches_ch2bet(moved_brain):
    assert dice(moved_brain["result"].brain_mask > 0, moved_brain["brain"]) >= 0.90


def test_recovered_transform_undoes_the_motion_within_2mm(moved_head, moved_brain, reference):
    for case in (moved_head, moved_brain):
        found = to_mni_points(case["result"].registration, case["landmarks"])
        assert np.linalg.norm(found - reference, axis=1).mean() <= 2.0


def test_native_to_model_space_and_back_keeps_the_brain(moved_head):
    from scipy import ndimage

    res = moved_head["result"]
    x, space_ctx = to_model_space(res.brain_mni, MNI_AFFINE, ModelSpaceConfig())
    back = from_model_space_native(x, NativeContext(space_ctx, res.registration))
    assert back.shape == moved_head["data"].shape and back.dtype == np.float32
    # Inside the brain stage A extracted (the only part model space holds), and inside the true brain
    # away from its edge (where brain masks legitimately differ by a voxel or two).
    interior = ndimage.binary_erosion(moved_head["brain"], ndimage.generate_binary_structure(3, 1), iterations=2)
    for inside in (res.brain_mask > 0, interior):
        assert np.corrcoef(back[inside], moved_head["data"][inside])[0, 1] >= 0.95


def test_quality_figures_are_recorded(moved_head):
    q = moved_head["result"].quality
    assert q["similarity"] >= 0.6 and 1300 <= q["brain_volume_ml"] <= 2300 and q["brain_inside_fov"] >= 0.97


# -- transforms on disk, cache ----------------------------------------------------------------------
def test_result_files_read_back_identically(moved_head, tmp_path):
    res = moved_head["result"]
    write_result(tmp_path, res)
    again = read_result(tmp_path)
    np.testing.assert_array_equal(again.brain_mask, res.brain_mask)
    np.testing.assert_allclose(again.brain_mni, res.brain_mni, atol=1e-4)
    pts = moved_head["landmarks"][:10]
    np.testing.assert_allclose(to_mni_points(again.registration, pts), to_mni_points(res.registration, pts), atol=1e-3)
    # The transform files are plain ITK composite transforms (what Slicer and ANTs read).
    assert isinstance(sitk.ReadTransform(str(tmp_path / "mni_to_native.h5")), sitk.Transform)


def test_transform_files_are_read_by_slicer_as_the_same_mapping(moved_head, tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core not installed")
    write_result(tmp_path, moved_head["result"])
    scene = slicer.vtkMRMLScene()
    node, storage = slicer.vtkMRMLTransformNode(), slicer.vtkMRMLTransformStorageNode()
    scene.AddNode(node), scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "native_to_mni.h5"))
    assert storage.ReadData(node)
    # Slicer keeps an ITK file as the node's "from parent" transform (RAS): native → MNI points here,
    # so an MNI-space result placed under this node overlays the scan.
    pts = moved_head["landmarks"][:12]
    in_slicer = np.array([node.GetTransformFromParent().TransformPoint(p.tolist()) for p in pts])
    np.testing.assert_allclose(in_slicer, to_mni_points(moved_head["result"].registration, pts), atol=0.3)


def test_cache_returns_stage_a_without_recomputing(moved_head, monkeypatch):
    import LDAELib.registration.native as native

    monkeypatch.setattr(native, "register_to_mni", lambda *a, **k: pytest.fail("stage A ran again"))
    result, key = run_stage_a(moved_head["data"], moved_head["affine"], cache=StageACache())
    assert key == moved_head["key"] == scan_key(moved_head["data"], moved_head["affine"], StageASettings())
    np.testing.assert_array_equal(result.brain_mask, moved_head["result"].brain_mask)


# -- refusals and the failure check ------------------------------------------------------------------
def test_refuses_2d_image(colin):
    with pytest.raises(LDAEError, match="2-D image"):
        register_to_mni(colin["head"][:, :, 90], colin["affine"])


def test_refuses_4d_series(colin):
    series = np.stack([colin["head"], colin["head"]], axis=-1)
    with pytest.raises(LDAEError, match="4-D series of 2 volumes"):
        register_to_mni(series, colin["affine"])


def test_refuses_far_too_small_volume():
    patch = nib.load(str(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"))  # 33×41×25 at 2 mm
    with pytest.raises(LDAEError, match="far too small to hold a whole brain"):
        check_scan(np.asarray(patch.dataobj, dtype=np.float32), patch.affine)


def test_refuses_slices_thicker_than_6mm(colin):
    thick = colin["head"][:, :, ::8]
    affine = colin["affine"] @ np.diag([1.0, 1.0, 8.0, 1.0])
    with pytest.raises(LDAEError, match="slices thicker than 6 mm"):
        register_to_mni(thick, affine)


def test_refuses_field_of_view_without_the_whole_brain(colin):
    top = colin["head"][:, :, 75:]  # z ≥ 4 mm: 106 mm of the head; the lower half of the brain is cut
    affine = colin["affine"].copy()
    affine[:3, 3] += affine[:3, 2] * 75
    with pytest.raises(LDAEError, match="does not contain the whole brain"):
        register_to_mni(top, affine, StageASettings(deformable=False))


def test_quality_check_stops_a_failed_registration(colin):
    # Inverted contrast (a T2-like image): mutual information still aligns it, but it is not a T1 brain.
    inverted = np.where(colin["head"] > 5, 260.0 - colin["head"], 0.0).astype(np.float32)
    with pytest.raises(LDAEError, match="failed the quality check: the registered brain correlates only"):
        register_to_mni(inverted, colin["affine"], StageASettings(deformable=False))


def test_quality_check_flags_implausible_brain_volume():
    s = StageASettings()
    assert quality_failure({"similarity": 0.9, "brain_volume_ml": 1500.0}, s) is None
    msg = quality_failure({"similarity": 0.9, "brain_volume_ml": 400.0}, s)
    assert msg.startswith("Brain extraction failed the quality check: the brain mask measures 400 mL")


# -- intensity ceiling --------------------------------------------------------------------------------
def test_clip_bright_voxels_sets_only_the_outliers_to_the_ceiling():
    rng = np.random.default_rng(0)
    brain = np.zeros((40, 40, 40), np.float32)
    brain[5:35, 5:35, 5:35] = rng.uniform(100.0, 200.0, (30, 30, 30))
    clean = brain.copy()
    assert clip_bright_voxels(clean, 1.1) == 0 and np.array_equal(clean, brain)  # a scan like the cohort's: unchanged
    spots = (np.array([6, 10, 20, 30]), np.array([6, 12, 25, 33]), np.array([7, 30, 9, 20]))
    brain[spots] = 5000.0
    top = 1.1 * np.percentile(brain[brain > 0], 99.9)
    untouched = brain.copy()
    assert clip_bright_voxels(untouched, None) == 0 and np.array_equal(untouched, brain)
    assert clip_bright_voxels(brain, 1.1) == 4
    np.testing.assert_allclose(brain[spots], top, rtol=1e-6)
    rest = np.ones(brain.shape, bool)
    rest[spots] = False
    np.testing.assert_array_equal(brain[rest], untouched[rest])


@pytest.mark.parametrize("bad", [0.5, float("nan"), "1.1"])
def test_intensity_ceiling_setting_is_checked(bad):
    with pytest.raises(LDAEError, match="intensity_ceiling must be a number"):
        StageASettings(intensity_ceiling=bad)
    assert StageASettings(intensity_ceiling=None).intensity_ceiling is None


def test_a_few_bright_voxels_do_not_darken_the_model_space_brain(colin):
    """Bright specks inside the brain (as residual fat or vessels at a real head's mask edge) would
    otherwise set stage B's min-max scale: the brain's median must stay where the clean head's is."""
    head = colin["head"].copy()
    rng = np.random.default_rng(1)
    inside = np.argwhere(colin["brain"])
    spots = tuple(inside[rng.choice(len(inside), 300, replace=False)].T)
    head[spots] = 4.0 * head.max()
    medians = {}
    for name, data, ceiling in (("clean", colin["head"], 1.1), ("specks", head, 1.1), ("no ceiling", head, None)):
        res = register_to_mni(data, colin["affine"], StageASettings(deformable=False, intensity_ceiling=ceiling))
        x, _ = to_model_space(res.brain_mni, MNI_AFFINE, ModelSpaceConfig())
        medians[name] = float(np.median(x[x > 0.05]))
        if name == "specks":
            assert res.quality["clipped_voxels"] >= 300
    # Specks left at the ceiling may still set the maximum (the clean head's own is a little below
    # it): within 10 %, the spread of the cohort's own maxima (1.04–1.11 × the 99.9th percentile).
    assert abs(medians["specks"] - medians["clean"]) <= 0.10 * medians["clean"]
    assert medians["no ceiling"] <= 0.5 * medians["clean"]  # what the ceiling prevents


# -- command line ---------------------------------------------------------------------------------------
def test_preprocess_writes_brain_mask_transforms_and_model_space(moved_head, tmp_path, capsys):
    from LDAELib.cli import main

    out = tmp_path / "pre"
    assert main(["preprocess", str(moved_head["path"]), str(out), "-q"]) == 0, capsys.readouterr().err
    for name in ("brain_mni.nii.gz", "brain_mask.nii.gz", "mni_to_native.h5", "native_to_mni.h5", "model_space.nii.gz", "stage_a.json"):
        assert (out / name).is_file(), name
    mask = nib.load(str(out / "brain_mask.nii.gz"))
    assert mask.shape == moved_head["data"].shape
    np.testing.assert_allclose(mask.affine, moved_head["affine"], atol=1e-4)
    # without --model, the model space is the shipped demo model's (3 mm, 64×80×64)
    assert nib.load(str(out / "model_space.nii.gz")).shape == (64, 80, 64)
    assert json.loads((out / "stage_a.json").read_text())["key"] == moved_head["key"]


def test_edit_on_a_raw_scan_writes_result_on_its_own_grid(moved_head, small_bundle, tmp_path, capsys):
    from LDAELib.cli import main

    out = tmp_path / "edited.nii.gz"
    args = ["edit", str(moved_head["path"]), str(out), "--model", str(small_bundle), "--direction", "disease",
            "--alpha", "1", "--steps", "1", "-q", "--model-space-output"]
    assert main(args) == 0, capsys.readouterr().err
    img = nib.load(str(out))
    assert img.shape == moved_head["data"].shape
    np.testing.assert_allclose(img.affine, moved_head["affine"], atol=1e-4)
    assert nib.load(str(tmp_path / "edited_model_space.nii.gz")).shape == (64, 80, 64)
    assert json.loads((tmp_path / "edited.json").read_text())["input_space"].startswith("raw")


def test_registered_flag_skips_stage_a(moved_head, small_bundle, tmp_path, monkeypatch, capsys):
    import LDAELib.registration.native as native
    from LDAELib.cli import main

    monkeypatch.setattr(native, "register_to_mni", lambda *a, **k: pytest.fail("stage A ran"))
    mni = tmp_path / "mni.nii.gz"
    nib.save(nib.Nifti1Image(moved_head["result"].brain_mni, MNI_AFFINE), str(mni))
    out = tmp_path / "codes.csv"
    assert main(["embed", str(mni), "--output", str(out), "--model", str(small_bundle), "-q", "--registered"]) == 0
    assert len(out.read_text().splitlines()) == 2
