"""The ``qt`` module as a scripted Slicer module sees it, made from PySide6.

Slicer's Python talks to Qt through PythonQt, which differs from PySide6 in the ways a module
relies on, and which this layer reproduces (written here from PythonQt's documented behaviour):

* Qt properties read and written as attributes: ``label.text = "…"``, ``combo.currentData``,
  ``button.enabled``. Where a property and a method share a name, the property wins.
* ``obj.connect("signal(type)", slot)`` / ``obj.disconnect(...)`` with C++ signatures. A slot that
  takes fewer arguments than the signal gets the first ones. Unlike PythonQt, which prints a
  warning and carries on, a signature the object does not have raises ``ValueError``: a wrong
  signature is a panel that silently does nothing in Slicer, so a test should fail on it.
* ``widget.name`` is the object name (``slicer.util.childWidgetVariables`` uses it).
* ``qt.QUiLoader`` builds every widget of a ``.ui`` file from the classes of this module, of the
  ``ctk`` layer and of the MRML widgets, so ``type(w) == qt.QCheckBox`` holds as in Slicer, and it
  makes the file's ``<connections>`` itself (their C++ argument types such as ``vtkMRMLScene*``
  do not exist in PySide6).
* ``qt.QSettings`` keeps values in memory for the test (never in the user's settings file).

Everything else is PySide6's own class, found by name (``qt.Qt``, ``qt.QFile``, ``qt.QTimer``…).
"""

from __future__ import annotations

import inspect
import re
import types
import xml.etree.ElementTree as ET

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import QObject
from PySide6.QtUiTools import QUiLoader as _PySideUiLoader

_SIGNATURE = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")


# ---------------------------------------------------------------------- PythonQt object behaviour
def _python_names(cls) -> set:
    """Attributes defined in Python (this harness) on ``cls`` and its Python bases: they take
    precedence over Qt properties of the same name (our custom widgets declare their own)."""
    names = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith(("PySide6", "shiboken6", "Shiboken", "builtins")):
            continue
        names.update(k for k in vars(klass) if not k.startswith("_"))
    return names


_PROPERTIES: dict = {}


def _qt_properties(cls) -> frozenset:
    cached = _PROPERTIES.get(cls)
    if cached is None:
        mo = cls.staticMetaObject
        names = {mo.property(i).name() for i in range(mo.propertyCount())}
        cached = _PROPERTIES[cls] = frozenset(names - _python_names(cls))
    return cached


def normalized(signature: str) -> str:
    """Qt's normalized form for the signatures used here: no spaces, ``const T&`` as ``T``."""
    m = _SIGNATURE.match(signature)
    if not m:
        return signature.strip()
    types = []
    for t in (m.group(2).split(",") if m.group(2).strip() else []):
        t = re.sub(r"^const\s+", "", t.strip())
        t = re.sub(r"\s*&$", "", t)
        types.append(re.sub(r"\s+(?=[*&])", "", t))
    return f"{m.group(1)}({','.join(types)})"


def _signals_of(obj) -> dict:
    """normalized C++ signature -> the signature to connect with, for every signal of ``obj``."""
    found = {}
    mo = obj.metaObject()
    for i in range(mo.methodCount()):
        method = mo.method(i)
        if method.methodType() == QtCore.QMetaMethod.Signal:
            sig = bytes(method.methodSignature()).decode()
            found[sig] = sig
    for klass in reversed(type(obj).__mro__):  # Python signals declared with C++ argument types
        for cpp, python in vars(klass).get("_cpp_signals", {}).items():
            found[normalized(cpp)] = python
    return found


def _accepted_positional(slot) -> int | None:
    """How many positional arguments ``slot`` takes (None: any number)."""
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):  # builtins, Qt slots: give them everything
        return None
    count = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _Receiver(slot):
    """A function that calls ``slot`` with as many of the signal's arguments as it takes (PythonQt's rule)."""
    count = _accepted_positional(slot)

    def receive(*args):
        return slot(*(args if count is None else args[:count]))

    return receive


class PythonQtObject:
    """Mixin giving a PySide6 class PythonQt's attribute and connection behaviour."""

    def __getattribute__(self, name):
        if name in ("connect", "disconnect"):  # Shiboken would hand out QObject's own first
            return types.MethodType(getattr(PythonQtObject, name), self)
        if name[:1] != "_" and name in _qt_properties(type(self)):
            return QObject.property(self, name)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        if name[:1] != "_" and name in _qt_properties(type(self)):
            if not QObject.setProperty(self, name, value):
                raise TypeError(f"{type(self).__name__}.{name} cannot be set to {value!r}")
            return
        super().__setattr__(name, value)

    @property
    def name(self) -> str:
        return QObject.objectName(self)

    @name.setter
    def name(self, value: str) -> None:
        QObject.setObjectName(self, value)

    def _signal_for(self, signature: str) -> str:
        if not _SIGNATURE.match(signature):
            raise ValueError(f"not a signal signature: {signature!r}")
        signals = _signals_of(self)
        key = normalized(signature)
        if key not in signals:
            raise ValueError(f"{type(self).__name__} '{QObject.objectName(self)}' has no signal {signature}")
        return signals[key]

    def connect(self, signal, slot):
        """``obj.connect("clicked(bool)", callable)`` as in PythonQt."""
        receiver = _Receiver(slot)
        connection = QObject.connect(self, QtCore.SIGNAL(self._signal_for(signal)), receiver)
        if not connection:
            raise RuntimeError(f"could not connect {signal} of {QObject.objectName(self)!r}")
        store = self.__dict__.setdefault("_pythonqt_connections", {})
        store.setdefault((normalized(signal), slot), []).append(receiver)
        return True

    def disconnect(self, signal, slot=None):
        key_sig = normalized(signal)
        store = self.__dict__.get("_pythonqt_connections", {})
        done = False
        for (sig, s), receivers in list(store.items()):
            if sig == key_sig and (slot is None or s == slot):
                for receiver in receivers:
                    done = QObject.disconnect(self, QtCore.SIGNAL(self._signal_for(signal)), receiver) or done
                del store[(sig, s)]
        return bool(done)


def _compat(base, name=None):
    return type(name or base.__name__, (PythonQtObject, base), {"__module__": __name__})


QObjectCompat = _compat(QtCore.QObject, "QObject")
QTimer = _compat(QtCore.QTimer)
QWidget = _compat(QtWidgets.QWidget)
QFrame = _compat(QtWidgets.QFrame)
QLabel = _compat(QtWidgets.QLabel)
QPushButton = _compat(QtWidgets.QPushButton)
QToolButton = _compat(QtWidgets.QToolButton)
QCheckBox = _compat(QtWidgets.QCheckBox)
QRadioButton = _compat(QtWidgets.QRadioButton)
QComboBox = _compat(QtWidgets.QComboBox)
QLineEdit = _compat(QtWidgets.QLineEdit)
QTextEdit = _compat(QtWidgets.QTextEdit)
QSpinBox = _compat(QtWidgets.QSpinBox)
QDoubleSpinBox = _compat(QtWidgets.QDoubleSpinBox)
QSlider = _compat(QtWidgets.QSlider)
QProgressBar = _compat(QtWidgets.QProgressBar)
QGroupBox = _compat(QtWidgets.QGroupBox)

WIDGET_CLASSES = {c.__name__: c for c in (QWidget, QFrame, QLabel, QPushButton, QToolButton, QCheckBox, QRadioButton, QComboBox,
                                          QLineEdit, QTextEdit, QSpinBox, QDoubleSpinBox, QSlider, QProgressBar, QGroupBox)}
"""Classes QUiLoader builds from; the ctk and MRML layers add theirs."""


# ---------------------------------------------------------------------- settings
class QSettings:
    """In-memory application settings shared by every ``QSettings()`` of one test (the harness
    clears them); never the user's real settings file."""

    store: dict = {}

    def value(self, key, default=None):
        return QSettings.store.get(key, default)

    def setValue(self, key, value) -> None:
        QSettings.store[key] = value

    def contains(self, key) -> bool:
        return key in QSettings.store

    def remove(self, key) -> None:
        QSettings.store.pop(key, None)


# ---------------------------------------------------------------------- .ui files
def _flags_value(text: str) -> int:
    """'ctkPathLineEdit::Dirs|ctkPathLineEdit::Readable' as a number (the names mirror QDir::Filter)."""
    value = 0
    for part in text.split("|"):
        value |= QtCore.QDir.Filter[part.split("::")[-1].strip()].value
    return value


class QUiLoader(_PySideUiLoader):
    """Loads a ``.ui`` file with this harness's classes (see the module docstring)."""

    def createWidget(self, className, parent=None, name=""):
        cls = WIDGET_CLASSES.get(className)
        if cls is None:
            return super().createWidget(className, parent, name)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget

    def load(self, device, parentWidget=None):
        if isinstance(device, str):
            f = QtCore.QFile(device)
            f.open(QtCore.QFile.ReadOnly)
            device = f
        root = ET.fromstring(bytes(device.readAll()).decode("utf-8"))
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        for prop in root.iter("property"):  # flag sets of custom widgets (PySide6 cannot resolve them)
            s = prop.find("set")
            if s is not None and (s.text or "").startswith("ctkPathLineEdit::"):
                prop.remove(s)
                ET.SubElement(prop, "number").text = str(_flags_value(s.text))
        buffer = QtCore.QBuffer()
        buffer.setData(ET.tostring(root, encoding="utf-8"))
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = super().load(buffer, parentWidget) if parentWidget is not None else super().load(buffer)
        if widget is None:
            return None
        for c in (connections if connections is not None else []):
            sender = _find(widget, c.findtext("sender"))
            receiver = _find(widget, c.findtext("receiver"))
            slot_name = _SIGNATURE.match(c.findtext("slot")).group(1)
            sender.connect(c.findtext("signal"), getattr(receiver, slot_name))
        return widget


def _find(root, name):
    if QObject.objectName(root) == name:
        return root
    found = root.findChild(QtCore.QObject, name)
    if found is None:
        raise ValueError(f"the .ui file connects '{name}', which it does not define")
    return found


# ---------------------------------------------------------------------- everything else
_PYSIDE = (QtCore, QtGui, QtWidgets)


def __getattr__(name):
    for module in _PYSIDE:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'qt' (harness) has no attribute {name!r}")
