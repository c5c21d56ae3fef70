"""The ``ctk`` widgets the LDAE panel uses, rebuilt on PySide6 with CTK's observable behaviour.

The slider is the one that matters: ``ctkSliderWidget`` here follows CTK's
``Libs/Widgets/ctkSliderWidget.cpp`` and ``ctkDoubleSlider.cpp`` (read at commontk/CTK, commits
07a5028 and 3bb4508; written anew here, not copied), namely:

* an inner ``ctkDoubleSlider`` (a ``QSlider`` stepping in ``singleStep`` units, which keeps its
  own double value and emits ``valueChanged(double)`` only when that value changes) and a spin box;
* ``sliderPressed()`` starts a change (when tracking is off: the value before it is kept and
  ``value`` keeps returning it), ``sliderReleased()`` ends it and emits ``valueChanged`` once if the
  value moved;
* every change of the inner slider's value emits ``valueIsChanging(double)`` when tracking is off,
  and ``valueChanged(double)`` unless a press is in progress. So with tracking off, a drag gives
  ``valueIsChanging`` per step and one ``valueChanged`` at release, while ``setValue`` from code,
  a keyboard step or a wheel step give both signals at once;
* a left-button press and release on the spin box start and end a change too (CTK's event filter).

``ctkCollapsibleButton`` and ``ctkPathLineEdit`` keep only what the panel reads and writes.
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Property, Signal

from . import qt_compat as qt


class ctkDoubleSlider(qt.QWidget):
    """A QSlider in units of ``singleStep`` holding a double value (CTK's ctkDoubleSlider)."""

    valueChanged = Signal(float)
    sliderMoved = Signal(float)
    sliderPressed = Signal()
    sliderReleased = Signal()
    rangeChanged = Signal(float, float)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, self)
        self._slider.setObjectName("Slider")
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._slider)
        self._min, self._max, self._step, self._page = 0.0, 100.0, 1.0, 10.0
        self._offset, self._value, self._setting_range = 0.0, 0.0, False
        self._slider.setRange(0, 100)
        self._slider.valueChanged.connect(self._on_int_value)
        self._slider.sliderMoved.connect(lambda i: self.sliderMoved.emit(self._safe_from_int(i)))
        self._slider.sliderPressed.connect(self.sliderPressed.emit)
        self._slider.sliderReleased.connect(self.sliderReleased.emit)

    # int <-> double in steps of singleStep, with an offset so a value between steps survives
    def _to_int(self, v: float) -> int:
        return int(round(max(-2**31, min(2**31 - 1, v / self._step))))

    def _safe_from_int(self, i: int) -> float:
        return min(self._max, max(self._min, self._step * (self._offset + i)))

    def _update_offset(self, v: float) -> None:
        self._offset = v / self._step - self._to_int(v)

    def qslider(self):
        """The inner QSlider (what the mouse, keyboard and wheel act on)."""
        return self._slider

    def _on_int_value(self, i: int) -> None:
        v = self._safe_from_int(i)
        if v == self._value:
            return
        self._value = v
        self.valueChanged.emit(v)

    def value(self) -> float:
        return self._value

    def setValue(self, v: float) -> None:
        v = min(self._max, max(self._min, float(v)))
        self._update_offset(v)
        i = self._to_int(v)
        if i != self._slider.value():
            self._slider.setValue(i)  # -> _on_int_value
        else:
            old, self._value = self._value, v
            if abs(v - old) > self._step * 1e-9:
                self.valueChanged.emit(v)

    def setRange(self, lo: float, hi: float) -> None:
        self._min, self._max = float(lo), float(hi)
        if self._min >= self._value:
            self._update_offset(self._min)
        if self._max <= self._value:
            self._update_offset(self._max)
        self._setting_range = True
        self._slider.setRange(self._to_int(lo), self._to_int(hi))
        self._setting_range = False
        self.rangeChanged.emit(self._min, self._max)
        self.setValue(self._value)

    def minimum(self) -> float:
        return self._min

    def maximum(self) -> float:
        return self._max

    def singleStep(self) -> float:
        return self._step

    def setSingleStep(self, step: float) -> None:
        self._step = float(step)
        self._update_offset(self._value)
        blocked = self._slider.blockSignals(True)
        self._slider.setRange(self._to_int(self._min), self._to_int(self._max))
        self._slider.setValue(self._to_int(self._value))
        self._slider.setPageStep(self._to_int(self._page))
        self._slider.blockSignals(blocked)

    def setPageStep(self, step: float) -> None:
        self._page = float(step)
        self._slider.setPageStep(self._to_int(step))


class ctkSliderWidget(qt.QWidget):
    """Slider + spin box with CTK's tracking and ``valueIsChanging`` rules (module docstring)."""

    valueChanged = Signal(float)
    valueIsChanging = Signal(float)
    decimalsChanged = Signal(int)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._doubleSlider = ctkDoubleSlider(self)
        self._doubleSlider.setObjectName("Slider")
        self._spin = QtWidgets.QDoubleSpinBox(self)
        self._spin.setObjectName("SpinBox")
        layout.addWidget(self._doubleSlider, 1)
        layout.addWidget(self._spin)
        self._tracking, self._changing, self._before = True, False, 0.0
        self._block_set_slider = False
        self._doubleSlider.setRange(self._spin.minimum(), self._spin.maximum())
        self._spin.valueChanged.connect(self._set_slider_value)
        self._doubleSlider.sliderPressed.connect(self._start_changing)
        self._doubleSlider.sliderReleased.connect(self._stop_changing)
        self._doubleSlider.valueChanged.connect(self._set_spin_value)
        self._spin.installEventFilter(self)

    # -- the methods PythonQt shows (slider() / spinBox() as in CTK)
    def slider(self) -> ctkDoubleSlider:
        return self._doubleSlider

    def spinBox(self):
        return self._spin

    def _start_changing(self) -> None:
        if self._tracking:
            return
        self._before = self.getValue()
        self._changing = True

    def _stop_changing(self) -> None:
        if self._tracking:
            return
        self._changing = False
        if abs(self.getValue() - self._before) > self.getSingleStep() * 1e-9:
            self.valueChanged.emit(self.getValue())

    def _set_slider_value(self, v: float) -> None:
        if not self._block_set_slider:
            self._doubleSlider.setValue(v)

    def _set_spin_value(self, v: float) -> None:
        blocked, self._block_set_slider = self._block_set_slider, True
        self._spin.setValue(v)
        self._block_set_slider = blocked
        if not self._tracking:
            self.valueIsChanging.emit(v)
        if not self._changing:
            self.valueChanged.emit(v)

    def eventFilter(self, watched, event) -> bool:
        if watched is self._spin and event.type() in (QtCore.QEvent.MouseButtonPress, QtCore.QEvent.MouseButtonRelease):
            if event.button() == QtCore.Qt.LeftButton:
                (self._start_changing if event.type() == QtCore.QEvent.MouseButtonPress else self._stop_changing)()
        return super().eventFilter(watched, event)

    # -- properties (the .ui sets them; PythonQt reads and writes them as attributes)
    def getValue(self) -> float:
        return self._before if self._changing else self._doubleSlider.value()

    def setValue(self, v: float) -> None:
        changing, self._changing = self._changing, False
        self._spin.setValue(float(v))
        self._changing = changing

    def getMinimum(self) -> float:
        return self._doubleSlider.minimum()

    def setMinimum(self, v: float) -> None:
        blocked, self._block_set_slider = self._block_set_slider, True
        self._spin.setMinimum(float(v))
        self._block_set_slider = blocked
        self._doubleSlider.setRange(self._spin.minimum(), max(self._spin.minimum(), self._doubleSlider.maximum()))

    def getMaximum(self) -> float:
        return self._doubleSlider.maximum()

    def setMaximum(self, v: float) -> None:
        blocked, self._block_set_slider = self._block_set_slider, True
        self._spin.setMaximum(float(v))
        self._block_set_slider = blocked
        self._doubleSlider.setRange(min(self._doubleSlider.minimum(), self._spin.maximum()), self._spin.maximum())

    def setRange(self, lo: float, hi: float) -> None:
        blocked, self._block_set_slider = self._block_set_slider, True
        self._spin.setRange(float(lo), float(hi))
        self._block_set_slider = blocked
        self._doubleSlider.setRange(self._spin.minimum(), self._spin.maximum())

    def getSingleStep(self) -> float:
        return self._doubleSlider.singleStep()

    def setSingleStep(self, v: float) -> None:
        self._spin.setSingleStep(float(v))
        self._doubleSlider.setSingleStep(self._spin.singleStep())

    def getPageStep(self) -> float:
        return self._doubleSlider._page

    def setPageStep(self, v: float) -> None:
        self._doubleSlider.setPageStep(float(v))

    def getDecimals(self) -> int:
        return self._spin.decimals()

    def setDecimals(self, n: int) -> None:
        self._spin.setDecimals(int(n))
        self._doubleSlider.setRange(self._spin.minimum(), self._spin.maximum())
        self._set_spin_value(self._doubleSlider.value())
        self.decimalsChanged.emit(self._spin.decimals())

    def hasTracking(self) -> bool:
        return self._tracking

    def setTracking(self, on: bool) -> None:
        self._tracking = bool(on)

    value = Property(float, getValue, setValue)
    minimum = Property(float, getMinimum, setMinimum)
    maximum = Property(float, getMaximum, setMaximum)
    singleStep = Property(float, getSingleStep, setSingleStep)
    pageStep = Property(float, getPageStep, setPageStep)
    decimals = Property(int, getDecimals, setDecimals)
    tracking = Property(bool, hasTracking, setTracking)


class ctkCollapsibleButton(qt.QWidget):
    """A titled section that can be collapsed (what the panel sets: text, collapsed)."""

    contentsCollapsed = Signal(bool)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._text, self._collapsed = "", False

    def getText(self) -> str:
        return self._text

    def setText(self, t: str) -> None:
        self._text = t

    def getCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, c: bool) -> None:
        if bool(c) != self._collapsed:
            self._collapsed = bool(c)
            self.contentsCollapsed.emit(self._collapsed)

    text = Property(str, getText, setText)
    collapsed = Property(bool, getCollapsed, setCollapsed)


class ctkPathLineEdit(qt.QWidget):
    """A path field with a history (currentPath, settingKey, filters, nameFilters)."""

    currentPathChanged = Signal(str)
    _cpp_signals = {"currentPathChanged(QString)": "currentPathChanged(QString)"}

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._path, self._setting_key, self._filters, self._name_filters = "", "", 0, []
        self.history: list[str] = []

    def getCurrentPath(self) -> str:
        return self._path

    def setCurrentPath(self, p: str) -> None:
        if p != self._path:
            self._path = p
            self.currentPathChanged.emit(p)

    def addCurrentPathToHistory(self) -> None:
        if self._path and self._path not in self.history:
            self.history.insert(0, self._path)

    def getSettingKey(self) -> str:
        return self._setting_key

    def setSettingKey(self, k: str) -> None:
        self._setting_key = k

    def getFilters(self) -> int:
        return self._filters

    def setFilters(self, f: int) -> None:
        self._filters = int(f)

    def getNameFilters(self) -> list:
        return list(self._name_filters)

    def setNameFilters(self, f) -> None:
        self._name_filters = list(f)

    currentPath = Property(str, getCurrentPath, setCurrentPath)
    settingKey = Property(str, getSettingKey, setSettingKey)
    filters = Property(int, getFilters, setFilters)
    nameFilters = Property(list, getNameFilters, setNameFilters)


qt.WIDGET_CLASSES.update({c.__name__: c for c in (ctkSliderWidget, ctkDoubleSlider, ctkCollapsibleButton, ctkPathLineEdit)})
