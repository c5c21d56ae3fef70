"""``slicer.qMRMLWidget`` and ``slicer.qMRMLNodeComboBox`` on a real MRML scene.

What the panel relies on, written here on PySide6: a qMRMLWidget emits
``mrmlSceneChanged(vtkMRMLScene*)`` from ``setMRMLScene``; a node combo box lists the scene's nodes
of its ``nodeTypes`` (kept up to date through the scene's NodeAdded / NodeRemoved events),
``currentNode()`` / ``setCurrentNode()`` and ``currentNodeChanged(vtkMRMLNode*)``. With
``noneEnabled`` false it selects the first node that appears, as Slicer's does. Adding, removing and
renaming from the combo box's menu are not reproduced.
"""

from __future__ import annotations

from PySide6.QtCore import Property, Signal

from . import qt_compat as qt


class qMRMLWidget(qt.QWidget):
    mrmlSceneChanged = Signal(object)
    _cpp_signals = {"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged(PyObject)"}

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        if scene is self._scene:
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(qt.QComboBox):
    currentNodeChanged = Signal(object)
    currentNodeIDChanged = Signal(str)
    mrmlSceneChanged = Signal(object)
    _cpp_signals = {"currentNodeChanged(vtkMRMLNode*)": "currentNodeChanged(PyObject)",
                    "mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged(PyObject)"}

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene, self._tags = None, []
        self._node_types: list[str] = []
        self._none_enabled = self._add_enabled = self._remove_enabled = False
        self._show_child_types = True
        self._current = None
        self.currentIndexChanged.connect(self._on_index)  # the user picks an entry

    # -- properties set by the .ui and by parameterNodeWrapper
    def getNodeTypes(self):
        return list(self._node_types)

    def setNodeTypes(self, types) -> None:
        self._node_types = list(types)
        self._refresh()

    def getNoneEnabled(self) -> bool:
        return self._none_enabled

    def setNoneEnabled(self, on: bool) -> None:
        self._none_enabled = bool(on)
        self._refresh()

    def getAddEnabled(self) -> bool:
        return self._add_enabled

    def setAddEnabled(self, on: bool) -> None:
        self._add_enabled = bool(on)

    def getRemoveEnabled(self) -> bool:
        return self._remove_enabled

    def setRemoveEnabled(self, on: bool) -> None:
        self._remove_enabled = bool(on)

    def getShowChildNodeTypes(self) -> bool:
        return self._show_child_types

    def setShowChildNodeTypes(self, on: bool) -> None:
        self._show_child_types = bool(on)
        self._refresh()

    nodeTypes = Property(list, getNodeTypes, setNodeTypes)
    noneEnabled = Property(bool, getNoneEnabled, setNoneEnabled)
    addEnabled = Property(bool, getAddEnabled, setAddEnabled)
    removeEnabled = Property(bool, getRemoveEnabled, setRemoveEnabled)
    showChildNodeTypes = Property(bool, getShowChildNodeTypes, setShowChildNodeTypes)

    # -- scene
    def setMRMLScene(self, scene) -> None:
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent, scene.EndImportEvent):
                self._tags.append(scene.AddObserver(event, lambda caller, e: self._refresh()))
        self._refresh()
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene

    def _matches(self, node) -> bool:
        if node.GetHideFromEditors():
            return False
        if self._show_child_types:
            return any(node.IsA(t) for t in self._node_types)
        return node.GetClassName() in self._node_types

    def nodes(self) -> list:
        if self._scene is None:
            return []
        found = []
        for i in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(i)
            if node is not None and self._matches(node):
                found.append(node)
        return found

    def _refresh(self) -> None:
        nodes = self.nodes()
        blocked = self.blockSignals(True)
        self.clear()
        if self._none_enabled:
            self.addItem("None", "")
        for node in nodes:
            self.addItem(node.GetName(), node.GetID())
        self.blockSignals(blocked)
        current = next((n for n in nodes if _same(n, self._current)), None)
        if current is None and not self._none_enabled and nodes:
            current = nodes[0]
        self._select(current)

    def _select(self, node) -> None:
        index = self.findData(node.GetID()) if node is not None else (0 if self._none_enabled else -1)
        blocked = self.blockSignals(True)
        self.setCurrentIndex(index)
        self.blockSignals(blocked)
        if not _same(node, self._current):
            self._current = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _on_index(self, index: int) -> None:
        node_id = self.itemData(index) if index >= 0 else ""
        self._select(self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None)

    def currentNode(self):
        return self._current

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node) -> None:
        if node is not None and not any(_same(n, node) for n in self.nodes()):
            node = None
        self._select(node)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene is not None and node_id else None)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.GetID() == b.GetID() and a.GetScene() is b.GetScene()


qt.WIDGET_CLASSES.update({c.__name__: c for c in (qMRMLWidget, qMRMLNodeComboBox)})
