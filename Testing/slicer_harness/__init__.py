"""Run the real scripted module ``LDAE/LDAE.py`` (Widget and Logic) without the Slicer application.

    harness = SlicerHarness(tmp_path).install()
    widget = harness.open_module()          # imports LDAE.py, builds the panel from LDAE.ui, enter()
    widget.ui.loadModelButton.click()       # real Qt signals into the module's slots
    harness.wait_until(lambda: ..., timeout=60)
    harness.uninstall()                     # cleanup(), scene cleared, every patch undone

What each layer is and how faithful it is (details in each file's docstring):

* ``qt`` (``qt_compat``): PySide6 with PythonQt's attribute properties and string connections.
* ``ctk`` (``ctk_widgets``): ctkSliderWidget's tracking / ``valueIsChanging`` rules re-implemented
  from CTK's source; the other CTK widgets keep only what the panel uses.
* ``slicer``: slicer-core's real MRML, module logics (sequences, colours, volumes, subject
  hierarchy, slice logics) and Slicer's own ``slicer.util`` (``tryWithErrorDisplay``,
  ``childWidgetVariables``, ``setSliceViewerLayers``, ``VTKObservationMixin`` … run as they are),
  plus ``qMRMLWidget`` / ``qMRMLNodeComboBox`` (``mrml_widgets``), ``ScriptedLoadableModule``
  (``scripted_module``) and ``parameterNodeWrapper`` (``parameter_nodes``) written here from Slicer's
  behaviour, and ``slicer.app`` / ``modules.sequences`` / ``PyTorchUtils`` / ``slicer.packaging`` as
  recorders (``application``). Error popups are recorded in ``harness.errors``.

What it cannot check: rendering and layout in the real application, PythonQt's own conversions
(e.g. of VTK objects through Qt signals), Slicer's module panel and menus, real pip installs,
and anything that needs the application's main window.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import types
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any Qt import: no display needed

import slicer  # noqa: E402  slicer-core
import slicer.util  # noqa: E402
from PySide6 import QtWidgets  # noqa: E402

from . import application, ctk_widgets, mrml_widgets, parameter_nodes, qt_compat, scripted_module  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "LDAE"


def qapplication():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


class ModulePanel(qt_compat.QWidget):
    """The module's parent widget (``qSlicerScriptedLoadableModuleWidget``): a layout and ``isEntered``."""

    def __init__(self) -> None:
        super().__init__()
        self.setLayout(QtWidgets.QVBoxLayout())
        self.isEntered = False


def _installed(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class SlicerHarness:
    """Installs the fake application around slicer-core; see the module docstring.

    Args:
        tmp: a folder for the application's temporary and cache paths.
        slicer_version: "5.12.0" has ``slicer.packaging``; older versions do not.
        torch_version: what the PyTorch extension reports as installed (default: this Python's torch).
    """

    def __init__(self, tmp, slicer_version: str = "5.12.0", torch_version: str | None = "installed") -> None:
        self.tmp = Path(tmp)
        self.slicer_version = slicer_version
        self.torch_version = _installed("torch") if torch_version == "installed" else torch_version
        self.errors: list[str] = []
        self.pip_installs: list = []
        self.confirm_answer = True
        self._saved_modules: dict = {}
        self._saved_attrs: dict = {}
        self._saved_util: dict = {}
        self.widget = None
        self.module = None
        self.installed = False

    # ------------------------------------------------------------------ install / uninstall
    def install(self) -> "SlicerHarness":
        self.app_qt = qapplication()
        qt_compat.QSettings.store = {}
        self.scene = slicer.vtkMRMLScene()
        self.sequences = application.SequencesModule(self.scene)
        self.modules = types.SimpleNamespace(sequences=self.sequences)
        self.app = application.Application(self.scene, self.modules, self.tmp, self.slicer_version)
        self.logics = [slicer.vtkSlicerColorLogic(), slicer.vtkSlicerVolumesLogic(), slicer.vtkSlicerSubjectHierarchyModuleLogic()]
        for logic in self.logics:
            logic.SetMRMLApplicationLogic(self.app.layoutManager().app_logic)
            logic.SetMRMLScene(self.scene)
        self.pytorch_utils = application.PyTorchUtilsModule(self.torch_version)
        self.packaging = application.PackagingModule() if tuple(map(int, self.slicer_version.split(".")[:2])) >= (5, 12) else None
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text: text
        i18n.translate = lambda context, text: text

        modules = {"qt": qt_compat, "ctk": ctk_widgets, "slicer.ScriptedLoadableModule": scripted_module,
                   "slicer.parameterNodeWrapper": parameter_nodes, "slicer.i18n": i18n, "PyTorchUtils": self.pytorch_utils,
                   "slicer.packaging": self.packaging, "LDAE": None}
        for name, module in modules.items():
            self._saved_modules[name] = sys.modules.get(name)
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        attrs = {"mrmlScene": self.scene, "app": self.app, "modules": self.modules, "qMRMLWidget": mrml_widgets.qMRMLWidget,
                 "qMRMLNodeComboBox": mrml_widgets.qMRMLNodeComboBox, "ScriptedLoadableModule": scripted_module,
                 "parameterNodeWrapper": parameter_nodes, "i18n": i18n, "packaging": self.packaging, "selfTests": {}}
        for name, value in attrs.items():
            self._saved_attrs[name] = getattr(slicer, name, _MISSING)
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        util = {"errorDisplay": self._error_display, "pip_install": self._pip_install,
                "confirmOkCancelDisplay": lambda text, *a, **k: self.confirm_answer,
                "showStatusMessage": lambda message, duration=0: self.app.status_messages.append(message)}
        for name, value in util.items():
            self._saved_util[name] = getattr(slicer.util, name)
            setattr(slicer.util, name, value)
        self._path_added = str(MODULE_DIR) not in sys.path
        if self._path_added:
            sys.path.insert(0, str(MODULE_DIR))  # the folder Slicer adds as a module path
        self.installed = True
        return self

    def uninstall(self) -> None:
        if not self.installed:
            return
        try:
            self.close()
        finally:
            for name, module in self._saved_modules.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
            for name, value in self._saved_attrs.items():
                if value is _MISSING:
                    if hasattr(slicer, name):
                        delattr(slicer, name)
                else:
                    setattr(slicer, name, value)
            for name, value in self._saved_util.items():
                setattr(slicer.util, name, value)
            if self._path_added:
                sys.path.remove(str(MODULE_DIR))
            self.scene.Clear(1)
            self.installed = False

    def _error_display(self, text, *args, **kwargs) -> None:
        self.errors.append(str(text))

    def _pip_install(self, requirements, *args, **kwargs) -> None:
        self.pip_installs.append(requirements)

    # ------------------------------------------------------------------ the module
    def import_module(self):
        """Import LDAE/LDAE.py afresh (as Slicer does when it loads the module) and register it."""
        sys.modules.pop("LDAE", None)
        self.LDAE = importlib.import_module("LDAE")
        parent = types.SimpleNamespace(path=str(MODULE_DIR / "LDAE.py"), title="", categories=[], dependencies=[], contributors=[],
                                       helpText="", acknowledgementText="")
        self.module = self.LDAE.LDAE(parent)
        self.modules.ldae = parent
        return self.LDAE

    def open_module(self, **widget_kwargs):
        """Make the panel as the application does (widget, setup), then enter the module."""
        if self.module is None:
            self.import_module()
        self.panel = ModulePanel()
        self.widget = self.LDAE.LDAEWidget(self.panel, **widget_kwargs)
        self.widget.setup()
        self.panel.show()  # offscreen; the module panel is on screen while the module is entered
        self.enter()
        return self.widget

    def enter(self) -> None:
        self.panel.isEntered = True
        self.widget.enter()

    def exit(self) -> None:
        self.widget.exit()
        self.panel.isEntered = False

    def close(self) -> None:
        """The application unloads the module (on exit): ``cleanup()`` runs."""
        if self.widget is not None:
            if self.panel.isEntered:
                self.exit()
            self.app.moduleManager().moduleAboutToBeUnloaded.emit("LDAE")
            self.widget = None

    def close_scene(self) -> None:
        """File > Close Scene."""
        self.scene.Clear(0)

    # ------------------------------------------------------------------ time
    def process_events(self, seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while True:
            self.app_qt.processEvents()
            if time.monotonic() >= end:
                return
            time.sleep(0.01)

    def wait_until(self, predicate, timeout: float = 60.0, what: str = "the condition") -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            self.app_qt.processEvents()
            time.sleep(0.01)


_MISSING = object()
