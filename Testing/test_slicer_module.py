"""The real scripted module (LDAE/LDAE.py: Widget and Logic) driven as a user drives it.

The panel is built from LDAE.ui by the harness in ``Testing/slicer_harness`` (PySide6 offscreen with
PythonQt's conventions, CTK's slider rules, slicer-core's real MRML; see its docstring for what it
does and does not reproduce). Clicks, drags and key presses go through real Qt signals into the
module's own slots; runs go to the real worker process with a tiny random model.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="slicer-core (Slicer's MRML in plain Python) has wheels for CPython 3.11 only")
pytest.importorskip("PySide6.QtUiTools")
os.environ["QT_QPA_PLATFORM"] = "offscreen"

import slicer  # noqa: E402
from PySide6 import QtCore  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from LDAELib.slicer import nodes as mrml  # noqa: E402
from LDAELib.slicer.testing import synthetic_brain  # noqa: E402
from LDAELib.testing import make_tiny_bundle  # noqa: E402
from slicer_harness import SlicerHarness  # noqa: E402

TIMEOUT = 120  # seconds for anything that goes through the worker (two busy CPU cores)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def harness(tmp_path):
    h = SlicerHarness(tmp_path).install()
    yield h
    h.uninstall()


def add_volume(name: str, seed: int = 0, ventricles: float = 1.0):
    data, affine = synthetic_brain(seed=seed, ventricles=ventricles)
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(mrml.numpy_to_matrix(affine))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data.transpose(2, 1, 0)))  # I,J,K -> K,J,I
    node.CreateDefaultDisplayNodes()
    return node


def volumes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def load_model(harness, widget, bundle, device: str = "cpu") -> None:
    """Model section: Folder, the bundle, the device, Load model; wait for the worker."""
    ui = widget.ui
    ui.modelSourceComboBox.currentIndex = ui.modelSourceComboBox.findData("folder")
    ui.modelPathLineEdit.currentPath = str(bundle)
    ui.deviceComboBox.currentText = device
    ui.loadModelButton.click()


def wait_loaded(harness, widget) -> None:
    harness.wait_until(lambda: "tiny random test model" in widget.ui.modelStatusLabel.text, TIMEOUT, "the model to load")


def wait_idle(harness, widget) -> None:
    """Until no run is in progress (Cancel disabled) and the slider's preparation has ended."""
    harness.wait_until(lambda: not widget.ui.cancelButton.enabled and "Preparing" not in widget.ui.statusLabel.text,
                       TIMEOUT, "the runs to end")


def inner_slider(widget):
    return widget.ui.alphaSliderWidget.slider().qslider()


def drag(harness, widget, values) -> None:
    """A mouse drag on the alpha slider through the values (QSlider's own press / move / release path)."""
    s = inner_slider(widget)
    step = widget.ui.alphaSliderWidget.singleStep
    s.setSliderDown(True)
    for v in values:
        s.setSliderPosition(int(round(v / step)))
        harness.process_events(0.05)
    s.setSliderDown(False)


def previews(scene, source) -> list:
    return [n for n in volumes(scene) if n.GetAttribute("LDAE.Preview") == "true" and n.GetAttribute("LDAE.SourceNodeID") == source.GetID()
            and n.GetAttribute("LDAE.Operation") == "edit"]


# ---------------------------------------------------------------------- the panel's life
def test_setup_builds_the_panel_and_a_parameter_node_with_defaults(harness):
    widget = harness.open_module()
    nodes = [n for n in (slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
                         for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")))
             if n.GetAttribute("ModuleName") == "LDAE"]
    assert len(nodes) == 1
    assert nodes[0].GetParameter("alpha") == "2.0" and nodes[0].GetParameter("steps") == "10"
    assert widget.ui.alphaSliderWidget.value == 2.0 and widget.ui.stepsSpinBox.value == 10
    assert not widget.ui.applyEditButton.enabled  # no input volume yet
    assert harness.errors == []


def test_exit_disconnects_the_panel_and_enter_reconnects_it(harness):
    widget = harness.open_module()
    node = slicer.mrmlScene.GetSingletonNode("LDAE", "vtkMRMLScriptedModuleNode")
    harness.exit()
    widget.ui.stepsSpinBox.value = 25
    assert node.GetParameter("steps") == "10"
    harness.enter()
    assert widget.ui.stepsSpinBox.value == 10  # the node's value is shown again
    widget.ui.stepsSpinBox.value = 25
    assert node.GetParameter("steps") == "25"


def test_choosing_inputs_updates_the_parameter_node(harness):
    widget = harness.open_module()
    a, b = add_volume("visit1", 0), add_volume("visit2", 1, 1.4)
    node = slicer.mrmlScene.GetSingletonNode("LDAE", "vtkMRMLScriptedModuleNode")
    widget.ui.inputVolumeSelector.setCurrentNode(b)
    widget.ui.timepointASelector.setCurrentNode(a)
    widget.ui.timepointBSelector.setCurrentNode(b)
    widget.ui.inputRegisteredCheckBox.checked = False
    widget.ui.fractionsLineEdit.text = "0.5"
    widget.ui.numberOfVariationsSpinBox.value = 6
    assert node.GetNodeReferenceID("inputVolume") == b.GetID()
    assert (node.GetNodeReferenceID("timepointA"), node.GetNodeReferenceID("timepointB")) == (a.GetID(), b.GetID())
    assert node.GetParameter("inputRegistered") == "False"
    assert node.GetParameter("fractions") == "0.5" and node.GetParameter("numberOfVariations") == "6"


def test_load_example_scans_fills_the_inputs(harness):
    widget = harness.open_module()
    widget.ui.loadExampleScansButton.click()
    first, second = volumes(slicer.mrmlScene)[:2]
    assert first.GetAttribute("LDAE.Example") and second.GetAttribute("LDAE.Example")
    node = slicer.mrmlScene.GetSingletonNode("LDAE", "vtkMRMLScriptedModuleNode")
    assert node.GetNodeReferenceID("inputVolume") == first.GetID()
    assert node.GetParameter("useMonths") == "True" and node.GetParameter("fractions") == "3 6 9"
    assert "36.0 months apart" in widget.ui.datesLabel.text
    assert harness.errors == []


def test_the_example_button_describes_the_shipped_example_scans():
    import xml.etree.ElementTree as ET

    from LDAELib.resources import example_scans

    scans = example_scans()
    months = scans[-1].months - scans[0].months
    root = ET.parse(Path(__file__).resolve().parents[1] / "LDAE" / "Resources" / "UI" / "LDAE.ui").getroot()
    button = next(w for w in root.iter("widget") if w.get("name") == "loadExampleScansButton")
    tooltip = next(p.findtext("string") for p in button.findall("property") if p.get("name") == "toolTip")
    assert f"{months:g} months apart" in tooltip
    assert "phantom" not in tooltip.lower()


# ---------------------------------------------------------------------- the model
def test_load_model_polls_the_worker_and_shows_the_model(harness, tiny_bundle):
    widget = harness.open_module()
    widget.ui.inputVolumeSelector.setCurrentNode(add_volume("visit1"))
    load_model(harness, widget, tiny_bundle)
    assert "Loading" in widget.ui.modelStatusLabel.text  # returns at once; a timer polls the worker
    wait_loaded(harness, widget)
    assert "Licence:" in widget.ui.licenceLabel.text and "Random weights" in widget.ui.licenceLabel.text
    assert widget.ui.directionComboBox.findData("cn") >= 0
    assert widget.ui.diagnosticsLabel.text.startswith("torch ") and "cpu" in widget.ui.diagnosticsLabel.text
    assert widget.ui.applyEditButton.enabled and widget.ui.applyInterpolationButton.enabled is False
    assert harness.errors == []


def test_the_fast_decoder_is_one_checkbox_away_and_said_on_the_diagnostics_line(harness, tiny_bundle):
    """Off by default (results are the authors' float32 numbers); ticked, the worker runs its decoder
    in the fast precision and the panel says so."""
    widget = harness.open_module()
    assert widget.ui.fastDecodeCheckBox.checked is False
    load_model(harness, widget, tiny_bundle)
    wait_loaded(harness, widget)
    assert "--decode-dtype" not in widget.logic.adapter().client.command() and "float32" in widget.ui.diagnosticsLabel.text
    widget.ui.fastDecodeCheckBox.checked = True
    load_model(harness, widget, tiny_bundle)
    wait_loaded(harness, widget)
    command = widget.logic.adapter().client.command()
    assert command[command.index("--decode-dtype") + 1] == "auto"
    assert ("decoder (fast)" in widget.ui.diagnosticsLabel.text) == widget.logic.adapter().client.info["diagnostics"]["decode_dtype"].startswith("bfloat")
    assert harness.errors == []


def test_a_worker_that_dies_while_loading_shows_its_reason(harness, tiny_bundle, tmp_path, monkeypatch):
    """A CUDA error, a missing module or a native crash kills the worker before any protocol line."""
    site = tmp_path / "crash"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, sys
        sys.stderr.write("RuntimeError: CUDA error: no kernel image is available for execution on the device\\n")
        sys.stderr.flush()
        os._exit(3)
    """))
    monkeypatch.setenv("PYTHONPATH", str(site))
    widget = harness.open_module()
    load_model(harness, widget, tiny_bundle)
    harness.wait_until(lambda: "could not be loaded" in widget.ui.modelStatusLabel.text, 30, "the failure to be shown")
    assert "no kernel image is available" in widget.ui.modelStatusLabel.text
    assert "exit code 3" in widget.ui.modelStatusLabel.text


# ---------------------------------------------------------------------- the slider
def loaded_with_input(harness, tiny_bundle):
    widget = harness.open_module()
    source = add_volume("visit1")
    widget.ui.inputVolumeSelector.setCurrentNode(source)
    widget.ui.stepsSpinBox.value = 3
    widget.ui.previewStepsSpinBox.value = 2
    load_model(harness, widget, tiny_bundle)
    wait_loaded(harness, widget)
    wait_idle(harness, widget)
    return widget, source


def test_drag_previews_release_gives_full_quality_and_apply_keeps_it(harness, tiny_bundle):
    widget, source = loaded_with_input(harness, tiny_bundle)
    drag(harness, widget, [1.0, 0.0, -1.0])
    harness.wait_until(lambda: previews(slicer.mrmlScene, source) and previews(slicer.mrmlScene, source)[0].GetAttribute("LDAE.Steps") == "3"
                       and not widget.ui.cancelButton.enabled, TIMEOUT, "the full-quality preview after release")
    preview = previews(slicer.mrmlScene, source)[0]
    assert preview.GetAttribute("LDAE.Alpha") == "-1" and not preview.GetAttribute("LDAE.PreviewRegion")
    assert slicer.mrmlScene.GetSingletonNode("LDAE", "vtkMRMLScriptedModuleNode").GetParameter("alpha") == "-1.0"
    widget.ui.applyEditButton.click()
    harness.process_events(0.2)
    kept = [n for n in volumes(slicer.mrmlScene) if n.GetName() == "visit1 LDAE cn α=-1.0"]
    assert len(kept) == 1 and kept[0] is not source and kept[0].GetAttribute("LDAE.Preview") is None
    assert "Kept the full-quality preview" in widget.ui.statusLabel.text
    assert harness.errors == []


def _runs_started(widget) -> list:
    return widget.logic.adapter().client._pending  # requests the worker has not answered yet


def test_a_value_set_by_code_starts_no_run(harness, tiny_bundle):
    """ctkSliderWidget emits valueIsChanging for setValue too; that is not a drag."""
    widget, source = loaded_with_input(harness, tiny_bundle)
    before = node_ids(slicer.mrmlScene)
    slicer.mrmlScene.GetSingletonNode("LDAE", "vtkMRMLScriptedModuleNode").SetParameter("alpha", "-3.0")
    assert widget.ui.alphaSliderWidget.value == -3.0
    harness.process_events(1.0)
    wait_idle(harness, widget)
    assert node_ids(slicer.mrmlScene) == before and previews(slicer.mrmlScene, source) == []


def test_a_keyboard_step_starts_no_full_quality_run(harness, tiny_bundle):
    widget, source = loaded_with_input(harness, tiny_bundle)
    before = node_ids(slicer.mrmlScene)
    s = inner_slider(widget)
    s.setFocus()
    QTest.keyClick(s, QtCore.Qt.Key_Right)
    assert widget.ui.alphaSliderWidget.value == pytest.approx(2.1)
    harness.process_events(1.0)
    wait_idle(harness, widget)
    assert node_ids(slicer.mrmlScene) == before


# ---------------------------------------------------------------------- runs
def test_cancel_leaves_the_scene_unchanged(harness, tiny_bundle):
    widget, source = loaded_with_input(harness, tiny_bundle)
    widget.ui.stepsSpinBox.value = 200  # long enough to be cancelled in the middle
    wait_idle(harness, widget)
    before = node_ids(slicer.mrmlScene)
    widget.ui.applyEditButton.click()
    assert widget.ui.cancelButton.enabled and widget.ui.progressBar.visible
    harness.process_events(0.5)
    widget.ui.cancelButton.click()
    harness.process_events(0.5)
    assert node_ids(slicer.mrmlScene) == before
    assert "Cancelled" in widget.ui.statusLabel.text and not widget.ui.cancelButton.enabled
    assert harness.errors == []


def test_interpolation_creates_the_sequence_and_shows_the_toolbar(harness, tiny_bundle):
    widget = harness.open_module()
    a, b = add_volume("visit1", 0), add_volume("visit2", 1, 1.4)
    widget.ui.timepointASelector.setCurrentNode(a)
    widget.ui.timepointBSelector.setCurrentNode(b)
    widget.ui.fractionsLineEdit.text = "0.25 0.75"
    widget.ui.stepsSpinBox.value = 2
    widget.ui.livePreviewCheckBox.checked = False
    load_model(harness, widget, tiny_bundle)
    wait_loaded(harness, widget)
    widget.ui.applyInterpolationButton.click()
    harness.wait_until(lambda: slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode") is not None
                       and not widget.ui.cancelButton.enabled, TIMEOUT, "the interpolation")
    browser = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode")
    assert browser.GetMasterSequenceNode().GetNumberOfDataNodes() == 4  # a, two frames, b
    toolbar = slicer.modules.sequences.toolBar()
    assert toolbar.activeBrowserNode() is not None and toolbar.activeBrowserNode().GetID() == browser.GetID()
    assert toolbar.isVisible(), "the Sequences toolbar (hidden until shown) must be visible to press play"
    assert harness.errors == []


def test_closing_the_scene_during_a_run_stops_it_and_the_panel_carries_on(harness, tiny_bundle):
    widget, source = loaded_with_input(harness, tiny_bundle)
    widget.ui.stepsSpinBox.value = 200
    wait_idle(harness, widget)
    widget.ui.applyEditButton.click()
    harness.process_events(0.3)
    harness.close_scene()
    harness.process_events(0.5)
    assert volumes(slicer.mrmlScene) == []
    assert not widget.ui.cancelButton.enabled and harness.errors == []
    # a fresh parameter node is bound to the panel, and the next run works
    node = slicer.mrmlScene.GetSingletonNode("LDAE", "vtkMRMLScriptedModuleNode")
    assert node is not None and node.GetParameter("steps") == "10"
    again = add_volume("visit2", 1)
    widget.ui.inputVolumeSelector.setCurrentNode(again)
    widget.ui.stepsSpinBox.value = 2
    widget.ui.livePreviewCheckBox.checked = False
    widget.ui.applyEditButton.click()
    harness.wait_until(lambda: any(n.GetName().startswith("visit2 LDAE cn") for n in volumes(slicer.mrmlScene)), TIMEOUT, "an edit after the close")
    assert harness.errors == []


def test_no_scan_is_left_on_disk_after_the_module_closes(harness, tiny_bundle):
    widget, source = loaded_with_input(harness, tiny_bundle)
    widget.ui.livePreviewCheckBox.checked = False
    widget.ui.applyEditButton.click()
    harness.wait_until(lambda: any(n.GetName().startswith("visit1 LDAE cn") for n in volumes(slicer.mrmlScene)), TIMEOUT, "the edit")
    temp = Path(slicer.app.temporaryPath)
    assert list(temp.rglob("*.nii")), "the worker reads the scan from a file while the model is loaded"
    harness.close()  # the application exits: cleanup()
    assert list(temp.rglob("*.nii*")) == []


# ---------------------------------------------------------------------- first use: PyTorch
def test_loading_the_model_never_imports_torch_into_the_application(harness, tiny_bundle):
    widget = harness.open_module()
    load_model(harness, widget, tiny_bundle)
    wait_loaded(harness, widget)
    assert not harness.pytorch_utils.imported_torch, "PyTorchUtilsLogic.torchInstalled() imports torch into Slicer"


def test_an_old_torch_is_upgraded_through_the_pytorch_extension_before_the_worker_starts(harness, tiny_bundle, monkeypatch):
    from importlib import metadata

    from LDAELib.slicer import dependencies

    real = metadata.version

    def version(name):  # what pip's metadata says: torch 2.3.1 until the PyTorch extension upgrades it
        if name == "torch":
            return harness.pytorch_utils.installed_version
        return real(name)

    harness.pytorch_utils.installed_version = "2.3.1"
    monkeypatch.setattr(dependencies, "version", version)
    widget = harness.open_module()
    load_model(harness, widget, tiny_bundle)
    wait_loaded(harness, widget)
    assert [r["torchVersionRequirement"] for r in harness.pytorch_utils.install_requests] == [f">={dependencies.torch_minimum()}"]


# ---------------------------------------------------------------------- the module's own self-test
def test_the_self_test_keeps_the_python_path_and_leaves_no_worker_running(harness, tmp_path, monkeypatch):
    """Reload and Test runs LDAETest.runTest() directly (no unittest runner, so no addCleanup), with
    PythonSlicer found on the PATH; here a PythonSlicer that records its environment."""
    bin_dir, log = tmp_path / "bin", tmp_path / "pythonslicer.log"
    bin_dir.mkdir()
    fake = bin_dir / "PythonSlicer"
    fake.write_text(f'#!/bin/sh\necho "$$|$PYTHONPATH" >> "{log}"\nexec "{sys.executable}" "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site-of-another-extension"))
    harness.import_module()
    harness.module.runTest()
    runs = [line.split("|", 1) for line in log.read_text().splitlines()]
    assert len(runs) >= 3  # the tiny model, then one worker per test
    import LDAELib

    lib_root = str(Path(LDAELib.__file__).resolve().parents[1])
    for pid, path in runs:
        entries = path.split(os.pathsep)
        assert entries[0] == lib_root and str(tmp_path / "site-of-another-extension") in entries, path
        assert not Path(f"/proc/{pid}").exists() or "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text(), f"PythonSlicer {pid} still runs"


def test_the_widget_works_with_the_logic_it_is_given(harness, tiny_bundle):
    LDAE = harness.import_module()
    logic = LDAE.LDAELogic(modelPath=tiny_bundle, device="cpu")
    logic.startWorker(wait=True)
    source = add_volume("visit1")
    widget = harness.open_module(logic=logic)
    assert widget.logic is logic
    assert "tiny random test model" in widget.ui.modelStatusLabel.text and widget.ui.applyEditButton.enabled
    widget.ui.livePreviewCheckBox.checked = False
    widget.ui.stepsSpinBox.value = 2
    widget.ui.applyEditButton.click()
    harness.wait_until(lambda: any(n.GetName().startswith("visit1 LDAE cn") for n in volumes(slicer.mrmlScene)), TIMEOUT, "the edit")
    assert source.GetID() == slicer.mrmlScene.GetSingletonNode("LDAE", "vtkMRMLScriptedModuleNode").GetNodeReferenceID("inputVolume")
