"""The harness itself (Testing/slicer_harness): the behaviour of Slicer, CTK and PythonQt that the
module tests rely on, checked against what their sources say, so a module test cannot pass on a
harness that is kinder than the application."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("slicer_core", reason="slicer-core has wheels for CPython 3.11 only")
pytest.importorskip("PySide6.QtUiTools")
os.environ["QT_QPA_PLATFORM"] = "offscreen"

from PySide6 import QtCore  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from slicer_harness import SlicerHarness, ctk_widgets, qapplication, qt_compat  # noqa: E402


@pytest.fixture
def app():
    return qapplication()


def alpha_slider(tracking: bool = False):
    """The panel's alpha slider as LDAE.ui sets it up (in the .ui's property order)."""
    w = ctk_widgets.ctkSliderWidget()
    w.singleStep, w.pageStep, w.minimum, w.maximum, w.value, w.decimals, w.tracking = 0.1, 1.0, -5.0, 5.0, 2.0, 1, tracking
    log = []
    w.connect("valueIsChanging(double)", lambda v: log.append(("changing", round(v, 2))))
    w.connect("valueChanged(double)", lambda v: log.append(("changed", round(v, 2))))
    return w, log


# ---------------------------------------------------------------------- ctkSliderWidget (ctkSliderWidget.cpp)
def test_without_tracking_set_value_emits_both_signals(app):
    w, log = alpha_slider()
    w.value = -1.0
    assert log == [("changing", -1.0), ("changed", -1.0)]


def test_without_tracking_a_keyboard_step_emits_both_signals(app):
    w, log = alpha_slider()
    w.show()
    s = w.slider().qslider()
    s.setFocus()
    QTest.keyClick(s, QtCore.Qt.Key_Right)
    assert log == [("changing", 2.1), ("changed", 2.1)]


def test_without_tracking_a_mouse_drag_emits_changing_then_one_changed_at_release(app):
    from PySide6.QtWidgets import QStyle, QStyleOptionSlider

    w, log = alpha_slider()
    w.resize(300, 30)
    w.show()
    s = w.slider().qslider()
    opt = QStyleOptionSlider()
    s.initStyleOption(opt)
    handle = s.style().subControlRect(QStyle.CC_Slider, opt, QStyle.SC_SliderHandle, s).center()
    QTest.mousePress(s, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, handle)
    QTest.mouseMove(s, handle + QtCore.QPoint(20, 0))
    QTest.mouseMove(s, handle + QtCore.QPoint(40, 0))
    assert w.value == 2.0  # while changing, value stays the value before the drag
    QTest.mouseRelease(s, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, handle + QtCore.QPoint(40, 0))
    kinds = [k for k, _ in log]
    assert kinds[:-1] == ["changing"] * (len(kinds) - 1) and len(kinds) >= 3 and kinds[-1] == "changed"
    assert log[-1][1] == round(w.value, 2) > 2.0


def test_with_tracking_there_is_no_value_is_changing(app):
    w, log = alpha_slider(tracking=True)
    w.value = 1.0
    assert log == [("changed", 1.0)]


def test_setting_the_same_value_emits_nothing(app):
    w, log = alpha_slider()
    w.value = 2.0
    assert log == []


# ---------------------------------------------------------------------- PythonQt conventions
def test_qt_properties_are_attributes_and_win_over_methods(app):
    label = qt_compat.QLabel()
    label.text = "hello"
    assert label.text == "hello" and label.enabled is True
    combo = qt_compat.QComboBox()
    combo.addItem("a", "x")
    combo.addItem("b", "y")
    combo.currentIndex = 1
    assert (combo.currentText, combo.currentData) == ("b", "y")


def test_connect_takes_cpp_signatures_and_passes_as_many_arguments_as_the_slot_takes(app):
    button = qt_compat.QPushButton()
    got = []
    button.connect("clicked(bool)", lambda: got.append("no args"))
    button.connect("clicked(bool)", lambda checked: got.append(checked))
    button.click()
    assert got == ["no args", False]


def test_a_signal_the_object_does_not_have_is_an_error(app):
    with pytest.raises(ValueError, match="has no signal"):
        qt_compat.QPushButton().connect("valueChanged(double)", lambda v: None)


def test_the_ui_file_loads_with_exact_classes_and_its_connections(app, tmp_path):
    harness = SlicerHarness(tmp_path).install()
    try:
        widget = harness.open_module()
        assert type(widget.ui.inputRegisteredCheckBox) is qt_compat.QCheckBox  # parameterNodeWrapper picks connectors by exact type
        assert widget.ui.inputVolumeSelector.mrmlScene() is harness.scene  # .ui connection mrmlSceneChanged -> setMRMLScene
    finally:
        harness.uninstall()


# ---------------------------------------------------------------------- the application
def test_the_sequences_toolbar_starts_hidden_and_only_show_sequence_browser_shows_it(tmp_path):
    harness = SlicerHarness(tmp_path).install()
    try:
        browser = harness.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode")
        toolbar = harness.sequences.toolBar()
        assert not toolbar.isVisible()
        toolbar.setActiveBrowserNode(browser)
        assert not toolbar.isVisible()
        harness.sequences.showSequenceBrowser(browser)
        assert toolbar.isVisible() and toolbar.activeBrowserNode() is browser
    finally:
        harness.uninstall()


def test_uninstall_puts_everything_back(tmp_path):
    import sys

    import slicer

    before = (sys.modules.get("qt"), getattr(slicer, "app", None), getattr(slicer, "mrmlScene", None), slicer.util.errorDisplay)
    SlicerHarness(tmp_path).install().uninstall()
    assert (sys.modules.get("qt"), getattr(slicer, "app", None), getattr(slicer, "mrmlScene", None), slicer.util.errorDisplay) == before
