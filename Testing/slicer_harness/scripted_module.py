"""``slicer.ScriptedLoadableModule`` as far as a module's own code can tell, written here.

Slicer's file (``Base/Python/slicer/ScriptedLoadableModule.py``) is not copied: this is a small
re-implementation of the behaviour a module sees, from reading it:

* ``ScriptedLoadableModule(parent)`` resets ``parent.title`` / categories / … and registers the
  module's test in ``slicer.selfTests``.
* ``ScriptedLoadableModuleWidget(parent)``: without a parent, a ``qMRMLWidget`` with a vertical
  layout and the scene is made, ``setup()`` runs at once and the widget is shown; ``self.layout`` is
  the parent's layout; ``resourcePath(name)`` is ``<module folder>/Resources/<name>``; ``cleanup()``
  runs when the application unloads the module (the harness's ``close()``). The developer section
  (Reload / Test buttons) is left out.
* ``ScriptedLoadableModuleLogic.getParameterNode()``: the scene's singleton
  ``vtkMRMLScriptedModuleNode`` tagged with the module name (made when missing), with the
  ``ModuleName`` attribute restored after a scene close.
* ``ScriptedLoadableModuleTest``: a ``unittest.TestCase``; ``delayDisplay`` logs and lets Qt process
  events (the application shows a popup instead).
"""

from __future__ import annotations

import logging
import os
import sys
import unittest

import slicer

from . import qt_compat as qt

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"]


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename: str) -> str:
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec: int = 100, **kwargs) -> None:
        module = sys.modules[type(self).__module__]
        test = getattr(module, self.moduleName + "Test")()
        test.messageDelay = msec
        test.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        super().__init__()
        name = type(self).__name__
        self.moduleName = name[:-6] if name.endswith("Widget") else name
        self.developerMode = False
        created = parent is None
        if created:
            parent = slicer.qMRMLWidget()
            parent.setLayout(qt.QVBoxLayout())
            parent.setMRMLScene(slicer.mrmlScene)
        self.parent = parent
        self.layout = parent.layout()
        slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)
        if created:
            self.setup()
            self.parent.show()

    def resourcePath(self, filename: str) -> str:
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def setup(self) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def _onModuleAboutToBeUnloaded(self, moduleName: str) -> None:
        if moduleName == self.moduleName:
            self.cleanup()
            slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        super().__init__()
        name = type(self).__name__
        self.moduleName = name[:-5] if name.endswith("Logic") else name
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)

    def delayDisplay(self, message, requestedDelay=None, msec=None) -> None:
        logging.info(message)
        slicer.app.processEvents()

    def runTest(self) -> None:
        logging.warning("No test is defined in " + type(self).__name__)
