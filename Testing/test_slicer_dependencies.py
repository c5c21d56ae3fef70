"""What the module installs into Slicer's Python on first use (LDAELib.slicer.dependencies and
LDAE/Resources/requirements.txt), with the PyTorch extension and slicer.packaging as fakes."""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from LDAELib.errors import LDAEError
from LDAELib.slicer import dependencies

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "LDAE" / "Resources" / "requirements.txt"

SHIPPED_BY_SLICER = {"numpy", "scipy", "SimpleITK", "vtk"}
FROM_THE_PYTORCH_EXTENSION = {"torch"}
DISTRIBUTION = {"yaml": "pyyaml"}  # import name -> distribution name, where they differ
NOT_IN_THE_WORKER = ("training", "evaluation", "slicer")  # LDAELib parts the worker never imports

# Requires-Dist of monai's wheels (read from the wheels on PyPI): the torch each release needs,
# and the Python it runs on.
MONAI_TORCH = {"1.5.1": ("2.4.1", "3.9"), "1.5.2": ("2.4.1", "3.9"), "1.6.0": ("2.8.0", "3.10"), "1.6.1": ("2.8.0", "3.10")}


class FakePyTorchUtils(types.ModuleType):
    """The PyTorch extension's module: ``torchInstalled`` imports torch (recorded), ``installTorch`` records."""

    def __init__(self, after: str | None = "2.9.0", decline: bool = False) -> None:
        super().__init__("PyTorchUtils")
        self.calls, self.imported_torch = [], False
        outer = self

        class PyTorchUtilsLogic:
            @staticmethod
            def torchInstalled():
                outer.imported_torch = True
                return True

            def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
                outer.calls.append(torchVersionRequirement)
                if decline:
                    return None
                outer.installed = after
                return types.SimpleNamespace(__version__=after)

        self.PyTorchUtilsLogic = PyTorchUtilsLogic
        self.installed = None


def versions(**installed):
    def version_of(name):
        return installed.get(name.lower().replace("-", "_"))

    return version_of


# ---------------------------------------------------------------------- what is listed
def _third_party_imports() -> dict[str, set]:
    found: dict[str, set] = {}
    for path in (REPO / "LDAELib").rglob("*.py"):
        if path.relative_to(REPO / "LDAELib").parts[0] in NOT_IN_THE_WORKER:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "files" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                names = [node.args[0].value]  # importlib.resources.files("pkg"): data read from an installed package
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "LDAELib":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_package_the_worker_uses_ships_with_slicer_or_is_listed():
    listed = {Requirement(r).name.lower() for r in dependencies.read_requirements(REQUIREMENTS)}
    for module, where in _third_party_imports().items():
        if module in SHIPPED_BY_SLICER | FROM_THE_PYTORCH_EXTENSION:
            continue
        assert DISTRIBUTION.get(module, module).lower() in listed, f"{module} (used in {sorted(where)[:3]}) is not in requirements.txt"


def test_the_requirements_never_bring_torch_or_simpleitk():
    names = {Requirement(r).name.lower() for r in dependencies.read_requirements(REQUIREMENTS)}
    assert not names & {"torch", "simpleitk"}
    assert [s.lower() for s in dependencies.SKIP_PACKAGES] == ["torch", "simpleitk"]


@pytest.mark.parametrize("python", ["3.9", "3.12"])
def test_the_torch_asked_for_is_enough_for_every_monai_the_requirements_allow(python):
    env = {"python_version": python, "python_full_version": python + ".0"}
    monai = [Requirement(r) for r in dependencies.read_requirements(REQUIREMENTS) if r.startswith("monai")]
    applicable = [r for r in monai if r.marker is None or r.marker.evaluate(env)]
    assert len(applicable) == 1, "one monai range per Python version"
    spec = applicable[0].specifier
    assert any(s.operator in ("<", "<=", "~=") for s in spec), "monai needs an upper bound, or its torch need is unknown"
    allowed = [v for v, (_, needs_python) in MONAI_TORCH.items() if v in spec and Version(python) >= Version(needs_python)]
    assert allowed, f"no known monai release fits {spec} on Python {python}"
    minimum = dependencies.torch_minimum(tuple(int(x) for x in python.split(".")))
    for v in allowed:
        assert Version(minimum) >= Version(MONAI_TORCH[v][0]), f"monai {v} needs torch >= {MONAI_TORCH[v][0]}, LDAE asks {minimum}"


# ---------------------------------------------------------------------- torch
def test_torch_is_checked_from_its_metadata_never_imported():
    fake = FakePyTorchUtils()
    assert dependencies.ensure_torch(fake, python=(3, 12), version_of=versions(torch="2.13.0+cpu")) == "2.13.0+cpu"
    assert not fake.imported_torch and fake.calls == []


def test_an_old_torch_is_upgraded_through_the_pytorch_extension():
    fake = FakePyTorchUtils(after="2.9.1")
    installed = {"torch": "2.3.1"}
    version_of = lambda name: fake.installed if (name == "torch" and fake.installed) else installed.get(name)  # noqa: E731
    assert dependencies.ensure_torch(fake, python=(3, 12), version_of=version_of) == "2.9.1"
    assert fake.calls == [">=2.8.0"]


def test_a_missing_torch_is_installed_at_the_minimum_for_python_3_9():
    fake = FakePyTorchUtils(after="2.4.1")
    state = {}
    version_of = lambda name: fake.installed if name == "torch" else state.get(name)  # noqa: E731
    dependencies.ensure_torch(fake, python=(3, 9), version_of=version_of)
    assert fake.calls == [">=2.4.1"]


def test_without_the_pytorch_extension_the_message_says_what_to_install():
    with pytest.raises(LDAEError, match="PyTorch extension"):
        dependencies.ensure_torch(None, python=(3, 12), version_of=versions())


def test_declining_the_torch_install_stops_with_a_clear_message():
    with pytest.raises(LDAEError, match="2.8.0 or later"):
        dependencies.ensure_torch(FakePyTorchUtils(decline=True), python=(3, 12), version_of=versions())


# ---------------------------------------------------------------------- the other packages
def test_slicer_5_12_installs_through_pip_ensure_skipping_torch_and_simpleitk():
    calls = []
    packaging = types.SimpleNamespace(load_requirements=lambda path: ["parsed " + Path(path).name],
                                      pip_ensure=lambda reqs, **kw: calls.append((reqs, kw)))
    missing = dependencies.ensure_packages(REQUIREMENTS, packaging=packaging, version_of=versions(nibabel="5.3.2"))
    assert "pyyaml>=6.0" in missing and "nilearn>=0.10" in missing and not any(m.startswith("nibabel") for m in missing)
    (reqs, kw), = calls
    assert reqs == ["parsed requirements.txt"]
    assert kw == {"skip_packages": ["torch", "SimpleITK"], "requester": "LDAE", "prompt_install": True}


def test_before_5_12_it_asks_then_pip_installs_each_missing_package_monai_without_dependencies():
    installs, asked = [], []
    dependencies.ensure_packages(REQUIREMENTS, packaging=None, pip_install=installs.append,
                                 confirm=lambda text: asked.append(text) or True, version_of=versions(safetensors="0.4.5", tqdm="4.67.1"))
    assert len(asked) == 1 and "monai" in asked[0]
    monai = [i for i in installs if i[0].startswith("monai")]
    assert monai and monai[0][1:] == ["--no-deps"]
    assert ["pyyaml>=6.0"] in installs and not any(i[0].startswith(("safetensors", "tqdm", "torch")) for i in installs)


def test_declining_the_packages_installs_nothing():
    installs = []
    with pytest.raises(LDAEError, match="cannot run without"):
        dependencies.ensure_packages(REQUIREMENTS, pip_install=installs.append, confirm=lambda text: False, version_of=versions())
    assert installs == []


def test_nothing_is_asked_when_everything_is_installed():
    everything = {Requirement(r).name.lower(): "99.0" for r in dependencies.read_requirements(REQUIREMENTS)}
    everything["monai"] = "1.6.1" if sys.version_info >= (3, 10) else "1.5.2"
    assert dependencies.ensure_packages(REQUIREMENTS, pip_install=lambda r: pytest.fail("installed"), confirm=lambda t: pytest.fail("asked"),
                                        version_of=lambda name: everything.get(name.lower())) == []


def test_no_code_refers_to_slicer_pydeps_which_no_slicer_release_has():
    sources = [REPO / "LDAE" / "LDAE.py", *(REPO / "LDAELib" / "slicer").glob("*.py")]
    assert not [p.name for p in sources if re.search(r"slicer\.pydeps", p.read_text(encoding="utf-8"))]
