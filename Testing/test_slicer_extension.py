"""The extension's packaging, checked as the Slicer Extensions Index CI checks it: the catalog
entry, the CMake project name and metadata, the files CMake installs, the icon and the licence."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cmake_set(text: str, name: str) -> str:
    m = re.search(rf'set\({name}\s+"([^"]*)"\)', text)
    assert m, f"{name} not set"
    return m.group(1)


def test_catalog_entry_matches_the_cmake_project():
    entry = json.loads((REPO / "LDAE.json").read_text())
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/") and "catalog-entry-schema" in entry["$schema"]
    assert entry["category"] == "Neuroimaging" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].endswith(".git") and "slicer" in entry["scm_url"].lower()
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(LDAE\)", cmake, re.M)
    assert cmake_set(cmake, "EXTENSION_CATEGORY") == entry["category"]
    assert cmake_set(cmake, "EXTENSION_DEPENDS") == "PyTorch"
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert cmake_set(cmake, key)
    assert cmake_set(cmake, "EXTENSION_ICONURL").endswith("/Resources/Icons/LDAE.png")  # the extension's own icon (top-level Resources/)
    assert cmake_set(cmake, "EXTENSION_SCREENSHOTURLS").endswith("Resources/Screenshots/ldae_panel.png")
    s4ext = (REPO / "LDAE.s4ext").read_text()
    assert "\ndepends PyTorch\n" in s4ext and "\ncategory Neuroimaging\n" in s4ext
    assert (REPO / "LICENSE").is_file()


def test_module_cmake_lists_existing_files():
    text = (REPO / "LDAE" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest" in text
    for rel in ("LDAE.py", "Resources/Icons/LDAE.png", "Resources/UI/LDAE.ui", "Resources/requirements.txt"):
        assert (REPO / "LDAE" / rel).is_file(), rel
    assert "LDAELib/*.py" in text  # the backend library is installed beside the module


def test_icon_is_a_128_pixel_png_and_the_screenshot_exists():
    png = (REPO / "LDAE" / "Resources" / "Icons" / "LDAE.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (128, 128)
    assert (REPO / "Resources" / "Screenshots" / "ldae_panel.png").is_file()


def test_requirements_never_bring_torch_and_pin_nothing_exactly():
    reqs = [l.strip() for l in (REPO / "LDAE" / "Resources" / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    names = {re.split(r"[<>=!~ \[]", r)[0].lower() for r in reqs}
    assert "torch" not in names and {"monai", "nibabel", "safetensors"} <= names
    assert not any("==" in r for r in reqs)
