"""LDAE: edit and interpolate brain T1 MRI with the Latent Diffusion Autoencoder, inside 3D Slicer.

Slicer's scripted-module template: module, parameter node, a Widget that only wires the panel
(Resources/UI/LDAE.ui), a Logic for the panel and the Python console, a Test. Behaviour lives in
``LDAELib.slicer`` (logic, session, slider, adapter, dependencies, panel_text, views). Nothing
heavy is imported here. Console: ``LDAE.LDAELogic().edit(volumeNode, "cn", -2.0)``.
"""

import logging
import os
import sys
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(os.path.dirname(MODULE_DIR), "LDAELib")) and os.path.dirname(MODULE_DIR) not in sys.path:
    sys.path.append(os.path.dirname(MODULE_DIR))  # a source checkout: LDAELib beside the module folder

from LDAELib.slicer import panel_text  # noqa: E402  (plain Python, light)
from LDAELib.slicer.logic import LDAELogicBase  # noqa: E402
from LDAELib.slicer.session import PanelRuns  # noqa: E402

SETTINGS_MODEL_FOLDER, SETTINGS_DEVICE, SETTINGS_KEEP_ENCODINGS = "LDAE/ModelFolder", "LDAE/Device", "LDAE/KeepEncodingsOnDisk"
SETTINGS_FAST_DECODE = "LDAE/FastDecoder"
CITATION = "G. Lozupone et al. Latent Diffusion Autoencoders (LDAE): toward efficient and meaningful unsupervised representation learning in medical imaging. arXiv:2504.08635, 2025."  # noqa: E501


class LDAE(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LDAE")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Neuroimaging")]
        self.parent.dependencies = []  # PyTorchUtils (PyTorch extension) is used on first run, not at load
        self.parent.contributors = ["LDAE for 3D Slicer contributors"]
        self.parent.helpText = _(
            "Edit a brain T1 MRI along an attribute (towards Alzheimer's disease or healthy) with a slider, interpolate between two "
            "timepoints of a patient and draw stochastic variations, with the Latent Diffusion Autoencoder. Results are new volumes "
            "beside the source, with their provenance. Research software, not for clinical use: a result is a model's output, "
            "not an acquired scan. See <a href=\"https://github.com/ldae-slicer/SlicerLDAE#readme\">the documentation</a>.")
        self.parent.acknowledgementText = _("Method: ") + CITATION + _(
            " The authors' pretrained weights come under their own terms (non-commercial research use).")


@parameterNodeWrapper
class LDAEParameterNode:
    """GUI state kept in the scene (docs/slicer.md, The panel). ``direction`` is set by code from the model's list."""

    inputVolume: vtkMRMLScalarVolumeNode
    inputRegistered: bool = True
    direction: str = "cn"
    alpha: Annotated[float, WithinRange(-5.0, 5.0)] = 2.0
    livePreview: bool = True
    showDifference: bool = True
    differenceFromReconstruction: bool = True
    steps: Annotated[int, WithinRange(1, 200)] = 10
    previewSteps: Annotated[int, WithinRange(1, 50)] = 3
    previewVisibleSlices: bool = True
    timepointA: vtkMRMLScalarVolumeNode
    timepointB: vtkMRMLScalarVolumeNode
    fractions: str = "0.25 0.5 0.75"
    useMonths: bool = False
    numberOfVariations: Annotated[int, WithinRange(2, 16)] = 4
    seed: Annotated[int, WithinRange(0, 999999)] = 0


class LDAEWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the logic and shows what runs (``LDAELib.slicer.session.PanelRuns``); a QTimer
    polls the worker, so runs never block the GUI. ``logic``: an LDAELogic to use (default: a new one)."""

    def __init__(self, parent=None, logic=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self._parameterNode = self._parameterNodeGuiTag = self._shownWorkerPid = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LDAE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.logic or LDAELogic()
        self.runs = PanelRuns(show=self.logic.showResults, report_error=slicer.util.errorDisplay, is_starting=self.logic.isStarting,
                              on_change=self.showRuns)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        ui.modelSourceComboBox.addItem(_("Demo model (bundled)"), "demo")
        ui.modelSourceComboBox.addItem(_("Folder: the authors' weights or an LDAE bundle"), "folder")
        if self.logic.demoModelPath() is None:
            ui.modelSourceComboBox.model().item(0).setEnabled(False)  # greyed out, still explained
            ui.modelSourceComboBox.setItemText(0, _("Demo model (not installed)"))
            ui.modelSourceComboBox.currentIndex = 1
        ui.deviceComboBox.addItems(["auto", "cpu", "cuda"])
        ui.deviceComboBox.currentText = qt.QSettings().value(SETTINGS_DEVICE, "auto")
        ui.modelPathLineEdit.currentPath = qt.QSettings().value(SETTINGS_MODEL_FOLDER, "")
        ui.modelPathLineEdit.settingKey = "LDAEModelFolder"
        ui.keepEncodingsCheckBox.checked = slicer.util.settingsValue(SETTINGS_KEEP_ENCODINGS, False, converter=slicer.util.toBool)
        ui.fastDecodeCheckBox.checked = slicer.util.settingsValue(SETTINGS_FAST_DECODE, False, converter=slicer.util.toBool)
        slider = ui.alphaSliderWidget
        for widget, signal, slot in (
                (ui.keepEncodingsCheckBox, "toggled(bool)", lambda on: qt.QSettings().setValue(SETTINGS_KEEP_ENCODINGS, bool(on))),
                (ui.fastDecodeCheckBox, "toggled(bool)", lambda on: qt.QSettings().setValue(SETTINGS_FAST_DECODE, bool(on))),
                (ui.modelSourceComboBox, "currentIndexChanged(int)", self.updateModelSection),
                (ui.loadModelButton, "clicked(bool)", self.onLoadModel),
                (ui.copyDiagnosticsButton, "clicked(bool)", self.onCopyDiagnostics),
                (ui.loadExampleScansButton, "clicked(bool)", self.onLoadExampleScans),
                (ui.showDifferenceCheckBox, "toggled(bool)", lambda on: setattr(ui.differenceFromReconstructionCheckBox, "enabled", on)),
                (ui.directionComboBox, "currentIndexChanged(int)", self.onDirectionChanged),
                # A drag is the inner slider's press .. release: ctkSliderWidget also emits
                # valueIsChanging for values set by code, keyboard or wheel (ctkSliderWidget.cpp).
                (slider.slider(), "sliderPressed()", self.runs.slider_pressed),
                (slider, "valueIsChanging(double)", lambda value: self._previewIn(self.runs.slider_moved(value))),
                (slider.slider(), "sliderReleased()", lambda: self._previewIn(self.runs.slider_released(slider.value, self._previewKey()))),
                (ui.applyEditButton, "clicked(bool)", self.onApplyEdit),
                (ui.reconstructButton, "clicked(bool)", self.onReconstruct),
                (ui.timepointASelector, "currentNodeChanged(vtkMRMLNode*)", self.updateDates),
                (ui.timepointBSelector, "currentNodeChanged(vtkMRMLNode*)", self.updateDates),
                (ui.applyInterpolationButton, "clicked(bool)", self.onApplyInterpolation),
                (ui.applyVariationsButton, "clicked(bool)", self.onApplyVariations),
                (ui.cancelButton, "clicked(bool)", self.onCancel)):
            widget.connect(signal, slot)
        self._pollTimer = _timer(100, self.onPoll)
        self._previewTimer = _timer(0, lambda: self.runs.start_due_preview(self.startPreview), singleShot=True)
        self.initializeParameterNode()
        self.onModelReady()  # an injected logic may have its model loaded already

    def cleanup(self) -> None:
        self.removeObservers()
        for timer in (t for t in (getattr(self, "_pollTimer", None), getattr(self, "_previewTimer", None)) if t is not None):
            timer.stop()
        if self.logic:
            self.logic.close()  # the worker ends; every file written for it is deleted

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._unbindParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self._previewTimer.stop()
        self.runs.drop_all()  # the worker stays warm; late results of the closed scene are ignored
        self.logic.forgetScans()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def _unbindParameterNode(self) -> None:
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def setParameterNode(self, inputParameterNode: Optional[LDAEParameterNode]) -> None:
        self._unbindParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.showRuns()
        p = self._parameterNode
        if p and p.inputVolume and p.livePreview and self.logic.modelInfo() and self.logic.isLoaded():  # prepare the slider
            self.runs.prepare((p.inputVolume.GetID(), p.steps, p.previewSteps, p.inputRegistered), lambda: self.logic.startEncode(
                p.inputVolume, p.steps, preview_steps=p.previewSteps, **self._options()), p.inputVolume.GetName())
            self._pollTimer.start()

    def showRuns(self) -> None:
        """Show the runs' state: buttons, progress, status, Cancel."""
        p, runs, hasModel = self._parameterNode, self.runs, self.logic.modelPath() is not None
        ui = self.ui
        ui.applyEditButton.enabled = ui.reconstructButton.enabled = ui.applyVariationsButton.enabled = bool(
            p and p.inputVolume and hasModel and not runs.busy)
        ui.applyInterpolationButton.enabled = bool(p and p.timepointA and p.timepointB and hasModel and not runs.busy)
        ui.applyEditButton.toolTip = (_("Choose a model first (Model section)") if not hasModel else _("Choose an input volume")
                                      if p and not p.inputVolume else _("Create the edited volume at full quality beside the source"))
        ui.progressBar.visible = runs.busy
        ui.progressBar.maximum, ui.progressBar.value = runs.progress[1], runs.progress[0]  # total 0: busy until the first step
        ui.cancelButton.enabled = runs.can_cancel
        ui.statusLabel.text = runs.status
        if runs.polling:
            self._pollTimer.start()

    # ------------------------------------------------------------------ model
    def updateModelSection(self, index=None) -> None:
        self.ui.modelPathLineEdit.enabled = self.ui.modelSourceComboBox.currentData == "folder"
        self.ui.diagnosticsLabel.text = self.logic.diagnosticsText()

    def onLoadModel(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load the model."), waitCursor=True):
            folder = None
            if self.ui.modelSourceComboBox.currentData == "folder":
                folder = self.ui.modelPathLineEdit.currentPath
                if not folder:
                    raise ValueError(_("Choose the folder that holds the model's files."))
                self.ui.modelPathLineEdit.addCurrentPathToHistory()
                qt.QSettings().setValue(SETTINGS_MODEL_FOLDER, folder)
            qt.QSettings().setValue(SETTINGS_DEVICE, self.ui.deviceComboBox.currentText)
            self.logic.setModel(folder, device=self.ui.deviceComboBox.currentText, fastDecode=self.ui.fastDecodeCheckBox.checked)
            self.runs.stopped("")
            self.ui.modelStatusLabel.text = _("Loading the model in the LDAE worker…")
            self.logic.startWorker(wait=False)
            self._pollTimer.start()  # onPoll shows the model once the worker reports it ready

    def onModelReady(self) -> None:
        info = self.logic.modelInfo() or {}
        self._shownWorkerPid = info.get("pid")
        if info.get("model"):
            self.ui.modelStatusLabel.text = panel_text.model_status(info["model"])
            self.ui.licenceLabel.text = panel_text.licence(info["model"])
            # what the model's card notes about each section's operations (empty: nothing to say)
            self.ui.editNoteLabel.text = panel_text.operation_note(info["model"], "edit", "reconstruct")
            self.ui.interpolationNoteLabel.text = panel_text.operation_note(info["model"], "interpolate")
            self.ui.variationsNoteLabel.text = panel_text.operation_note(info["model"], "vary")
        self.updateDirections()
        self.updateModelSection()
        self.onParameterNodeModified()

    def updateDirections(self) -> None:
        combo = self.ui.directionComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for text, name in panel_text.direction_items(self.logic.modelInfo()):
            combo.addItem(text, name)
        if self._parameterNode:
            combo.currentIndex = max(0, combo.findData(self._parameterNode.direction))
        combo.blockSignals(wasBlocked)
        self.onDirectionChanged()

    def onDirectionChanged(self, index=None) -> None:
        name = self.ui.directionComboBox.currentData
        self.ui.probePathLineEdit.enabled = not name
        if self._parameterNode and name:
            self._parameterNode.direction = name
        directions = ((self.logic.modelInfo() or {}).get("model") or {}).get("directions", [])
        self.ui.directionHintLabel.text = panel_text.direction_hint(next((d for d in directions if d["name"] == name), None), not name)

    def currentDirection(self):
        direction = self.ui.directionComboBox.currentData or self.ui.probePathLineEdit.currentPath
        if not direction:
            raise ValueError(_("Choose a probe file for the custom direction."))
        return direction

    def onCopyDiagnostics(self) -> None:
        qt.QApplication.clipboard().setText(self.logic.diagnosticsReport())
        slicer.util.showStatusMessage(_("LDAE diagnostics copied to the clipboard"), 3000)

    # ------------------------------------------------------------------ runs
    def _options(self) -> dict:
        return {"input_space": "mni" if self._parameterNode.inputRegistered else "raw"}

    def _difference(self):
        p = self._parameterNode
        return ("reconstruction" if p.differenceFromReconstruction else "source") if p.showDifference else False

    def _run(self, failure: str, start, what: str) -> None:
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            self.runs.run(start, what)

    def onApplyEdit(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the edit."), waitCursor=True):
            direction = self.currentDirection()
            self.runs.apply(p.alpha, self._previewKey(), lambda: self.logic.promotePreview(p.inputVolume, direction, p.alpha, p.steps),
                            lambda: self.logic.startEdit(p.inputVolume, direction, p.alpha, p.steps, difference=self._difference(), **self._options()))

    def onReconstruct(self) -> None:
        p = self._parameterNode
        self._run(_("Failed to start the reconstruction."), lambda: self.logic.startReconstruct(
            p.inputVolume, p.steps, difference=p.showDifference, **self._options()), _("Reconstructing"))

    def onApplyInterpolation(self) -> None:
        p = self._parameterNode
        self._run(_("Failed to start the interpolation."), lambda: self.logic.startInterpolate(
            p.timepointA, p.timepointB, steps=p.steps, **panel_text.interpolation_points(p.fractions, p.useMonths), **self._options()),
            _("Interpolating"))

    def onApplyVariations(self) -> None:
        p = self._parameterNode
        self._run(_("Failed to start the variations."), lambda: self.logic.startVary(
            p.inputVolume, p.numberOfVariations, p.seed, p.steps, **self._options()), _("Generating variations"))

    def onLoadExampleScans(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load the example scans."), waitCursor=True):
            first, second = self.logic.loadExampleScans()
            p = self._parameterNode
            p.inputVolume, p.timepointA, p.timepointB, p.useMonths, p.fractions = first, first, second, True, "3 6 9"
            slicer.util.setSliceViewerLayers(background=first, fit=True)
            self.updateDates()

    def updateDates(self, node=None) -> None:
        self.ui.datesLabel.text = panel_text.dates_text(self.ui.timepointASelector.currentNode(), self.ui.timepointBSelector.currentNode())

    # ------------------------------------------------------------------ previews while dragging (rules: LDAELib.slicer.slider)
    def _previewKey(self):
        p = self._parameterNode
        return (p.inputVolume.GetID() if p.inputVolume else None, self.ui.directionComboBox.currentData, p.steps, p.inputRegistered)

    def _previewIn(self, seconds) -> None:
        p = self._parameterNode
        if seconds is not None and p and p.livePreview and p.inputVolume and self.logic.isLoaded():
            self._previewTimer.start(int(1000 * seconds))

    def startPreview(self, request):
        """Quick (few steps, the slices on screen) while dragging; full quality after release."""
        p = self._parameterNode
        region = self.logic.visibleRegion() if (not request.full and p.previewVisibleSlices) else None
        job = self.logic.startPreview(p.inputVolume, self.currentDirection(), request.alpha, p.steps if request.full else p.previewSteps,
                                      region=region, difference=self._difference(), **self._options())
        self._pollTimer.start()
        return job

    # ------------------------------------------------------------------ polling and cancel
    def onPoll(self) -> None:
        try:
            self.logic.poll()
        except Exception as err:
            logging.exception("LDAE: polling the worker failed")
            self.ui.statusLabel.text = str(err)
        info = self.logic.modelInfo()
        if info and self.logic.isLoaded() and info.get("pid") != self._shownWorkerPid:
            self.onModelReady()
        if self.logic.startError():
            self.ui.modelStatusLabel.text = _("The model could not be loaded: ") + self.logic.startError()
        if not self.runs.polling:
            self._pollTimer.stop()

    def onCancel(self) -> None:
        self._previewTimer.stop()
        self.logic.cancel()  # ends the worker's whole process tree; nothing is added
        self.runs.stopped()


def _timer(interval: int, slot, singleShot: bool = False):
    timer = qt.QTimer()
    timer.setInterval(interval)
    timer.setSingleShot(singleShot)
    timer.connect("timeout()", slot)
    return timer


class LDAELogic(LDAELogicBase, ScriptedLoadableModuleLogic):
    """LDAE on volume nodes for the panel and scripts (its methods: ``LDAELib.slicer.logic``), plus what only
    the application knows: settings, its folders, first-use installs. User errors raise ``LDAEError``."""

    def __init__(self, modelPath=None, device=None, python=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        LDAELogicBase.__init__(self, modelPath, device or qt.QSettings().value(SETTINGS_DEVICE, "auto"), python)
        self._dependenciesChecked = False

    def getParameterNode(self):
        return LDAEParameterNode(super().getParameterNode())

    def lastModelFolder(self):
        return qt.QSettings().value(SETTINGS_MODEL_FOLDER, "") or None

    def temporaryFolder(self):
        app = getattr(slicer, "app", None)  # None in plain Python (slicer-core): the system's temporary folder
        return app.temporaryPath if app is not None else None

    def encodingCacheFolder(self):
        keep = slicer.util.settingsValue(SETTINGS_KEEP_ENCODINGS, False, converter=slicer.util.toBool)
        return os.path.join(slicer.app.cachePath, "LDAE", "encodings") if keep else None

    def ensureDependencies(self, interactive: bool = True) -> None:
        """torch through the PyTorch extension, the rest from Resources/requirements.txt, asked for on first use."""
        if not self._dependenciesChecked:
            from LDAELib.slicer.dependencies import ensure_in_slicer

            ensure_in_slicer(os.path.join(MODULE_DIR, "Resources", "requirements.txt"), interactive)
            self._dependenciesChecked = True

    def idle(self):
        app = getattr(slicer, "app", None)  # the application repaints while a script waits
        return app.processEvents if app is not None else None

    def diagnosticsReport(self) -> str:
        return LDAELogicBase.diagnosticsReport(self, slicer.app.applicationVersion)


class LDAETest(ScriptedLoadableModuleTest):
    """Edit and interpolation inside a running Slicer, with a tiny random model made by PythonSlicer
    (torch never enters the application) and synthetic scans. Each test closes its worker itself:
    Reload and Test calls runTest() directly, so unittest's cleanups would never run."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_LDAE_edit, self.test_LDAE_interpolate):
            self.setUp()
            test()

    def _logic(self):
        import tempfile

        from LDAELib.slicer.testing import make_tiny_bundle_with

        logic = LDAELogic(device="cpu")
        logic.setModel(make_tiny_bundle_with(logic.workerPython(), os.path.join(tempfile.mkdtemp(prefix="LDAE-test-"), "tiny")), "cpu")
        return logic

    def test_LDAE_edit(self):
        from LDAELib.slicer.nodes import ijk_to_ras
        from LDAELib.slicer.testing import add_synthetic_brain

        self.delayDisplay("Starting the edit test")
        logic, source = self._logic(), add_synthetic_brain(slicer.mrmlScene, "visit1", seed=0)
        try:
            before = slicer.util.arrayFromVolume(source).copy()
            edited = logic.edit(source, "cn", -2.0, steps=3)
        finally:
            logic.close()
        self.assertEqual(edited.GetName(), "visit1 LDAE cn α=-2.0")
        self.assertEqual(edited.GetImageData().GetDimensions(), source.GetImageData().GetDimensions())
        self.assertTrue((ijk_to_ras(source) == ijk_to_ras(edited)).all())
        self.assertEqual((edited.GetAttribute("LDAE.Direction"), edited.GetAttribute("LDAE.SourceNodeID")), ("cn", source.GetID()))
        self.assertTrue((before == slicer.util.arrayFromVolume(source)).all())
        self.delayDisplay("Edit test passed")

    def test_LDAE_interpolate(self):
        from LDAELib.slicer.testing import add_synthetic_brain

        self.delayDisplay("Starting the interpolation test")
        logic = self._logic()
        a, b = add_synthetic_brain(slicer.mrmlScene, "visit1", seed=0), add_synthetic_brain(slicer.mrmlScene, "visit2", seed=1, ventricles=1.5)
        try:
            frames = logic.interpolate(a, b, [0.25, 0.5, 0.75], steps=3)
        finally:
            logic.close()
        self.assertEqual([f.GetName() for f in frames], ["visit1→visit2 t=0.25", "visit1→visit2 t=0.50", "visit1→visit2 t=0.75"])
        self.assertEqual(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode").GetNumberOfDataNodes(), 5)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode"))
        self.delayDisplay("Interpolation test passed")
