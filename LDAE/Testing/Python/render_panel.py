"""Render the module panel (Resources/UI/LDAE.ui) to a PNG without Slicer, for docs and tests.

    QT_QPA_PLATFORM=offscreen python LDAE/Testing/Python/render_panel.py Resources/Screenshots/ldae_panel.png

PySide6 loads the .ui; Slicer's custom widgets (ctkCollapsibleButton, ctkSliderWidget,
ctkPathLineEdit, qMRMLNodeComboBox, qMRMLWidget) are drawn by small stand-ins made of plain Qt
widgets, so the picture shows the real layout, labels, tooltips and defaults of the .ui file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

UI = Path(__file__).resolve().parents[2] / "Resources" / "UI" / "LDAE.ui"


def _classes():
    from PySide6.QtCore import Property, Qt
    from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QGroupBox, QHBoxLayout, QLineEdit, QSlider, QToolButton,
                                   QWidget)

    class qMRMLWidget(QWidget):
        pass

    class ctkCollapsibleButton(QGroupBox):
        def __init__(self, parent=None):
            super().__init__(parent)
            self._text, self._collapsed = "", False
            self.setStyleSheet("QGroupBox { font-weight: bold; border: 1px solid #b8b8b8; border-radius: 3px; margin-top: 1.4em; padding-top: 4px; }"
                               "QGroupBox::title { subcontrol-origin: margin; left: 6px; }")

        def _title(self):
            self.setTitle(("▸ " if self._collapsed else "▾ ") + self._text)

        def getText(self):
            return self._text

        def setText(self, value):
            self._text = value
            self._title()

        def getCollapsed(self):
            return self._collapsed

        def setCollapsed(self, value):
            self._collapsed = bool(value)
            self._title()

        text = Property(str, getText, setText)
        collapsed = Property(bool, getCollapsed, setCollapsed)

    class ctkPathLineEdit(QWidget):
        def __init__(self, parent=None):
            super().__init__(parent)
            lay = QHBoxLayout(self)
            lay.setContentsMargins(0, 0, 0, 0)
            self.edit = QLineEdit(self)
            self.button = QToolButton(self)
            self.button.setText("…")
            lay.addWidget(self.edit)
            lay.addWidget(self.button)

        def getPath(self):
            return self.edit.text()

        def setPath(self, value):
            self.edit.setText(value)

        currentPath = Property(str, getPath, setPath)

    class ctkSliderWidget(QWidget):
        def __init__(self, parent=None):
            super().__init__(parent)
            lay = QHBoxLayout(self)
            lay.setContentsMargins(0, 0, 0, 0)
            self.slider = QSlider(Qt.Horizontal, self)
            self.spin = QDoubleSpinBox(self)
            lay.addWidget(self.slider, 1)
            lay.addWidget(self.spin)
            self._scale = 10
            self.slider.valueChanged.connect(lambda v: self.spin.setValue(v / self._scale))

        def _range(self):
            self.slider.setRange(int(self.spin.minimum() * self._scale), int(self.spin.maximum() * self._scale))
            self.slider.setValue(int(round(self.spin.value() * self._scale)))

        def getMinimum(self):
            return self.spin.minimum()

        def setMinimum(self, v):
            self.spin.setMinimum(v)
            self._range()

        def getMaximum(self):
            return self.spin.maximum()

        def setMaximum(self, v):
            self.spin.setMaximum(v)
            self._range()

        def getValue(self):
            return self.spin.value()

        def setValue(self, v):
            self.spin.setValue(v)
            self._range()

        def getDecimals(self):
            return self.spin.decimals()

        def setDecimals(self, v):
            self.spin.setDecimals(v)

        def getStep(self):
            return self.spin.singleStep()

        def setStep(self, v):
            self.spin.setSingleStep(v)

        minimum = Property(float, getMinimum, setMinimum)
        maximum = Property(float, getMaximum, setMaximum)
        value = Property(float, getValue, setValue)
        decimals = Property(int, getDecimals, setDecimals)
        singleStep = Property(float, getStep, setStep)

    class qMRMLNodeComboBox(QComboBox):
        pass

    return [qMRMLWidget, ctkCollapsibleButton, ctkPathLineEdit, ctkSliderWidget, qMRMLNodeComboBox]


def load_panel(ui_path: Path = UI, stand_ins: bool = True):
    """(QApplication, panel widget). Without ``stand_ins`` custom widgets load as their base class."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    loader = QUiLoader()
    if stand_ins:
        for cls in _classes():
            loader.registerCustomWidget(cls)
    f = QFile(str(ui_path))
    if not f.open(QFile.ReadOnly):
        raise OSError(f"cannot open {ui_path}")
    try:
        panel = loader.load(f)
    finally:
        f.close()
    if panel is None:
        raise RuntimeError(f"QUiLoader could not load {ui_path}: {loader.errorString()}")
    return app, panel


def render(out_png: str | Path, ui_path: Path = UI, width: int = 440) -> Path:
    """Fill the panel as a user sees it after choosing a folder and an input, and save a PNG."""
    from PySide6.QtWidgets import QComboBox, QLabel, QProgressBar, QPushButton, QWidget

    app, panel = load_panel(ui_path)
    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    model = find(QComboBox, "modelSourceComboBox")
    model.addItems(["Demo model (not installed yet)", "Folder: the authors' weights or an LDAE bundle"])
    model.setCurrentIndex(1)
    find(QWidget, "modelPathLineEdit").setProperty("currentPath", "~/ldae_weights")
    find(QComboBox, "deviceComboBox").addItems(["auto", "cpu", "cuda"])
    find(QLabel, "modelStatusLabel").setText("Choose the model folder, then Load model: the worker process keeps it loaded.")
    find(QLabel, "licenceLabel").setText("Licence: shown here once loaded (the authors' weights: non-commercial research use).")
    try:
        from importlib.metadata import version

        torch_text = f"torch {version('torch')} installed · device chosen when the model loads"
    except Exception:
        torch_text = "PyTorch is installed through the PyTorch extension on first use"
    find(QLabel, "diagnosticsLabel").setText(torch_text)
    for name, items in (("inputVolumeSelector", ["visit1"]), ("timepointASelector", ["visit1"]), ("timepointBSelector", ["visit2"])):
        find(QComboBox, name).addItems(items)
    find(QComboBox, "directionComboBox").addItems(["cn (+alpha → CN, −alpha → AD)", "Custom probe file…"])
    bar = find(QProgressBar, "progressBar")
    bar.setMaximum(22)
    bar.setValue(9)
    find(QLabel, "statusLabel").setText("inversion: step 9/22, about 14 s left")
    find(QPushButton, "cancelButton").setEnabled(True)
    for box in panel.findChildren(QWidget):
        if type(box).__name__ == "ctkCollapsibleButton" and box.property("collapsed"):
            for child in box.findChildren(QWidget):
                child.setVisible(False)
            box.setFlat(True)
            box.setMaximumHeight(24)
    panel.setFixedWidth(width)
    panel.layout().activate()
    height = panel.layout().totalHeightForWidth(width)
    panel.setFixedHeight(max(height, panel.layout().totalMinimumSize().height()))
    pix = panel.grab()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not pix.save(str(out_png), "PNG"):
        raise OSError(f"could not write {out_png}")
    del app
    return out_png


if __name__ == "__main__":
    print(render(sys.argv[1] if len(sys.argv) > 1 else "ldae_panel.png"))
