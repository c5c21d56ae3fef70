"""Small recorders for the parts of the Slicer application a module touches.

None of these draws anything; each keeps what the module asked for, so tests can check it:

* ``Application`` (``slicer.app``): version, temporary and cache folders, ``processEvents`` (Qt's),
  wait-cursor calls, the layout manager, the module manager, testing mode off.
* ``LayoutManager``: three slice views Red (axial), Yellow (sagittal) and Green (coronal) over real
  ``vtkMRMLSliceLogic``s of the scene, so ``slicer.util.setSliceViewerLayers`` and the module's
  "slices on screen" work on real slice and slice-composite nodes.
* ``SequencesModule`` (``slicer.modules.sequences``): the real ``vtkSlicerSequencesLogic`` of the
  scene and a toolbar that starts hidden, as Slicer creates it (``qSlicerSequencesModule.cxx``).
  ``toolBar().setActiveBrowserNode`` only selects; ``showSequenceBrowser`` selects and shows it
  (when ``autoShowToolBar``, the default).
* ``PyTorchUtilsModule``: the PyTorch extension's ``PyTorchUtils`` module as seen from outside:
  ``PyTorchUtilsLogic.torchInstalled()`` imports torch into the application when its metadata is
  present (as SlicerPyTorch's does; recorded in ``imported_torch``), ``installTorch(...)`` records the
  request and reports the version it "installed".
* ``PackagingModule``: ``slicer.packaging`` of Slicer 5.12 (``load_requirements`` parses the file,
  ``pip_ensure`` records the call and installs nothing).
"""

from __future__ import annotations

import types
from pathlib import Path

import slicer
from PySide6 import QtWidgets
from PySide6.QtCore import Signal

from . import qt_compat as qt

VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


class ModuleManager(qt.QObjectCompat):
    moduleAboutToBeUnloaded = Signal(str)

    def __init__(self, modules) -> None:
        super().__init__()
        self._modules = modules

    def module(self, name: str):
        return getattr(self._modules, name.lower(), None)


class SliceWidget:
    def __init__(self, logic, visible: bool = True) -> None:
        self._logic, self.visible = logic, visible

    def isVisible(self) -> bool:
        return self.visible

    def mrmlSliceNode(self):
        return self._logic.GetSliceNode()

    def sliceLogic(self):
        return self._logic


class LayoutManager:
    def __init__(self, scene, home: Path) -> None:
        import vtk

        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(scene)
        (home / "share" / "ColorFiles").mkdir(parents=True, exist_ok=True)  # an empty application share folder
        self.app_logic.SetHomeDirectory(str(home))
        self.app_logic.SetShareDirectory("share")
        self.slice_logics, self.widgets = vtk.vtkCollection(), {}
        for name, orientation in VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            logic.SetMRMLApplicationLogic(self.app_logic)
            node = logic.AddSliceNode(name)
            node.SetOrientation(orientation)
            self.slice_logics.AddItem(logic)
            self.widgets[name] = SliceWidget(logic)
        self.fitted = 0

    def sliceViewNames(self):
        return list(self.widgets)

    def sliceWidget(self, name):
        return self.widgets.get(name)

    def mrmlSliceLogics(self):
        return self.slice_logics


class SequenceBrowserToolBar:
    def __init__(self) -> None:
        self.visible = False  # Slicer creates it hidden
        self.active = None

    def setActiveBrowserNode(self, node) -> None:
        self.active = node

    def activeBrowserNode(self):
        return self.active

    def isVisible(self) -> bool:
        return self.visible

    def setVisible(self, on: bool) -> None:
        self.visible = bool(on)


class SequencesModule:
    def __init__(self, scene) -> None:
        self._logic = slicer.vtkSlicerSequencesLogic()
        self._logic.SetMRMLScene(scene)
        self._toolbar = SequenceBrowserToolBar()
        self.autoShowToolBar = True
        self.path = ""

    def logic(self):
        return self._logic

    def toolBar(self):
        return self._toolbar

    def isToolBarVisible(self) -> bool:
        return self._toolbar.visible

    def setToolBarVisible(self, on: bool) -> None:
        self._toolbar.setVisible(on)

    def showSequenceBrowser(self, browser) -> bool:
        if self.autoShowToolBar:
            self._toolbar.setActiveBrowserNode(browser)
            self._toolbar.setVisible(True)
        return True


class Application:
    def __init__(self, scene, modules, temp: Path, version: str = "5.12.0") -> None:
        self.applicationName = "3D Slicer"
        self.applicationVersion = version
        self.majorVersion, self.minorVersion = (int(v) for v in version.split(".")[:2])
        self.temporaryPath = str(temp / "slicer-temp")
        self.cachePath = str(temp / "slicer-cache")
        Path(self.temporaryPath).mkdir(parents=True, exist_ok=True)
        self._layout = LayoutManager(scene, temp / "slicer-home")
        self._modules = ModuleManager(modules)
        self.override_cursor_depth = 0
        self.status_messages: list[str] = []

    def processEvents(self) -> None:
        QtWidgets.QApplication.processEvents()

    def testingEnabled(self) -> bool:
        return False

    def commandOptions(self):
        return types.SimpleNamespace(testingEnabled=False)

    def layoutManager(self):
        return self._layout

    def moduleManager(self):
        return self._modules

    def setOverrideCursor(self, cursor) -> None:
        self.override_cursor_depth += 1

    def restoreOverrideCursor(self) -> None:
        self.override_cursor_depth -= 1

    def topLevelWidgets(self):
        return []

    def userSettings(self):
        return qt.QSettings()

    def settings(self):
        return qt.QSettings()

    def clipboard(self):
        return QtWidgets.QApplication.clipboard()


class PyTorchUtilsModule(types.ModuleType):
    """A stand-in for the PyTorch extension's ``PyTorchUtils`` module (see the module docstring)."""

    def __init__(self, installed_version: str | None) -> None:
        super().__init__("PyTorchUtils")
        self.installed_version = installed_version
        self.imported_torch = False
        self.install_requests: list[dict] = []
        self.decline = False
        outer = self

        class PyTorchUtilsLogic:
            @staticmethod
            def torchInstalled():
                if outer.installed_version is None:
                    return False
                outer.imported_torch = True  # SlicerPyTorch does `import torch` here
                return True

            def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
                outer.install_requests.append({"askConfirmation": askConfirmation, "torchVersionRequirement": torchVersionRequirement})
                if outer.decline:
                    return None
                outer.installed_version = outer.version_after_install
                outer.imported_torch = True  # installTorch ends with `import torch`
                return types.SimpleNamespace(__version__=outer.installed_version)

        self.PyTorchUtilsLogic = PyTorchUtilsLogic
        self.version_after_install = "2.13.0"


class PackagingModule(types.ModuleType):
    """``slicer.packaging`` (Slicer 5.12) that records ``pip_ensure`` and installs nothing."""

    def __init__(self) -> None:
        super().__init__("slicer.packaging")
        self.ensure_calls: list[tuple[list[str], dict]] = []

    @staticmethod
    def load_requirements(path):
        from packaging.requirements import Requirement

        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
        return [Requirement(ln) for ln in lines if ln and not ln.startswith(("#", "-"))]

    def pip_ensure(self, requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        self.ensure_calls.append(([str(r) for r in requirements],
                                  {"skip_packages": skip_packages, "prompt_install": prompt_install, "requester": requester}))
        return None
