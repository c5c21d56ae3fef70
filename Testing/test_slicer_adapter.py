"""The Slicer adapter on a real MRML scene (slicer-core): MRML nodes in, MRML nodes out.

Sources are read by Slicer's own NIfTI reader (its storage node), results come from the real
worker process running a tiny random model. What is checked is the plumbing a user relies on:
geometry, names, subject-hierarchy placement, provenance, sequences, that sources are never
modified, and that errors and cancels leave the scene as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer_core")
slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package found is not slicer-core", allow_module_level=True)
nib = pytest.importorskip("nibabel")
import vtk  # noqa: E402

from LDAELib.errors import Cancelled, LDAEError  # noqa: E402
from LDAELib.slicer import nodes as mrml  # noqa: E402
from LDAELib.slicer.adapter import LDAESlicerAdapter  # noqa: E402
from LDAELib.testing import make_tiny_bundle, phantom_brain  # noqa: E402

STEPS = 3


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def nifti_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("scans")
    files = {}
    for name, seed, vent in (("visit1", 0, 1.0), ("visit2", 1, 1.5)):
        data, affine = phantom_brain((45, 54, 45), 4.0, ventricle_scale=vent, seed=seed, intensity=80.0)
        files[name] = d / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(files[name]))
    return files


@pytest.fixture(scope="module")
def adapter(tiny_bundle, tmp_path_factory):
    a = LDAESlicerAdapter(tiny_bundle, device="cpu", threads=1, temp_dir=tmp_path_factory.mktemp("exchange"))
    a.start_worker(timeout=120)
    yield a
    a.close()


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    logics = [slicer.vtkSlicerSequencesLogic(), slicer.vtkSlicerColorLogic()]
    for logic in logics:
        logic.SetMRMLScene(s)
    s._ldae_logics = logics  # keep them alive with the scene
    return s


def load(scene, path, name):
    """Read a NIfTI through Slicer's own storage node, as File > Add Data does."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevel(80.0, 35.0)
    return node


def in_study(scene, *nodes):
    sh = mrml.sh_node(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    for node in nodes:
        sh.CreateItem(study, node)
    return study


def fingerprint(node) -> tuple:
    """Everything about a source that must not change."""
    arr = slicer.util.arrayFromVolume(node)
    attrs = {name: node.GetAttribute(name) for name in node.GetAttributeNames() or ()}
    return (hashlib.sha256(arr.tobytes()).hexdigest(), arr.shape, mrml.ijk_to_ras(node).tobytes(), node.GetName(), json.dumps(attrs, sort_keys=True),
            node.GetDisplayNode().GetWindow(), node.GetDisplayNode().GetLevel(), node.GetImageData().GetMTime())


def scene_state(scene) -> tuple:
    sh = mrml.sh_node(scene)  # (made on first use: before the node list is taken)
    ids = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    return tuple(ids), items.GetNumberOfIds()


def test_volume_exchange_keeps_axis_order_and_ras_geometry(scene, nifti_files, tmp_path):
    node = load(scene, nifti_files["visit1"], "visit1")
    ref = nib.load(str(nifti_files["visit1"]))
    path = mrml.write_nifti(node, tmp_path / "out.nii")
    data, affine = mrml.read_nifti_ijk(path)
    np.testing.assert_allclose(affine, mrml.ijk_to_ras(node))
    np.testing.assert_array_equal(data, slicer.util.arrayFromVolume(node).transpose(2, 1, 0))
    # the same RAS point has the same value in the original file and in ours (whatever Slicer's reader flipped)
    ref_data = ref.get_fdata()
    rng = np.random.default_rng(0)
    for ijk in rng.integers(0, np.array(ref.shape) - 1, size=(20, 3)):
        ras = ref.affine @ np.r_[ijk, 1.0]
        ours = np.rint(np.linalg.solve(affine, ras)[:3]).astype(int)
        assert data[tuple(ours)] == pytest.approx(ref_data[tuple(ijk)], abs=1e-4)
    # a linear parent transform moves the world geometry the model sees
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -3.0, 2.0]
    t.SetMatrixTransformToParent(mrml.numpy_to_matrix(shift))
    node.SetAndObserveTransformNodeID(t.GetID())
    np.testing.assert_allclose(mrml.world_affine(node), shift @ mrml.ijk_to_ras(node))


def test_edit_adds_a_volume_beside_the_source_with_its_geometry_and_provenance(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit1"], "visit1")
    study = in_study(scene, src)
    before = fingerprint(src)
    node = adapter.edit(src, "cn", 2.0, steps=STEPS)
    assert node.GetName() == "visit1 LDAE cn α=+2.0"
    assert node.IsA("vtkMRMLScalarVolumeNode") and node is not src
    np.testing.assert_array_equal(mrml.ijk_to_ras(node), mrml.ijk_to_ras(src))
    assert node.GetImageData().GetDimensions() == src.GetImageData().GetDimensions()
    assert np.isfinite(slicer.util.arrayFromVolume(node)).all()
    assert mrml.sh_node(scene).GetItemParent(mrml.sh_node(scene).GetItemByDataNode(node)) == study
    d, s = node.GetDisplayNode(), src.GetDisplayNode()
    assert (d.GetWindow(), d.GetLevel(), d.GetAutoWindowLevel()) == (s.GetWindow(), s.GetLevel(), 0)
    info = adapter.info["model"]
    assert node.GetAttribute("LDAE.ModelId") == info["id"] and node.GetAttribute("LDAE.ModelHash") == info["hash"]
    assert node.GetAttribute("LDAE.ModelName") == "tiny random test model"
    assert node.GetAttribute("LDAE.Direction") == "cn" and node.GetAttribute("LDAE.Alpha") == "+2"
    assert node.GetAttribute("LDAE.Steps") == str(STEPS) and node.GetAttribute("LDAE.Seed") == "deterministic"
    assert node.GetAttribute("LDAE.SourceNodeID") == src.GetID() and node.GetAttribute("LDAE.Synthetic") == "true"
    prov = json.loads(node.GetAttribute("LDAE.Provenance"))
    assert prov["operation"] == "edit" and prov["alpha"] == 2.0 and prov["model"]["id"] == info["id"]
    assert "not an acquired scan" in node.GetDescription()
    assert fingerprint(src) == before


def test_several_alphas_and_a_difference_map(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit1"], "visit1")
    before = fingerprint(src)
    job = adapter.start_edit(src, "cn", [-2.0, 1.5], steps=STEPS, difference=True)
    made = job.wait()
    names = [n.GetName() for n in made]
    assert names == ["visit1 LDAE cn α=-2.0", "visit1 LDAE cn α=-2.0 difference", "visit1 LDAE cn α=+1.5", "visit1 LDAE cn α=+1.5 difference"]
    result, diff = made[0], made[1]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(diff), slicer.util.arrayFromVolume(result) - slicer.util.arrayFromVolume(src), atol=1e-4)
    assert diff.GetAttribute("LDAE.ResultNodeID") == result.GetID()
    display = diff.GetDisplayNode()
    assert display.GetLevel() == 0.0 and display.GetWindow() > 0
    assert display.GetColorNode() is not None and display.GetColorNode().GetID() != src.GetDisplayNode().GetColorNodeID()
    np.testing.assert_array_equal(mrml.ijk_to_ras(diff), mrml.ijk_to_ras(src))
    assert fingerprint(src) == before


def test_a_difference_from_the_reconstruction_shows_the_edit_alone(adapter, scene, nifti_files):
    """difference="reconstruction": result − the scan's DDIM reconstruction at the same steps, which
    the worker samples once per scan and step count; the reference itself adds no node."""
    src = load(scene, nifti_files["visit2"], "visit2")
    before = fingerprint(src)
    n_before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    first = adapter.start_edit(src, "cn", [-2.0, 1.5], steps=STEPS, difference="reconstruction")
    made = first.wait()
    assert [n.GetName() for n in made] == ["visit2 LDAE cn α=-2.0", "visit2 LDAE cn α=-2.0 difference",
                                           "visit2 LDAE cn α=+1.5", "visit2 LDAE cn α=+1.5 difference"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_before + 4
    recon = adapter.start_reconstruct(src, STEPS).wait()[0]
    for result, diff in (made[:2], made[2:]):
        assert diff.GetAttribute("LDAE.DifferenceReference") == "reconstruction"
        want = slicer.util.arrayFromVolume(result) - slicer.util.arrayFromVolume(recon)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(diff), want, atol=1e-4)
        assert not np.allclose(slicer.util.arrayFromVolume(diff), slicer.util.arrayFromVolume(result) - slicer.util.arrayFromVolume(src), atol=1e-3)
    # the reconstruction is sampled once: a second edit samples only its own alpha
    second = adapter.start_edit(src, "cn", [0.5], steps=STEPS, difference="reconstruction")
    (result, diff) = second.wait()
    assert first.result["calls"]["sampling"] == 2 * second.result["calls"]["sampling"] > 0
    np.testing.assert_allclose(slicer.util.arrayFromVolume(diff),
                               slicer.util.arrayFromVolume(result) - slicer.util.arrayFromVolume(recon), atol=1e-4)
    # a plain difference map still says it is against the source
    (_, plain) = adapter.start_edit(src, "cn", [0.5], steps=STEPS, difference=True).wait()
    assert plain.GetAttribute("LDAE.DifferenceReference") == "source"
    with pytest.raises(LDAEError, match="difference must be"):
        adapter.start_edit(src, "cn", [0.5], steps=STEPS, difference="average")
    assert fingerprint(src) == before


def test_interpolation_gives_frames_and_a_playable_sequence(adapter, scene, nifti_files):
    a = load(scene, nifti_files["visit1"], "visit1")
    b = load(scene, nifti_files["visit2"], "visit2")
    study = in_study(scene, a, b)
    before = fingerprint(a), fingerprint(b)
    frames = adapter.interpolate(a, b, [0.25, 0.5, 0.75], steps=STEPS)
    assert [f.GetName() for f in frames] == ["visit1→visit2 t=0.25", "visit1→visit2 t=0.50", "visit1→visit2 t=0.75"]
    sh = mrml.sh_node(scene)
    for f in frames:
        np.testing.assert_array_equal(mrml.ijk_to_ras(f), mrml.ijk_to_ras(a))
        assert sh.GetItemParent(sh.GetItemByDataNode(f)) == study
        assert f.GetAttribute("LDAE.SourceNodeID") == a.GetID() and f.GetAttribute("LDAE.SourceNodeID2") == b.GetID()
    assert [f.GetAttribute("LDAE.Fraction") for f in frames] == ["0.25", "0.5", "0.75"]
    seq = scene.GetFirstNodeByClass("vtkMRMLSequenceNode")
    assert seq.GetName() == "visit1→visit2 LDAE interpolation" and seq.GetIndexName() == "t"
    assert seq.GetNumberOfDataNodes() == 5  # visit1, three frames, visit2
    assert [seq.GetNthIndexValue(i) for i in range(5)] == ["0", "0.25", "0.5", "0.75", "1"]
    middle = seq.GetDataNodeAtValue("0.5")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(middle), slicer.util.arrayFromVolume(frames[1]))
    browser = scene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
    assert browser.GetMasterSequenceNode() is seq and browser.GetPlaybackLooped()
    assert browser.GetProxyNode(seq) is not None
    assert sh.GetItemParent(sh.GetItemByDataNode(seq)) == study
    assert (fingerprint(a), fingerprint(b)) == before


def test_interpolation_in_months_uses_the_scans_dates(adapter, scene, nifti_files):
    a = load(scene, nifti_files["visit1"], "visit1")
    b = load(scene, nifti_files["visit2"], "visit2")
    with pytest.raises(LDAEError, match="dates are unknown"):
        adapter.interpolate(a, b, months=[6], steps=STEPS)
    a.SetAttribute("DICOM.SeriesDate", "20200101")
    mrml.set_acquisition_date(b, "2021-01-01")
    assert mrml.months_between(a, b) == pytest.approx(366 / 30.4375)
    (frame,) = adapter.interpolate(a, b, months=[6], steps=STEPS)
    assert float(frame.GetAttribute("LDAE.Fraction")) == pytest.approx(6 / (366 / 30.4375))
    assert frame.GetAttribute("LDAE.Months") == "6"
    seq = scene.GetFirstNodeByClass("vtkMRMLSequenceNode")
    assert (seq.GetIndexName(), seq.GetIndexUnit()) == ("time", "months")
    assert seq.GetNumberOfDataNodes() == 3 and seq.GetNthIndexValue(1) == "6"


def test_variations_come_with_a_spread_map(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit1"], "visit1")
    made = adapter.vary(src, n=3, seed=7, steps=STEPS)
    assert [n.GetName() for n in made] == [f"visit1 LDAE variation {i} seed=7" for i in (1, 2, 3)] + ["visit1 LDAE spread of 3 (seed 7)"]
    stack = np.stack([slicer.util.arrayFromVolume(n) for n in made[:3]])
    np.testing.assert_allclose(slicer.util.arrayFromVolume(made[3]), stack.std(0), rtol=1e-4, atol=1e-4)
    assert made[3].GetAttribute("LDAE.Operation") == "spread" and made[0].GetAttribute("LDAE.Seed") == "7"


def test_preview_updates_one_node_and_reuses_the_encoding(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit2"], "visit2")
    first = adapter.start_edit(src, "cn", [1.0], steps=2, preview=True)
    (p1,) = first.wait()
    second = adapter.start_edit(src, "cn", [2.5], steps=2, preview=True)
    (p2,) = second.wait()
    assert p1 is p2 and p1.GetName() == "visit2 LDAE preview" and p2.GetAttribute("LDAE.Alpha") == "+2.5"
    assert second.result["cache"] == {"encoded": True, "inverted": True}
    assert adapter.promote_preview(src, "cn", 1.0, 2) is None  # not the alpha of the preview
    n_before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    adapter.remove_previews(src)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_before - 1


def test_apply_keeps_a_full_quality_preview_without_recomputing(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit1"], "visit1")
    (preview, diff) = adapter.start_edit(src, "cn", [-1.5], steps=STEPS, preview=True, difference=True).wait()
    assert diff.GetName() == "visit1 LDAE preview difference" and diff.GetAttribute("LDAE.Preview") == "true"
    kept = adapter.promote_preview(src, "cn", -1.5, STEPS)
    assert kept == [preview, diff]
    assert preview.GetName() == "visit1 LDAE cn α=-1.5" and preview.GetAttribute("LDAE.Preview") is None
    assert diff.GetName() == "visit1 LDAE cn α=-1.5 difference"
    (again,) = adapter.start_edit(src, "cn", [0.5], steps=2, preview=True).wait()
    assert again is not preview  # the kept result is never overwritten by the next preview


def test_an_error_leaves_the_scene_as_it_was(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit1"], "visit1")
    state, before = scene_state(scene), fingerprint(src)
    with pytest.raises(LDAEError, match="unknown direction 'age'"):
        adapter.edit(src, "age", 1.0, steps=STEPS)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(LDAEError, match="not a scalar volume"):
        adapter.edit(label, "cn", 1.0)
    scene.RemoveNode(label)
    assert scene_state(scene) == state and fingerprint(src) == before
    # the source disappears while the worker runs: the result is dropped, nothing is added
    job = adapter.start_edit(src, "cn", [1.0], steps=STEPS)
    scene.RemoveNode(src)
    state = scene_state(scene)
    with pytest.raises(LDAEError, match="removed from the scene"):
        job.wait()
    assert scene_state(scene) == state


def test_cancel_leaves_the_scene_as_it_was_and_the_next_run_works(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit1"], "visit1")
    state, before = scene_state(scene), fingerprint(src)
    pid = adapter.client.proc.pid
    job = adapter.start_edit(src, "cn", [1.0], steps=400, difference=True)
    while job.progress is None:
        job.poll()
    job.cancel()  # kills the worker's process tree
    assert job.state == "cancelled" and adapter.client.proc.poll() is not None
    with pytest.raises(Cancelled):
        job.wait()
    assert scene_state(scene) == state and fingerprint(src) == before
    node = adapter.edit(src, "cn", 1.0, steps=2)  # a new worker starts by itself
    assert adapter.client.proc.pid != pid and node.GetName() == "visit1 LDAE cn α=+1.0"
    # a soft cancel stops the run and keeps the worker warm
    state, pid = scene_state(scene), adapter.client.proc.pid
    job = adapter.start_edit(src, "cn", [1.0], steps=400)
    while job.progress is None:
        job.poll()
    job.cancel(kill=False)
    with pytest.raises(Cancelled):
        job.wait()
    assert scene_state(scene) == state and adapter.client.proc.pid == pid and adapter.client.running


def test_example_scans_are_two_dated_visits_in_one_study(adapter, scene):
    first, second = mrml.add_example_scans(scene)
    sh = mrml.sh_node(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(first)) == sh.GetItemParent(sh.GetItemByDataNode(second))
    assert mrml.months_between(first, second) == pytest.approx(1096 / 30.4375)  # month 0 and month 36
    assert first.GetImageData().GetDimensions() == (91, 109, 91)
    assert "sub-0058" in first.GetAttribute("LDAE.Example")
    (frame,) = adapter.interpolate(first, second, months=[18], steps=2)
    assert frame.GetName() == "example_visit1→example_visit2 t=0.50"


# ------------------------------------------------------------------ preview of the slices on screen
def _slice_node(scene, name, normal_axis, offset):
    node = slicer.vtkMRMLSliceNode()
    node.SetName(name)
    node.SetLayoutName(name)
    scene.AddNode(node)
    m = np.eye(4)
    if normal_axis == 0:  # sagittal: slice x → A, y → S, normal R
        m[:3, :3] = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    elif normal_axis == 1:  # coronal: x → R, y → S, normal A
        m[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    m[normal_axis, 3] = offset
    node.GetSliceToRAS().DeepCopy(mrml.numpy_to_matrix(m))
    return node


def test_visible_region_reads_the_slice_views(scene):
    red, yellow, green = _slice_node(scene, "Red", 2, 12.5), _slice_node(scene, "Yellow", 0, -3.0), _slice_node(scene, "Green", 1, 7.0)
    assert mrml.visible_region([red]) == {"point": [0.0, 0.0, 12.5], "planes": ["axial"]}
    assert mrml.visible_region([red, yellow, green]) == {"point": [-3.0, 7.0, 12.5], "planes": ["axial", "sagittal", "coronal"]}
    oblique = _slice_node(scene, "Oblique", 2, 0.0)
    m = mrml.matrix_to_numpy(oblique.GetSliceToRAS())
    c, s_ = np.cos(0.3), np.sin(0.3)
    m[:3, :3] = m[:3, :3] @ np.array([[1, 0, 0], [0, c, -s_], [0, s_, c]])
    oblique.GetSliceToRAS().DeepCopy(mrml.numpy_to_matrix(m))
    assert mrml.visible_region([oblique]) is None


def test_a_preview_of_the_slices_on_screen_edits_them_and_keeps_the_source_elsewhere(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit1"], "visit1")
    before = fingerprint(src)
    ijk_to_ras = mrml.world_affine(src)
    k = 20  # the axial slice on screen, in source voxels
    s_mm = float((ijk_to_ras @ [0, 0, k, 1])[2])
    (full,) = adapter.start_edit(src, "cn", [2.0], steps=STEPS, preview=True).wait()
    full_data = slicer.util.arrayFromVolume(full).copy()  # K, J, I
    job = adapter.start_edit(src, "cn", [2.0], steps=STEPS, preview=True, difference=True,
                             region={"point": [0.0, 0.0, s_mm], "planes": ["axial"]})
    (node, diff) = job.wait()
    assert node is full  # the one preview node, refilled
    assert job.result["cache"] == {"encoded": True, "inverted": True}
    (slab,) = job.result["region"]
    assert slab["plane"] == "axial" and slab["axis"] == 2 and slab["stop"] - slab["start"] <= 5
    assert node.GetAttribute("LDAE.PreviewRegion").startswith("axial (model slices")
    assert json.loads(node.GetAttribute("LDAE.Provenance"))["preview"]["slabs"] == [slab]
    got, source = slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(src)
    # the slice on screen is edited, and close to the whole-volume preview of the same edit
    assert not np.allclose(got[k], source[k])
    rng = float(full_data[k].max() - full_data[k].min())
    assert np.abs(got[k] - full_data[k]).mean() < 0.05 * rng
    # slices far from it are the source's own voxels, and the difference map is zero there
    for far in (0, 5, source.shape[0] - 1):
        np.testing.assert_array_equal(got[far], source[far])
        assert np.abs(slicer.util.arrayFromVolume(diff)[far]).max() == 0
    assert adapter.promote_preview(src, "cn", 2.0, STEPS) is None  # a partial preview is never kept as a result
    assert fingerprint(src) == before
    # against the reconstruction: inside the slab the map is the preview − the reconstruction's slab
    # (the same slab decode of alpha 0), and still zero where the preview shows the source
    job = adapter.start_edit(src, "cn", [2.0], steps=STEPS, preview=True, difference="reconstruction",
                             region={"point": [0.0, 0.0, s_mm], "planes": ["axial"]})
    (node, rdiff) = job.wait()
    assert rdiff.GetAttribute("LDAE.DifferenceReference") == "reconstruction"
    rd = slicer.util.arrayFromVolume(rdiff)
    for far in (0, 5, source.shape[0] - 1):
        assert np.abs(rd[far]).max() == 0
    assert np.abs(rd[k]).max() > 0 and not np.allclose(rd[k], slicer.util.arrayFromVolume(node)[k] - source[k], atol=1e-3)
    reference = slicer.util.arrayFromVolume(node)[k] - rd[k]
    (node, rdiff) = adapter.start_edit(src, "cn", [1.0], steps=STEPS, preview=True, difference="reconstruction",
                                       region={"point": [0.0, 0.0, s_mm], "planes": ["axial"]}).wait()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(rdiff)[k], slicer.util.arrayFromVolume(node)[k] - reference, atol=1e-4)
    assert fingerprint(src) == before
    # a whole-volume preview into the same node drops the region mark
    (again,) = adapter.start_edit(src, "cn", [2.0], steps=STEPS, preview=True).wait()
    assert again is node and node.GetAttribute("LDAE.PreviewRegion") is None


def test_a_region_outside_the_field_of_view_is_one_clear_error(adapter, scene, nifti_files):
    src = load(scene, nifti_files["visit1"], "visit1")
    n_before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(LDAEError, match="do not cross"):
        adapter.start_edit(src, "cn", [1.0], steps=STEPS, preview=True, region={"point": [0.0, 0.0, 900.0], "planes": ["axial"]}).wait()
    with pytest.raises(LDAEError, match="preview=True"):
        adapter.start_edit(src, "cn", [1.0], steps=STEPS, region={"point": [0.0, 0.0, 0.0], "planes": ["axial"]})
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_before


def test_a_model_whose_card_warns_about_variations_says_so_on_the_console_and_on_the_nodes(tiny_bundle, scene, nifti_files, tmp_path, caplog):
    import logging
    import shutil

    from LDAELib.weights.bundle import annotate_bundle

    b = annotate_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"), limitations={"vary": "no brain from noise"})
    a = LDAESlicerAdapter(b, device="cpu", threads=1, temp_dir=tmp_path / "exchange")
    try:
        a.start_worker(timeout=120)
        assert a.model_info()["limitations"] == {"vary": "no brain from noise"}  # what the panel shows under the button
        src = load(scene, nifti_files["visit1"], "visit1")
        with caplog.at_level(logging.WARNING, logger="LDAELib.slicer.adapter"):
            made = a.vary(src, n=2, seed=1, steps=2)
        assert "no brain from noise" in caplog.text
        assert all(json.loads(n.GetAttribute("LDAE.Provenance"))["model_limitation"] == "no brain from noise" for n in made)
    finally:
        a.close()


def test_a_note_on_edits_is_logged_for_kept_edits_and_reconstructions_not_for_previews(tiny_bundle, scene, nifti_files, tmp_path, caplog):
    import logging
    import shutil

    from LDAELib.slicer import panel_text
    from LDAELib.weights.bundle import annotate_bundle

    b = annotate_bundle(shutil.copytree(tiny_bundle, tmp_path / "b"), limitations={"edit": "age goes the wrong way", "interpolate": "blurry"})
    a = LDAESlicerAdapter(b, device="cpu", threads=1, temp_dir=tmp_path / "exchange")
    try:
        a.start_worker(timeout=120)
        model = a.model_info()
        # what the panel puts under each section's buttons
        assert panel_text.operation_note(model, "edit", "reconstruct") == "Note from the model's card: age goes the wrong way"
        assert panel_text.operation_note(model, "interpolate") == "Note from the model's card: blurry"
        assert panel_text.operation_note(model, "vary") == ""
        src = load(scene, nifti_files["visit1"], "visit1")
        direction = model["directions"][0]["name"]
        with caplog.at_level(logging.WARNING, logger="LDAELib.slicer.adapter"):
            a.start_edit(src, direction, 1.0, steps=2, preview=True).wait()
            assert "age goes the wrong way" not in caplog.text
            a.edit(src, direction, 1.0, steps=2)
        assert caplog.text.count("age goes the wrong way") == 1
    finally:
        a.close()


def _scan_files(folder) -> list:
    return sorted(p.name for p in Path(folder).rglob("*.nii*"))


def test_the_scans_written_for_the_worker_are_deleted_on_close(tiny_bundle, scene, nifti_files, tmp_path):
    """The copies of patient scans live in a private folder (under the application's temporary
    folder) only while the worker may read them."""
    a = LDAESlicerAdapter(tiny_bundle, device="cpu", threads=1, temp_root=tmp_path)
    try:
        src = load(scene, nifti_files["visit1"], "visit1")
        a.edit(src, "cn", 1.0, steps=2)
        assert a.temp_dir.parent == tmp_path and oct(a.temp_dir.stat().st_mode & 0o777) == "0o700"
        assert [n for n in _scan_files(a.temp_dir) if n.startswith("source_")]
    finally:
        a.close()
    assert not a.temp_dir.exists() and _scan_files(tmp_path) == []


def test_a_kill_or_a_scene_close_deletes_the_scans_written_for_the_worker(tiny_bundle, scene, nifti_files, tmp_path):
    a = LDAESlicerAdapter(tiny_bundle, device="cpu", threads=1, temp_root=tmp_path)
    try:
        src = load(scene, nifti_files["visit1"], "visit1")
        job = a.start_edit(src, "cn", [1.0], steps=400)
        assert _scan_files(a.temp_dir)
        job.cancel()  # kill
        assert not [n for n in _scan_files(a.temp_dir) if n.startswith("source_")]
        a.edit(src, "cn", 1.0, steps=2)  # written again for the new worker
        a.forget_sources()  # what the module does when the scene closes
        assert not [n for n in _scan_files(a.temp_dir) if n.startswith("source_")]
    finally:
        a.close()


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for the interpreter")
def test_a_worker_that_dies_while_loading_leaves_its_reason(tiny_bundle, tmp_path):
    python = tmp_path / "dying-python"
    python.write_text('#!/bin/sh\necho "ModuleNotFoundError: No module named monai" >&2\nexit 1\n')
    python.chmod(0o755)
    a = LDAESlicerAdapter(tiny_bundle, python=str(python), device="cpu", temp_root=tmp_path)
    try:
        a.start_worker(wait=False)
        deadline = time.monotonic() + 30
        while a.starting and time.monotonic() < deadline:
            a.poll(0.1)
        assert not a.starting
        assert "exit code 1" in a.start_error and "No module named monai" in a.start_error
    finally:
        a.close()
