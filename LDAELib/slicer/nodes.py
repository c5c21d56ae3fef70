"""MRML helpers: volume nodes to and from (array, affine), result nodes beside their source,
provenance, colour overlays, sequences, subject hierarchy and acquisition dates.

Only MRML classes are used (``slicer`` as slicer-core provides it, or the application's), so
everything here runs in plain Python on a ``vtkMRMLScene``. The scene is always the source node's
own (``node.GetScene()``), never a global.

Axis order and coordinates, once for all: ``slicer.util.arrayFromVolume`` gives K,J,I; arrays
here, on disk and in LDAELib are nibabel's I,J,K. A node's IJK-to-RAS matrix maps voxel indices
(I,J,K) to RAS millimetres, which is exactly what a NIfTI affine is in nibabel (RAS+); Slicer's
readers and writers do the LPS <-> RAS flip of ITK files themselves. A node under a linear
parent transform lives in world RAS = parent-to-world @ IJK-to-RAS; that world affine is what
the model sees, while results keep the source's own IJK-to-RAS and parent transform.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import slicer
import vtk

from ..errors import LDAEError

ATTRIBUTE_PREFIX = "LDAE."
DIFFERENCE_COLOUR_IDS = ("vtkMRMLColorTableNodeFileDivergingBlueRed.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
SPREAD_COLOUR_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeIron", "vtkMRMLPETProceduralColorNodePET-Heat")
DATE_ATTRIBUTES = ("LDAE.Date", "DICOM.AcquisitionDate", "DICOM.SeriesDate", "DICOM.ContentDate", "DICOM.StudyDate")


# ---------------------------------------------------------------------- geometry and arrays
def matrix_to_numpy(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=np.float64)


def numpy_to_matrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(a[i, j]))
    return m


def ijk_to_ras(node) -> np.ndarray:
    """The node's own 4x4 IJK-to-RAS matrix (voxel index -> RAS mm)."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_numpy(m)


def world_affine(node) -> np.ndarray:
    """IJK -> world RAS, through a linear parent transform if the node has one."""
    affine = ijk_to_ras(node)
    parent = node.GetParentTransformNode()
    if parent is None:
        return affine
    if not parent.IsTransformToWorldLinear():
        raise LDAEError(f"'{node.GetName()}' is under a non-linear transform; harden it first (Data module: Harden transform)")
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return matrix_to_numpy(m) @ affine


def visible_region(slice_nodes) -> dict | None:
    """The slices on screen as a preview region for the worker: {"point": [R, A, S], "planes": […]}.

    ``slice_nodes``: the vtkMRMLSliceNode of each view shown. A view whose plane is normal to an
    RAS axis (axial, coronal, sagittal, whatever its name) gives that plane and its offset; oblique
    views are left out. None when no view qualifies."""
    point, planes = [0.0, 0.0, 0.0], []
    for node in slice_nodes:
        if node is None:
            continue
        m = matrix_to_numpy(node.GetSliceToRAS())
        normal = m[:3, 2] / (np.linalg.norm(m[:3, 2]) or 1.0)
        k = int(np.argmax(np.abs(normal)))
        plane = ("sagittal", "coronal", "axial")[k]
        if abs(normal[k]) < 0.9999 or plane in planes:
            continue
        point[k] = float(m[k, 3])
        planes.append(plane)
    return {"point": point, "planes": planes} if planes else None


def check_scalar_volume(node, what: str = "input volume") -> None:
    if node is None:
        raise LDAEError(f"choose an {what}")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise LDAEError(f"'{node.GetName()}' is not a scalar volume; choose a T1-weighted MRI volume as the {what}")
    image = node.GetImageData()
    if image is None:
        raise LDAEError(f"'{node.GetName()}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise LDAEError(f"'{node.GetName()}' has {image.GetNumberOfScalarComponents()} components; LDAE needs a single-channel (grey-level) MRI volume")
    dims = image.GetDimensions()
    if min(dims) < 8:
        raise LDAEError(f"'{node.GetName()}' is {dims[0]}×{dims[1]}×{dims[2]} voxels; LDAE needs a 3-D brain volume")


def array_ijk(node) -> np.ndarray:
    """A float32 copy of the voxels in I,J,K order (``arrayFromVolume`` is K,J,I)."""
    return np.ascontiguousarray(slicer.util.arrayFromVolume(node).transpose(2, 1, 0), dtype=np.float32)


def write_nifti(node, path: str | Path) -> Path:
    """Write the node's voxels with its world affine as a NIfTI for the worker (nibabel, RAS+)."""
    import nibabel as nib

    path = Path(path)
    affine = world_affine(node)
    img = nib.Nifti1Image(array_ijk(node), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    tmp = path.with_name(f".{path.name}.part.nii")
    nib.save(img, str(tmp))
    tmp.replace(path)
    return path


def read_nifti_ijk(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(float32 I,J,K array, 4x4 affine) of a worker output."""
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)


# ---------------------------------------------------------------------- subject hierarchy
def sh_node(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def sh_item(node) -> int:
    """The node's subject-hierarchy item, made at the scene's top when the node has none yet
    (the application does that by itself; plain MRML does not)."""
    sh = sh_node(node.GetScene())
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def place_beside(source, node) -> int:
    """Put ``node`` in the subject-hierarchy folder (study, patient…) that holds ``source``."""
    sh = sh_node(source.GetScene())
    parent = sh.GetItemParent(sh_item(source))
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)
    return item


# ---------------------------------------------------------------------- dates
def _parse_date(text: str) -> _dt.date | None:
    text = (text or "").strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%d.%m.%Y"):
        try:
            return _dt.datetime.strptime(text[: len(_dt.date(2000, 1, 1).strftime(fmt))], fmt).date()
        except ValueError:
            continue
    return None


def acquisition_date(node) -> _dt.date | None:
    """The scan's date from the node's attributes or its subject-hierarchy item and its parents
    (DICOM series, acquisition or study date), or ``LDAE.Date`` set by the user; None if unknown."""
    for name in DATE_ATTRIBUTES:
        d = _parse_date(node.GetAttribute(name) or "")
        if d:
            return d
    sh = sh_node(node.GetScene())
    item = sh.GetItemByDataNode(node)
    while item and item != sh.GetSceneItemID():
        for name in DATE_ATTRIBUTES:
            d = _parse_date(sh.GetItemAttribute(item, name))
            if d:
                return d
        item = sh.GetItemParent(item)
    return None


def set_acquisition_date(node, date: str | _dt.date) -> None:
    """Record a scan's date (YYYY-MM-DD) so interpolation can be asked for in months."""
    d = date if isinstance(date, _dt.date) else _parse_date(str(date))
    if d is None:
        raise LDAEError(f"'{date}' is not a date; write it as YYYY-MM-DD")
    node.SetAttribute("LDAE.Date", d.isoformat())


def months_between(a, b) -> float | None:
    """Months from scan a to scan b (30.4375-day months), or None when a date is unknown."""
    da, db = acquisition_date(a), acquisition_date(b)
    if da is None or db is None:
        return None
    return (db - da).days / 30.4375


def months_to_fractions(months, span_months: float) -> list[float]:
    if not span_months:
        raise LDAEError("the two timepoints have the same date; give fractions instead of months")
    return [float(m) / span_months for m in months]


# ---------------------------------------------------------------------- results
def set_provenance(node, provenance: dict, **attributes) -> None:
    """Provenance as node attributes: ``LDAE.<Name>`` for each item and the whole record as JSON."""
    node.SetAttribute("LDAE.Synthetic", "true")
    for key, value in attributes.items():
        if value is None:
            continue
        node.SetAttribute(ATTRIBUTE_PREFIX + key, value if isinstance(value, str) else json.dumps(value))
    node.SetAttribute("LDAE.Provenance", json.dumps(provenance, sort_keys=True, default=str))
    node.SetDescription("Synthetic image generated by LDAE (a model's output, not an acquired scan). " + json.dumps(
        {k: provenance.get(k) for k in ("operation", "direction", "steps")}, default=str))


def new_volume_like(source, data_ijk: np.ndarray, name: str, copy_display: bool = True):
    """A new scalar volume node with ``data_ijk`` on the source's grid: the source's IJK-to-RAS,
    parent transform, window/level and colour, in the source's subject-hierarchy folder."""
    scene = source.GetScene()
    shape = tuple(source.GetImageData().GetDimensions())
    if tuple(data_ijk.shape) != shape:
        raise LDAEError(f"the result has shape {tuple(data_ijk.shape)}, the source {shape}; the worker and the scene disagree")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras(source)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(np.asarray(data_ijk, dtype=np.float32).transpose(2, 1, 0)))
    node.SetAndObserveTransformNodeID(source.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    src_display, display = source.GetDisplayNode(), node.GetDisplayNode()
    if copy_display and src_display is not None and display is not None:
        display.SetAndObserveColorNodeID(src_display.GetColorNodeID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(src_display.GetWindow(), src_display.GetLevel())
        display.SetInterpolate(src_display.GetInterpolate())
    place_beside(source, node)
    return node


def colour_node(scene, preferred_ids, fallback_name: str, points):
    """The first of ``preferred_ids`` present in the scene, else our procedural colour map
    (made once per scene) with ``points`` = [(x in 0..1, r, g, b)]."""
    for cid in preferred_ids:
        node = scene.GetNodeByID(cid)
        if node is not None:
            return node
    existing = scene.GetFirstNodeByName(fallback_name)
    if existing is not None and existing.IsA("vtkMRMLProceduralColorNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLProceduralColorNode", fallback_name)
    tf = node.GetColorTransferFunction()
    for x, r, g, b in points:
        tf.AddRGBPoint(x, r, g, b)
    return node


def add_difference_map(source, result, name: str | None = None, reference_ijk: np.ndarray | None = None):
    """result − source (or − ``reference_ijk``, an array on the source's grid) as a volume with a
    diverging colour map centred on 0 (blue: darker, red: brighter), on the source's grid; meant as
    a semi-transparent foreground over the result."""
    base = array_ijk(source) if reference_ijk is None else np.asarray(reference_ijk, dtype=np.float32)
    if base.shape != array_ijk(result).shape:
        raise ValueError(f"the difference's reference has shape {base.shape}, the result {array_ijk(result).shape}")
    diff = array_ijk(result) - base
    node = new_volume_like(source, diff, name or f"{result.GetName()} difference", copy_display=False)
    cmap = colour_node(source.GetScene(), DIFFERENCE_COLOUR_IDS, "LDAE difference (blue-white-red)",
                       [(0.0, 0.0, 0.2, 1.0), (0.5, 1.0, 1.0, 1.0), (1.0, 1.0, 0.1, 0.0)])
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(cmap.GetID())
    bound = float(np.percentile(np.abs(diff), 99.5)) or float(np.abs(diff).max()) or 1.0
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(2 * bound, 0.0)
    return node


def add_spread_map(source, data_ijk: np.ndarray, name: str):
    """Voxel-wise spread (std) of variations with a heat colour map from 0."""
    node = new_volume_like(source, data_ijk, name, copy_display=False)
    cmap = colour_node(source.GetScene(), SPREAD_COLOUR_IDS, "LDAE spread (black-red-yellow)",
                       [(0.0, 0.0, 0.0, 0.0), (0.5, 0.9, 0.1, 0.0), (1.0, 1.0, 1.0, 0.3)])
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(cmap.GetID())
    top = float(np.percentile(data_ijk, 99.5)) or float(data_ijk.max()) or 1.0
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(top, top / 2)
    return node


# ---------------------------------------------------------------------- sequences
def sequences_logic(scene, logic=None):
    """The Sequences module logic: the one given, the application's, or (plain MRML) a new one
    attached to the scene (it registers the sequence browser node class)."""
    if logic is not None:
        return logic
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "sequences"):
        return modules.sequences.logic()
    logic = slicer.vtkSlicerSequencesLogic()
    logic.SetMRMLScene(scene)
    return logic


def add_sequence(frames, values, name: str, index_name: str = "t", index_unit: str = "", logic=None, place_with=None):
    """A sequence of copies of ``frames`` at index ``values`` and a looping browser for playback.

    The frame nodes themselves stay in the scene (they are the separate volumes); the sequence
    holds deep copies. Returns (sequence node, browser node); the browser's proxy node is what
    slice views show.
    """
    scene = frames[0].GetScene()
    logic = sequences_logic(scene, logic)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name))
    seq.SetIndexName(index_name)
    seq.SetIndexUnit(index_unit)
    seq.SetIndexType(seq.NumericIndex)
    for node, value in zip(frames, values):
        seq.SetDataNodeAtValue(node, f"{value:g}")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", scene.GenerateUniqueName(f"{name} browser"))
    browser.AddSynchronizedSequenceNodeID(seq.GetID())
    browser.SetPlaybackRateFps(2.0)
    browser.SetPlaybackLooped(True)
    logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(seq)
    if place_with is not None:
        for node in (seq, browser, proxy):
            if node is not None:
                place_beside(place_with, node)
        if proxy is not None and place_with.GetDisplayNode() is not None and proxy.GetDisplayNode() is not None:
            src = place_with.GetDisplayNode()
            proxy.GetDisplayNode().SetAutoWindowLevel(False)
            proxy.GetDisplayNode().SetWindowLevel(src.GetWindow(), src.GetLevel())
    return seq, browser


# ---------------------------------------------------------------------- example data
def add_example_scans(scene) -> tuple:
    """The two shipped example visits of one synthetic subject (``LDAELib.resources.example_scans``:
    stage-A output on the MNI 2 mm grid, month 0 and month 36, held out from the demo model's
    training), dated accordingly, in a patient/study folder. For trying the module without data."""
    import datetime

    import nibabel as nib

    from ..resources import example_scans

    sh = sh_node(scene)
    scans = example_scans()
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), f"LDAE example {scans[0].subject}")
    study = sh.CreateStudyItem(patient, "Synthetic visits")
    made = []
    start = datetime.date(2020, 1, 15)
    for i, scan in enumerate(scans):
        img = nib.load(str(scan.path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"example_visit{i + 1}"))
        node.SetIJKToRASMatrix(numpy_to_matrix(img.affine))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data.transpose(2, 1, 0)))  # I,J,K -> K,J,I
        node.CreateDefaultDisplayNodes()
        node.SetAttribute("LDAE.Date", (start + datetime.timedelta(days=round(scan.months * 30.4375))).isoformat())
        node.SetAttribute("LDAE.Example", f"synthetic subject {scan.subject} visit {scan.visit} (ldae cohort), not a real scan")
        item = sh.GetItemByDataNode(node) or sh.CreateItem(study, node)
        sh.SetItemParent(item, study)
        made.append(node)
    return tuple(made)


# ---------------------------------------------------------------------- views
def show_in_slice_views(scene, background, foreground=None, opacity: float = 0.5) -> None:
    """Show volumes in every slice view through the slice composite nodes (no Qt needed)."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        if foreground is not None:
            composite.SetForegroundOpacity(opacity)


class NewNodes:
    """Collects the nodes an operation adds; if the block fails, every one of them is removed,
    so a failed or cancelled run leaves the scene as it was."""

    def __init__(self, scene) -> None:
        self.scene, self.nodes = scene, []

    def add(self, node):
        self.nodes.append(node)
        return node

    def __enter__(self) -> "NewNodes":
        self._before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        # Everything added since the start (display and storage nodes, sequence proxies included).
        added = [self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes())]
        sh = sh_node(self.scene)
        for node in reversed(added):
            if node is not None and node.GetID() not in self._before and node is not sh:
                item = sh.GetItemByDataNode(node)
                if item:
                    sh.RemoveItem(item, False, False)
                self.scene.RemoveNode(node)
