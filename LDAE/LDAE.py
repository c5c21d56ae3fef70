"""LDAE: edit and interpolate brain T1 MRI with the Latent Diffusion Autoencoder, inside 3D Slicer.

The shape of Slicer's scripted-module template: module metadata, a parameter node, a Widget bound
to Resources/UI/LDAE.ui, a Logic usable from the Python console, a Test. Behaviour lives in
``LDAELib.slicer`` (adapter: MRML nodes in and out; worker: the process that runs the model).
Nothing heavy is imported here at import time: no torch, no numpy work, no installs.

Console use::

    import LDAE
    logic = LDAE.LDAELogic()                                  # the demo model, or logic.setModel(folder)
    edited = logic.edit(volumeNode, "cn", -2.0)               # waits; returns the new volume node
    frames = logic.interpolate(visit1, visit2, [0.25, 0.5, 0.75])
"""

import logging
import os
import shutil
import sys
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

    def translate(context, text):
        return text

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(MODULE_DIR) not in sys.path:  # LDAELib sits beside the module folder
    sys.path.append(os.path.dirname(MODULE_DIR))

SETTINGS_MODEL_FOLDER = "LDAE/ModelFolder"
SETTINGS_DEVICE = "LDAE/Device"
SETTINGS_KEEP_ENCODINGS = "LDAE/KeepEncodingsOnDisk"
CUSTOM_PROBE = "Custom probe file…"
CITATION = ("G. Lozupone et al. Latent Diffusion Autoencoders (LDAE): toward efficient and meaningful unsupervised "
            "representation learning in medical imaging. arXiv:2504.08635, 2025.")


#
# LDAE
#


class LDAE(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LDAE")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Neuroimaging")]
        self.parent.dependencies = []  # PyTorchUtils (PyTorch extension) is used on first run, not at load
        self.parent.contributors = ["LDAE for 3D Slicer contributors"]
        self.parent.helpText = _(
            "Edit a brain T1 MRI along an attribute (towards Alzheimer's disease or healthy, older or younger) with a slider, "
            "interpolate between two timepoints of a patient, and draw stochastic variations, with the Latent Diffusion "
            "Autoencoder. Results are new volumes beside the source, with their provenance. Research software, not for "
            "clinical use: every result is a model's output, not an acquired scan. "
            "See <a href=\"https://github.com/ldae-slicer/SlicerLDAE#readme\">the documentation</a>."
        )
        self.parent.acknowledgementText = _("Method: ") + CITATION + _(
            " The authors' pretrained weights come under their own terms (non-commercial research use).")


#
# Parameters
#


@parameterNodeWrapper
class LDAEParameterNode:
    """GUI state kept in the scene (saved and restored with it).

    inputVolume: the scan to edit. alpha: edit strength (its sign picks the side of the direction).
    steps / previewSteps: DDIM steps for full results and for the quick preview while dragging.
    previewVisibleSlices: while dragging, decode only the slices shown in the slice views.
    showDifference / differenceFromReconstruction: the colour overlay of an edit, against the scan's
    reconstruction (the edit alone) or against the source.
    timepointA/B, fractions, useMonths: interpolation. numberOfVariations, seed: variations.
    """

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


#
# LDAEWidget
#


class LDAEWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the panel to the logic. Runs never block the GUI: a QTimer polls the worker."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._previewJob = None
        self._warmJob = None  # the background encode that prepares the slider
        self._warmedKey = None
        self._pendingPreviewAlpha = None
        self._dragging = False
        self._shownWorkerPid = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LDAE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LDAELogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Model
        self.ui.modelSourceComboBox.addItem(_("Demo model (bundled)"), "demo")
        self.ui.modelSourceComboBox.addItem(_("Folder: the authors' weights or an LDAE bundle"), "folder")
        if self.logic.demoModelPath() is None:
            try:
                self.ui.modelSourceComboBox.model().item(0).setEnabled(False)  # greyed out, still explained
            except AttributeError:
                pass
            self.ui.modelSourceComboBox.setItemText(0, _("Demo model (not installed yet)"))
            self.ui.modelSourceComboBox.currentIndex = 1
        for device in ("auto", "cpu", "cuda"):
            self.ui.deviceComboBox.addItem(device)
        self.ui.deviceComboBox.currentText = qt.QSettings().value(SETTINGS_DEVICE, "auto")
        self.ui.modelPathLineEdit.currentPath = qt.QSettings().value(SETTINGS_MODEL_FOLDER, "")
        self.ui.modelPathLineEdit.settingKey = "LDAEModelFolder"
        self.ui.keepEncodingsCheckBox.checked = _settingBool(SETTINGS_KEEP_ENCODINGS)
        self.ui.keepEncodingsCheckBox.connect("toggled(bool)", self.onKeepEncodingsToggled)
        self.ui.modelSourceComboBox.connect("currentIndexChanged(int)", self.updateModelSection)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.copyDiagnosticsButton.connect("clicked(bool)", self.onCopyDiagnostics)

        self.ui.loadExampleScansButton.connect("clicked(bool)", self.onLoadExampleScans)
        self.ui.showDifferenceCheckBox.connect("toggled(bool)", lambda on: setattr(self.ui.differenceFromReconstructionCheckBox, "enabled", on))
        # Edit
        self.ui.directionComboBox.connect("currentIndexChanged(int)", self.onDirectionChanged)
        self.ui.alphaSliderWidget.connect("valueIsChanging(double)", self.onAlphaChanging)
        self.ui.alphaSliderWidget.connect("valueChanged(double)", self.onAlphaReleased)
        self.ui.applyEditButton.connect("clicked(bool)", self.onApplyEdit)
        self.ui.reconstructButton.connect("clicked(bool)", self.onReconstruct)
        # Interpolation and variations
        self.ui.timepointASelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateDates)
        self.ui.timepointBSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateDates)
        self.ui.applyInterpolationButton.connect("clicked(bool)", self.onApplyInterpolation)
        self.ui.applyVariationsButton.connect("clicked(bool)", self.onApplyVariations)
        # Running
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.visible = False

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPoll)
        self._previewTimer = qt.QTimer()
        self._previewTimer.setSingleShot(True)
        self._previewTimer.setInterval(150)  # debounce: one preview per pause of the slider
        self._previewTimer.connect("timeout()", self.startPreview)

        self.initializeParameterNode()
        self.updateModelSection()
        self.updateDirections()
        self.updateDiagnostics()

    def cleanup(self) -> None:
        self.removeObservers()
        self._pollTimer.stop()
        if self.logic:
            self.logic.close()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.prepareSlider)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None or self._previewJob is not None:
            self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[LDAEParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.prepareSlider)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.prepareSlider)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None
        hasModel = self.logic.modelPath() is not None
        self.ui.applyEditButton.enabled = bool(p and p.inputVolume and hasModel and not running)
        self.ui.reconstructButton.enabled = self.ui.applyEditButton.enabled
        self.ui.applyVariationsButton.enabled = self.ui.applyEditButton.enabled
        self.ui.applyInterpolationButton.enabled = bool(p and p.timepointA and p.timepointB and hasModel and not running)
        if not hasModel:
            self.ui.applyEditButton.toolTip = _("Choose a model first (Model section)")
        elif p and not p.inputVolume:
            self.ui.applyEditButton.toolTip = _("Choose an input volume")
        else:
            self.ui.applyEditButton.toolTip = _("Create the edited volume at full quality beside the source")

    # ------------------------------------------------------------------ model
    def updateModelSection(self, index=None) -> None:
        useFolder = self.ui.modelSourceComboBox.currentData == "folder"
        self.ui.modelPathLineEdit.enabled = useFolder
        if self.logic.demoModelPath() is None and not self.logic.isLoaded():
            self.ui.modelStatusLabel.text = _(
                "The demo model is not installed in this version yet. Choose a folder with the authors' weights "
                "(autoencoderkl.pth, encoder.pth, decoder.pth and the disease probe) or an LDAE bundle, then Load model.")

    def onKeepEncodingsToggled(self, checked: bool) -> None:
        qt.QSettings().setValue(SETTINGS_KEEP_ENCODINGS, bool(checked))
        if self.logic.isLoaded():
            self.ui.statusLabel.text = _("Keeping encodings on disk: applies when the model is loaded next (Load model).")

    def onLoadModel(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load the model."), waitCursor=True):
            if self.ui.modelSourceComboBox.currentData == "folder":
                folder = self.ui.modelPathLineEdit.currentPath
                if not folder:
                    raise ValueError(_("Choose the folder that holds the model's files."))
                self.ui.modelPathLineEdit.addCurrentPathToHistory()
                qt.QSettings().setValue(SETTINGS_MODEL_FOLDER, folder)
            else:
                folder = None
            qt.QSettings().setValue(SETTINGS_DEVICE, self.ui.deviceComboBox.currentText)
            self.logic.setModel(folder, device=self.ui.deviceComboBox.currentText)
            self.ui.modelStatusLabel.text = _("Loading the model in the LDAE worker…")
            self.logic.startWorker(wait=False)
            self._pollTimer.start()  # onPoll shows the model once the worker reports it ready
        self._checkCanApply()

    def onModelReady(self) -> None:
        info = self.logic.modelInfo()
        if not info:
            return
        self._shownWorkerPid = info.get("pid")
        model = info["model"]
        warn = _(" — RANDOM WEIGHTS: outputs are noise") if model.get("random") else ""
        self.ui.modelStatusLabel.text = f"{model['name']} · id {model['id']} · {model['parameters_m']} M parameters{warn}"
        licence = model.get("licence") or _("see the model card")
        self.ui.licenceLabel.text = _("Licence: ") + licence[:600]
        # Empty unless the model's bundle notes that it does variations badly. Only the text changes:
        # the collapsible section shows and hides its children itself.
        note = (model.get("limitations") or {}).get("vary", "")
        self.ui.variationsNoteLabel.text = _("Note from the model's card: ") + note if note else ""
        self.updateDirections()
        self.updateDiagnostics()
        self.prepareSlider()

    def prepareSlider(self, caller=None, event=None) -> None:
        """Encode the input scan in the background as soon as it is chosen and the model is loaded
        (the inversions for full results and previews, and what the slab preview needs), so the
        first slider move only samples and decodes. Once per scan and settings."""
        p = self._parameterNode
        if not (p and p.inputVolume and p.livePreview and self.logic.isLoaded() and self.logic.modelInfo()):
            return
        if self._job is not None or (self._warmJob is not None and not self._warmJob.done):
            return
        key = (p.inputVolume.GetID(), p.steps, p.previewSteps, p.inputRegistered)
        if key == self._warmedKey:
            return
        self._warmedKey = key
        try:
            job = self.logic.adapter().start_encode(p.inputVolume, p.steps, preview_steps=p.previewSteps, **self._options())
        except Exception as err:  # preparing is an optimisation: it never shows a dialog
            self.ui.statusLabel.text = _("Could not prepare the slider: ") + str(err)
            return
        self._warmJob = job
        self.ui.statusLabel.text = _("Preparing the slider for {0}…").format(p.inputVolume.GetName())
        job.on_done = self.onSliderPrepared
        self._pollTimer.start()

    def onSliderPrepared(self, job) -> None:
        if job.state == "done":
            self.ui.statusLabel.text = _("Ready: drag the slider for a preview ({0:.0f} s to prepare).").format(job.result.get("seconds", 0))
        elif job.state == "error":
            self._warmedKey = None
            self.ui.statusLabel.text = _("Could not prepare the slider: ") + str(job.error)
            return
        self.prepareSlider()  # the scan or the steps may have changed while this one ran

    def updateDirections(self) -> None:
        combo = self.ui.directionComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        info = self.logic.modelInfo()
        directions = (info or {}).get("model", {}).get("directions", [])
        for d in directions:
            combo.addItem(d["description"], d["name"])
        if info is None:  # before loading: the direction every LDAE model of the authors has
            combo.addItem(_("cn (towards CN / AD; the model's own list appears once it is loaded)"), "cn")
        combo.addItem(CUSTOM_PROBE, "")
        if self._parameterNode:
            index = combo.findData(self._parameterNode.direction)
            combo.currentIndex = index if index >= 0 else 0
        combo.blockSignals(wasBlocked)
        self.onDirectionChanged()

    def onDirectionChanged(self, index=None) -> None:
        name = self.ui.directionComboBox.currentData
        custom = not name
        self.ui.probePathLineEdit.enabled = custom
        if self._parameterNode and name:
            self._parameterNode.direction = name
        info = self.logic.modelInfo()
        d = next((d for d in (info or {}).get("model", {}).get("directions", []) if d["name"] == name), None)
        if d and (d.get("positive") or d.get("negative")):
            self.ui.directionHintLabel.text = f"−α: {_('towards')} {d.get('negative') or '?'}   ·   +α: {_('towards')} {d.get('positive') or '?'}"
        elif custom:
            self.ui.directionHintLabel.text = _("A probe file (.safetensors from 'ldae fit-probe', or the authors' probe layout)")
        else:
            self.ui.directionHintLabel.text = ""

    def currentDirection(self):
        name = self.ui.directionComboBox.currentData
        if name:
            return name
        path = self.ui.probePathLineEdit.currentPath
        if not path:
            raise ValueError(_("Choose a probe file for the custom direction."))
        return path

    def updateDiagnostics(self) -> None:
        self.ui.diagnosticsLabel.text = self.logic.diagnosticsText()

    def onCopyDiagnostics(self) -> None:
        qt.QApplication.clipboard().setText(self.logic.diagnosticsReport())
        slicer.util.showStatusMessage(_("LDAE diagnostics copied to the clipboard"), 3000)

    # ------------------------------------------------------------------ runs
    def _options(self):
        p = self._parameterNode
        return {"input_space": "mni" if p.inputRegistered else "raw"}

    def _startJob(self, job, what: str) -> None:
        self._job = job
        job.on_progress = self.onProgress
        job.on_done = self.onJobDone
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        self.ui.progressBar.maximum = 0  # busy until the first progress message
        self.ui.statusLabel.text = what + "…"
        self.ui.cancelButton.enabled = True
        self._pollTimer.start()
        self._checkCanApply()

    def onProgress(self, job, msg) -> None:
        from LDAELib.slicer.protocol import progress_text

        if job is not self._job:
            return
        self.ui.progressBar.maximum = msg["total"]
        self.ui.progressBar.value = msg["done"]
        self.ui.statusLabel.text = progress_text(msg)

    def onJobDone(self, job) -> None:
        if job is not self._job:
            return
        self._job = None
        self.ui.progressBar.visible = False
        self.ui.cancelButton.enabled = self._previewJob is not None
        if job.state == "done":
            seconds = job.result.get("seconds", 0) if job.result else 0
            self.ui.statusLabel.text = _("Done in {0:.1f} s: {1} new node(s).").format(seconds, len(job.nodes))
            self.logic.showResults(job)
        elif job.state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
        else:
            self.ui.statusLabel.text = _("Failed: ") + str(job.error)
            slicer.util.errorDisplay(_("LDAE failed: ") + str(job.error))
        self._checkCanApply()

    def onApplyEdit(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the edit."), waitCursor=True):
            p = self._parameterNode
            self._cancelPreview()
            promoted = self.logic.promotePreview(p.inputVolume, self.currentDirection(), p.alpha, p.steps)
            if promoted:
                self.ui.statusLabel.text = _("Kept the full-quality preview as {0}.").format(promoted[0].GetName())
                return
            job = self.logic.startEdit(p.inputVolume, self.currentDirection(), p.alpha, p.steps, difference=self._editDifference(), **self._options())
            self._startJob(job, _("Editing"))

    def _editDifference(self):
        """The ``difference`` argument of an edit: False, "reconstruction" or "source"."""
        p = self._parameterNode
        if not p.showDifference:
            return False
        return "reconstruction" if p.differenceFromReconstruction else "source"

    def onReconstruct(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the reconstruction."), waitCursor=True):
            p = self._parameterNode
            job = self.logic.adapter().start_reconstruct(p.inputVolume, p.steps, difference=p.showDifference, **self._options())
            self._startJob(job, _("Reconstructing"))

    def onApplyInterpolation(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the interpolation."), waitCursor=True):
            p = self._parameterNode
            values = [float(v) for v in p.fractions.replace(",", " ").split()]
            kwargs = {"months": values} if p.useMonths else {"fractions": values}
            job = self.logic.adapter().start_interpolate(p.timepointA, p.timepointB, steps=p.steps, **kwargs, **self._options())
            self._startJob(job, _("Interpolating"))

    def onApplyVariations(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the variations."), waitCursor=True):
            p = self._parameterNode
            job = self.logic.adapter().start_vary(p.inputVolume, p.numberOfVariations, p.seed, p.steps, **self._options())
            self._startJob(job, _("Generating variations"))

    def onLoadExampleScans(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to make the example scans."), waitCursor=True):
            first, second = self.logic.loadExampleScans()
            self._parameterNode.inputVolume = first
            self._parameterNode.timepointA, self._parameterNode.timepointB = first, second
            self._parameterNode.useMonths = True
            self._parameterNode.fractions = "3 6 9"
            slicer.util.setSliceViewerLayers(background=first, fit=True)
            self.updateDates()

    def updateDates(self, node=None) -> None:
        self.ui.datesLabel.text = self.logic.datesText(self.ui.timepointASelector.currentNode(), self.ui.timepointBSelector.currentNode())

    # ------------------------------------------------------------------ preview while dragging
    def onAlphaChanging(self, value: float) -> None:
        if not (self._parameterNode and self._parameterNode.livePreview and self._parameterNode.inputVolume and self.logic.isLoaded()):
            return
        self._dragging = True
        self._pendingPreviewAlpha = (value, self._parameterNode.previewSteps, True)  # quick: slices on screen
        self._previewTimer.start()

    def onAlphaReleased(self, value: float) -> None:
        # Full quality into the preview volume; Apply keeps it (without recomputing when unchanged).
        # Only after a drag: values set by code (scene load, parameter node) start nothing.
        wasDragging, self._dragging = self._dragging, False
        if wasDragging and self._parameterNode and self._parameterNode.livePreview and self._parameterNode.inputVolume and self.logic.isLoaded():
            self._pendingPreviewAlpha = (value, self._parameterNode.steps, False)  # full quality, whole volume
            self._previewTimer.start()

    def startPreview(self) -> None:
        if self._pendingPreviewAlpha is None or self._job is not None:
            return
        alpha, steps, quick = self._pendingPreviewAlpha
        self._pendingPreviewAlpha = None
        if self._previewJob is not None and not self._previewJob.done:
            self._previewJob.cancel(kill=False)  # the warm worker drops it at its next network call
        try:
            p = self._parameterNode
            region = None
            if quick and p.previewVisibleSlices:  # while dragging; the release brings the whole volume
                region = self.logic.visibleRegion()
            job = self.logic.startEdit(p.inputVolume, self.currentDirection(), alpha, steps, preview=True,
                                       difference=self._editDifference(), region=region, **self._options())
        except Exception as err:  # a preview never shows a dialog
            self.ui.statusLabel.text = _("Preview not possible: ") + str(err)
            return
        self._previewJob = job
        job.on_progress = lambda j, msg: self.ui.statusLabel.setText(_("Preview (α={0:+.1f}, {1} steps): ").format(alpha, steps) + msg.get("stage", ""))
        job.on_done = self.onPreviewDone
        self.ui.cancelButton.enabled = True
        self._pollTimer.start()

    def onPreviewDone(self, job) -> None:
        if job is self._previewJob:
            self._previewJob = None
            self.ui.cancelButton.enabled = self._job is not None
        if job.state == "done":
            self.logic.showResults(job)
            self.ui.statusLabel.text = _("Preview α={0} ready in {1:.1f} s (Apply keeps it).").format(
                job.nodes[0].GetAttribute("LDAE.Alpha"), job.result.get("seconds", 0))
        elif job.state == "error":
            self.ui.statusLabel.text = _("Preview failed: ") + str(job.error)

    def _cancelPreview(self) -> None:
        self._previewTimer.stop()
        self._pendingPreviewAlpha = None
        if self._previewJob is not None and not self._previewJob.done:
            self._previewJob.cancel(kill=False)

    # ------------------------------------------------------------------ polling and cancel
    def onPoll(self) -> None:
        try:
            self.logic.poll()
        except Exception as err:
            logging.exception("LDAE: polling the worker failed")
            self.ui.statusLabel.text = str(err)
        info = self.logic.modelInfo()
        if info and info.get("pid") != self._shownWorkerPid:
            self.onModelReady()
        if self.logic.startError():
            self.ui.modelStatusLabel.text = _("The model could not be loaded: ") + self.logic.startError()
        if self._job is None and self._previewJob is None and (self._warmJob is None or self._warmJob.done) \
                and not self.logic.isStarting():
            self._pollTimer.stop()

    def onCancel(self) -> None:
        self._previewTimer.stop()
        self.logic.cancel()  # ends the worker's whole process tree; nothing is added
        self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene. The model is loaded again on the next run.")
        self.ui.progressBar.visible = False
        self.ui.cancelButton.enabled = False
        self._job = self._previewJob = self._warmJob = None
        self._warmedKey = None
        self._checkCanApply()


#
# LDAELogic
#


class LDAELogic(ScriptedLoadableModuleLogic):
    """LDAE on volume nodes, for the panel and for scripts. Methods take nodes and return nodes;
    they wait by default (``wait=False`` returns a job to poll). Errors a user can cause raise
    ``LDAELib.errors.LDAEError`` with a message that says what to do."""

    def __init__(self, modelPath=None, device=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._modelPath = str(modelPath) if modelPath else None
        self._device = device or qt.QSettings().value(SETTINGS_DEVICE, "auto") or "auto"
        self._adapter = None
        self._dependenciesChecked = False

    def getParameterNode(self):
        return LDAEParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ model and worker
    @staticmethod
    def demoModelPath():
        from LDAELib.resources import default_model_path

        path = default_model_path()
        return str(path) if path else None

    def modelPath(self):
        """The model used: the one set, else the demo model, else the folder chosen last time."""
        return self._modelPath or self.demoModelPath() or (qt.QSettings().value(SETTINGS_MODEL_FOLDER, "") or None)

    def setModel(self, folder=None, device="auto") -> None:
        """Use the model in ``folder`` (None: the bundled demo model). The worker restarts."""
        if folder is None and self.demoModelPath() is None:
            from LDAELib.errors import LDAEError

            raise LDAEError("The demo model is not installed in this version; choose the folder with the authors' weights or an LDAE bundle.")
        self.close()
        self._modelPath = str(folder) if folder else None
        self._device = device

    def adapter(self):
        """The LDAELib Slicer adapter (made on first use, after the dependencies are in place)."""
        if self._adapter is None:
            from LDAELib.errors import LDAEError
            from LDAELib.slicer.adapter import LDAESlicerAdapter

            path = self.modelPath()
            if not path:
                raise LDAEError("No model chosen: the demo model is not installed yet, so choose the folder with the "
                                "authors' weights or an LDAE bundle (LDAE module, Model section; or logic.setModel(folder)).")
            self.ensureDependencies()
            threads = max(1, (os.cpu_count() or 2) - 1)  # leave a core to the application
            self._adapter = LDAESlicerAdapter(path, python=pythonSlicerExecutable(), device=self._device, threads=threads,
                                              temp_dir=os.path.join(slicer.util.tempDirectory(), "LDAE"),
                                              cache_dir=self.encodingCacheFolder())
            self._adapter.client.extra_env.setdefault("OMP_NUM_THREADS", str(threads))
        return self._adapter

    def startWorker(self, wait: bool = True):
        return self.adapter().start_worker(wait=wait, idle=self._idle() if wait else None)

    def isLoaded(self) -> bool:
        return self._adapter is not None and self._adapter.client.running

    def isStarting(self) -> bool:
        return self.isLoaded() and self._adapter.info is None

    def startError(self):
        return self._adapter.start_error if self._adapter else None

    def modelInfo(self):
        return self._adapter.info if self._adapter else None

    def poll(self) -> None:
        if self._adapter is not None:
            self._adapter.poll()

    def cancel(self) -> None:
        """Stop everything now: the worker's process tree ends; the model loads again on the next run."""
        if self._adapter is not None:
            self._adapter.cancel(kill=True)

    def close(self) -> None:
        if self._adapter is not None:
            self._adapter.close()
            self._adapter = None

    # ------------------------------------------------------------------ dependencies
    def ensureDependencies(self, interactive: bool = True) -> None:
        """torch through the PyTorch extension; the rest from Resources/requirements.txt, asked
        for and installed on first use (never at import time)."""
        if self._dependenciesChecked:
            return
        from LDAELib.errors import LDAEError

        try:
            import PyTorchUtils
        except ImportError:
            raise LDAEError("LDAE needs the PyTorch extension: install 'PyTorch' from the Extensions Manager and restart Slicer.") from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=interactive, torchVersionRequirement=">=2.1")
            if torch is None:
                raise LDAEError("PyTorch is required; install it from the PyTorch Utils module.")
        requirements = self.resourcePath("requirements.txt")
        try:  # Slicer >= 5.12
            from slicer.packaging import load_requirements, pip_ensure
        except ImportError:
            try:  # Slicer 5.11
                from slicer.pydeps import load_requirements, pip_ensure
            except ImportError:
                load_requirements = pip_ensure = None
        if pip_ensure is not None:
            pip_ensure(load_requirements(requirements), skip_packages=["torch", "SimpleITK"], requester="LDAE", prompt_install=interactive)
        else:
            self._pipInstallMissing(requirements, interactive)
        self._dependenciesChecked = True

    @staticmethod
    def resourcePath(name):
        return os.path.join(MODULE_DIR, "Resources", name)

    @staticmethod
    def _pipInstallMissing(requirementsFile, interactive) -> None:
        """Before Slicer 5.11: check each requirement's metadata, ask, then pip install (monai
        without its dependencies, so it never pulls a torch of its own)."""
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement

        missing = []
        for line in open(requirementsFile, encoding="utf-8"):
            line = line.split("#")[0].strip()
            if not line:
                continue
            req = Requirement(line)
            try:
                if version(req.name) in req.specifier:
                    continue
            except PackageNotFoundError:
                pass
            missing.append(str(req))
        if not missing:
            return
        if interactive and not slicer.util.confirmOkCancelDisplay(
                _("LDAE needs these Python packages, which will be installed now: ") + ", ".join(missing)):
            raise ValueError(_("LDAE cannot run without its Python packages."))
        for req in missing:
            slicer.util.pip_install([req, "--no-deps"] if req.startswith("monai") else [req])

    # ------------------------------------------------------------------ operations
    @staticmethod
    def _idle():
        """While a script waits, let the application repaint (None outside the application)."""
        app = getattr(slicer, "app", None)
        return app.processEvents if app is not None else None

    @staticmethod
    def visibleRegion():
        """The slices on screen (the axial, coronal and sagittal views of the layout that are
        shown) as a preview region for ``startEdit(..., preview=True, region=...)``; None if none."""
        from LDAELib.slicer.nodes import visible_region

        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return None
        sliceNodes = []
        for name in layoutManager.sliceViewNames():
            widget = layoutManager.sliceWidget(name)
            if widget is not None and widget.isVisible():
                sliceNodes.append(widget.mrmlSliceNode())
        return visible_region(sliceNodes)

    def encodingCacheFolder(self):
        """Where encodings are kept on disk when the user allowed it (Quality section), else None."""
        if not _settingBool(SETTINGS_KEEP_ENCODINGS):
            return None
        return os.path.join(slicer.app.cachePath, "LDAE", "encodings")

    def startEdit(self, volumeNode, direction, alpha, steps=10, **options):
        self.adapter()
        return self._adapter.start_edit(volumeNode, direction, alpha if isinstance(alpha, (list, tuple)) else [alpha], steps, **options)

    def edit(self, volumeNode, direction="cn", alpha=2.0, steps=10, wait=True, **options):
        """Edit ``volumeNode`` along ``direction`` (a name of the model, e.g. "cn", or a probe file)
        by ``alpha`` (a number or a list). Returns the new volume node(s), beside the source."""
        return self.adapter().edit(volumeNode, direction, alpha, steps, wait=wait, idle=self._idle(), **options)

    def interpolate(self, nodeA, nodeB, fractions=(0.25, 0.5, 0.75), steps=10, wait=True, **options):
        """Scans between two timepoints at ``fractions`` (0 = A, 1 = B), or ``months=[...]`` after A.
        Returns the new volume nodes; a sequence and a browser for playback are added too."""
        frac = list(fractions) if fractions is not None else None
        return self.adapter().interpolate(nodeA, nodeB, frac, steps, wait=wait, idle=self._idle(), **options)

    def vary(self, volumeNode, n=4, seed=0, steps=10, wait=True, **options):
        """``n`` stochastic variations and their voxel-wise spread map."""
        return self.adapter().vary(volumeNode, n, seed, steps, wait=wait, idle=self._idle(), **options)

    def loadExampleScans(self, scene=None):
        """The two shipped example visits of one synthetic subject, 36 months apart (held out of the demo model's training)."""
        from LDAELib.slicer.nodes import add_example_scans

        return add_example_scans(scene or slicer.mrmlScene)

    def promotePreview(self, volumeNode, direction, alpha, steps):
        """Keep the preview volume as a result when it was computed at full quality for this alpha."""
        if self._adapter is None:
            return None
        return self._adapter.promote_preview(volumeNode, direction, alpha, steps)

    def showResults(self, job) -> None:
        """Show a finished job's first volume, its difference map as a coloured overlay, and a
        sequence browser in the toolbar for interpolations."""
        volumes = [n for n in job.nodes if n.IsA("vtkMRMLScalarVolumeNode")]
        browsers = [n for n in job.nodes if n.IsA("vtkMRMLSequenceBrowserNode")]
        if browsers:
            browser = browsers[0]
            sequence = browser.GetMasterSequenceNode()
            slicer.modules.sequences.toolBar().setActiveBrowserNode(browser)
            slicer.util.setSliceViewerLayers(background=browser.GetProxyNode(sequence), fit=True)
            return
        if not volumes:
            return
        overlay = next((n for n in volumes if n.GetAttribute("LDAE.Operation") in ("difference", "spread")), None)
        base = next((n for n in volumes if n is not overlay), volumes[0])
        slicer.util.setSliceViewerLayers(background=base, foreground=overlay, foregroundOpacity=0.5 if overlay else 0.0)

    def datesText(self, nodeA, nodeB) -> str:
        if nodeA is None or nodeB is None:
            return _("Scan dates: choose two timepoints")
        from LDAELib.slicer import nodes as mrml

        da, db = mrml.acquisition_date(nodeA), mrml.acquisition_date(nodeB)
        if da is None or db is None:
            return _("Scan dates unknown: give fractions between 0 and 1 (or set LDAE.Date on both volumes)")
        return _("Scans {0} → {1}: {2:.1f} months apart").format(da.isoformat(), db.isoformat(), mrml.months_between(nodeA, nodeB))

    # ------------------------------------------------------------------ diagnostics
    def diagnosticsText(self) -> str:
        """One line: torch version and device (from the worker once it runs; before that from
        the installed packages, without importing torch into Slicer)."""
        info = self.modelInfo()
        if info:
            d = info["diagnostics"]
            device = d["device"]
            if d.get("gpu"):
                device += f" ({d['gpu']}, {d['gpu_memory_free_gb']}/{d['gpu_memory_total_gb']} GB free)"
            mem = f"RAM {d['memory_available_gb']}/{d['memory_total_gb']} GB free" if d.get("memory_total_gb") else ""
            return f"torch {d['torch']} · {device} · {d['threads']} threads · {mem}"
        from importlib.metadata import PackageNotFoundError, version

        try:
            return _("torch {0} installed · device chosen when the model loads").format(version("torch"))
        except PackageNotFoundError:
            return _("PyTorch is not installed yet: it is installed through the PyTorch extension on first use")

    def diagnosticsReport(self) -> str:
        import json
        import platform

        info = self.modelInfo() or {}
        app = getattr(slicer, "app", None)
        report = {"slicer": app.applicationVersion if app is not None else None, "platform": platform.platform(),
                  "python": platform.python_version(), "model": {k: (info.get("model") or {}).get(k) for k in ("name", "id", "format", "path")},
                  "worker": info.get("diagnostics"), "worker_python": pythonSlicerExecutable()}
        return json.dumps(report, indent=2)


def _settingBool(key: str, default: bool = False) -> bool:
    """A yes/no application setting (QSettings gives strings back on some platforms)."""
    value = qt.QSettings().value(key, default)
    return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")


def pythonSlicerExecutable() -> str:
    """The Python to run the worker with: PythonSlicer beside the application, else this one."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    for candidate in ("PythonSlicer.exe", "PythonSlicer"):
        path = os.path.join(os.path.dirname(sys.executable), candidate)
        if os.path.isfile(path):
            return path
    return sys.executable


#
# LDAETest
#


class LDAETest(ScriptedLoadableModuleTest):
    """Edit and interpolation inside a running Slicer, with a tiny random model made on the fly
    (in a PythonSlicer subprocess, so torch never enters the application) and synthetic scans."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LDAE_edit()
        self.setUp()
        self.test_LDAE_interpolate()

    def _logic(self):
        import subprocess
        import tempfile

        folder = os.path.join(tempfile.mkdtemp(prefix="LDAE-test-"), "tiny")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(MODULE_DIR))
        subprocess.run([pythonSlicerExecutable(), "-c", f"from LDAELib.slicer.testing import make_tiny_bundle; make_tiny_bundle({folder!r})"],
                       check=True, env=env)
        logic = LDAELogic(modelPath=folder, device="cpu")
        self.addCleanup(logic.close)
        return logic

    def _volume(self, name, seed, ventricles=1.0):
        import numpy as np

        from LDAELib.testing import phantom_brain

        data, affine = phantom_brain((45, 54, 45), 4.0, ventricle_scale=ventricles, seed=seed, intensity=80.0)
        node = slicer.util.addVolumeFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)), ijkToRAS=affine, name=name)  # K,J,I
        return node

    def test_LDAE_edit(self):
        import numpy as np

        self.delayDisplay("Starting the edit test")
        logic = self._logic()
        source = self._volume("visit1", 0)
        before = slicer.util.arrayFromVolume(source).copy()
        edited = logic.edit(source, "cn", -2.0, steps=3)
        self.assertEqual(edited.GetName(), "visit1 LDAE cn α=-2.0")
        self.assertEqual(edited.GetImageData().GetDimensions(), source.GetImageData().GetDimensions())
        m1, m2 = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        source.GetIJKToRASMatrix(m1)
        edited.GetIJKToRASMatrix(m2)
        self.assertTrue(all(m1.GetElement(i, j) == m2.GetElement(i, j) for i in range(4) for j in range(4)))
        self.assertEqual(edited.GetAttribute("LDAE.Direction"), "cn")
        self.assertEqual(edited.GetAttribute("LDAE.SourceNodeID"), source.GetID())
        self.assertTrue(np.array_equal(before, slicer.util.arrayFromVolume(source)))
        self.delayDisplay("Edit test passed")

    def test_LDAE_interpolate(self):
        self.delayDisplay("Starting the interpolation test")
        logic = self._logic()
        a, b = self._volume("visit1", 0), self._volume("visit2", 1, ventricles=1.5)
        frames = logic.interpolate(a, b, [0.25, 0.5, 0.75], steps=3)
        self.assertEqual([f.GetName() for f in frames], ["visit1→visit2 t=0.25", "visit1→visit2 t=0.50", "visit1→visit2 t=0.75"])
        sequence = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")
        self.assertEqual(sequence.GetNumberOfDataNodes(), 5)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceBrowserNode"))
        self.delayDisplay("Interpolation test passed")
