"""The module panel: the .ui file loads offscreen in PySide6 with Slicer's custom widgets declared,
every widget the Python code uses exists in it, the parameter-node bindings match, the module
imports nothing heavy, and the panel renders to the screenshot used in the docs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "LDAE" / "LDAE.py"
UI = REPO / "LDAE" / "Resources" / "UI" / "LDAE.ui"
RENDER = REPO / "LDAE" / "Testing" / "Python" / "render_panel.py"

CUSTOM = {"ctkCollapsibleButton", "ctkPathLineEdit", "ctkSliderWidget", "qMRMLNodeComboBox", "qMRMLWidget"}
# which widget classes parameterNodeWrapper can bind to which parameter types (guiConnectors.py)
CONNECTORS = {"bool": {"QCheckBox", "QPushButton"}, "int": {"QSpinBox", "QSlider"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"},
              "str": {"QLineEdit", "QComboBox", "QTextEdit"}, "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}}
UNBOUND = {"direction"}  # filled from the loaded model's directions, kept in the parameter node by code


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def parameter_fields() -> dict[str, str]:
    """name -> base type name of the fields of LDAEParameterNode (from the source, without Slicer)."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LDAEParameterNode")
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            ann = stmt.annotation
            if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "Annotated":
                ann = ann.slice.elts[0]
            fields[stmt.target.id] = ann.id
    return fields


def bound_parameters() -> dict[str, str]:
    """SlicerParameterName -> widget class, from the .ui."""
    out = {}
    for name, w in ui_widgets().items():
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[p.find("string").text] = w.get("class")
    return out


def test_ui_file_loads_offscreen_with_slicer_widgets_declared():
    pytest.importorskip("PySide6.QtUiTools")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(RENDER.parent))
    from render_panel import load_panel

    _, panel = load_panel(UI, stand_ins=False)  # custom classes come up as their declared base class
    from PySide6.QtWidgets import QWidget

    loaded = {w.objectName() for w in panel.findChildren(QWidget)}
    assert set(ui_widgets()) - {"LDAE"} <= loaded
    root = ET.parse(UI).getroot()
    used = {w.get("class") for w in root.iter("widget")}
    declared = {c.findtext("class"): c for c in root.iter("customwidget")}
    assert used - {c for c in used if c.startswith("Q")} == CUSTOM
    assert CUSTOM <= set(declared)
    for name in CUSTOM:
        assert declared[name].findtext("extends") and declared[name].findtext("header") == f"{name}.h"
    # node selectors get the scene from the panel, as in Slicer's template
    receivers = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert receivers == {n for n, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}


def test_every_widget_the_module_uses_exists_in_the_ui():
    used = set(re.findall(r"\bui\.(\w+)", MODULE.read_text(encoding="utf-8")))  # self.ui.x and the local alias ui.x
    widgets = ui_widgets()
    assert used, "no widget references found"
    assert used - set(widgets) == set(), f"missing in LDAE.ui: {sorted(used - set(widgets))}"
    for name in used:
        cls = widgets[name].get("class")
        if name.endswith("Selector"):
            assert cls == "qMRMLNodeComboBox"
        if name.endswith("Button"):
            assert cls in ("QPushButton", "QToolButton")


def test_parameter_node_bindings_match_the_ui():
    fields, bound = parameter_fields(), bound_parameters()
    assert set(bound) <= set(fields), f"bound in the .ui but not parameters: {sorted(set(bound) - set(fields))}"
    assert set(fields) - set(bound) == UNBOUND
    for name, cls in bound.items():
        assert cls in CONNECTORS[fields[name]], f"{name}: {fields[name]} cannot bind to {cls}"


STUBS = textwrap.dedent('''
    import sys, types
    import slicer
    qt = types.ModuleType("qt")
    class QSettings:
        def value(self, key, default=None): return default
        def setValue(self, key, value): pass
        def contains(self, key): return False
    qt.QSettings = QSettings
    sys.modules["qt"] = qt
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    class ScriptedLoadableModule: pass
    class ScriptedLoadableModuleWidget: pass
    class ScriptedLoadableModuleTest: pass
    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None): pass
    for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleTest, ScriptedLoadableModuleLogic):
        setattr(slm, c.__name__, c)
    sys.modules["slicer.ScriptedLoadableModule"] = slm
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = lambda lo, hi: (lo, hi)
    sys.modules["slicer.parameterNodeWrapper"] = pnw
    packaging = types.ModuleType("slicer.packaging")
    calls = []
    packaging.load_requirements = lambda path: [l.strip() for l in open(path) if l.strip() and not l.startswith("#")]
    packaging.pip_ensure = lambda reqs, **kw: calls.append((reqs, kw))
    sys.modules["slicer.packaging"] = packaging
    i18n = types.ModuleType("slicer.i18n")  # Slicer >= 5.4
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = i18n
    ptu = types.ModuleType("PyTorchUtils")
    class PyTorchUtilsLogic:
        def torchInstalled(self): return True
    ptu.PyTorchUtilsLogic = PyTorchUtilsLogic
    sys.modules["PyTorchUtils"] = ptu
''')


def _run_with_stubs(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    pytest.importorskip("slicer_core")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "LDAE"), str(REPO)]))
    return subprocess.run([sys.executable, "-c", STUBS + textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO))


def test_module_import_is_light():
    proc = _run_with_stubs('''
        import LDAE
        heavy = [m for m in ("torch", "monai", "LDAELib.pipeline", "LDAELib.slicer.adapter", "nibabel") if m in sys.modules]
        assert not heavy, heavy
        assert LDAE.LDAEParameterNode.__annotations__["alpha"]
        print("ok")
    ''')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_console_logic_edits_and_interpolates_and_installs_through_pip_ensure(tmp_path):
    """``import LDAE; LDAE.LDAELogic().edit(...)`` as in the README, on a slicer-core scene."""
    pytest.importorskip("nibabel")
    from LDAELib.testing import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "tiny")
    proc = _run_with_stubs(f'''
        import numpy as np
        import slicer.util
        slicer.util.tempDirectory = lambda *a, **k: {str(tmp_path)!r}
        scene = slicer.vtkMRMLScene()
        seq_logic = slicer.vtkSlicerSequencesLogic(); seq_logic.SetMRMLScene(scene)
        from LDAELib.testing import phantom_brain
        from LDAELib.slicer import nodes as mrml
        def volume(name, seed, vent):
            data, affine = phantom_brain((45, 54, 45), 4.0, ventricle_scale=vent, seed=seed, intensity=80.0)
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            node.SetIJKToRASMatrix(mrml.numpy_to_matrix(affine))
            slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data.transpose(2, 1, 0)))
            return node
        import LDAE
        logic = LDAE.LDAELogic(modelPath={str(bundle)!r}, device="cpu")
        a, b = volume("visit1", 0, 1.0), volume("visit2", 1, 1.5)
        edited = logic.edit(a, "cn", -2.0, steps=2)
        assert edited.GetName() == "visit1 LDAE cn α=-2.0", edited.GetName()
        logic.adapter().sequences_logic = seq_logic
        frames = logic.interpolate(a, b, [0.5], steps=2)
        assert [f.GetName() for f in frames] == ["visit1→visit2 t=0.50"]
        reqs, kw = calls[0]
        assert kw["skip_packages"] == ["torch", "SimpleITK"] and kw["requester"] == "LDAE", kw
        assert any(r.startswith("monai") for r in reqs) and not any(r.startswith("torch") for r in reqs)
        logic.close()
        print("ok")
    ''')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_panel_renders_to_the_docs_screenshot(tmp_path):
    pytest.importorskip("PySide6.QtUiTools")
    proc = subprocess.run([sys.executable, str(RENDER), str(tmp_path / "panel.png")], capture_output=True, text=True,
                          env=dict(os.environ, QT_QPA_PLATFORM="offscreen"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = (tmp_path / "panel.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 400 and height >= 500
    assert (REPO / "Resources" / "Screenshots" / "ldae_panel.png").is_file()
