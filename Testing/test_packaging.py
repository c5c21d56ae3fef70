"""What a built extension and a pip install ship, and the Extensions Index entry, checked as the
index checks it.

* One list of LDAELib's data files (LDAE/CMake/LDAELibPackageData.txt): pyproject.toml repeats it,
  the extension's CMake reads it, and both must cover every file LDAELib reads at run time.
* LDAE.json passes the rules of the Slicer Extensions Index CI, written here from its sources:
  ``scripts/check_description_files.py`` (schema, accepted category, scm URL scheme, repository name
  with "slicer", CMake ``project()`` equal to the file name, icon and screenshot URLs, a licence)
  and ``.pre-commit-config.yaml`` (prettier with ``prettier-plugin-multiline-arrays`` at wrap
  threshold 0: two-space JSON, every array one item per line; final newline; no tabs).
* LDAE.s4ext, kept for tools that still read it, says the same as LDAE.json and CMakeLists.txt.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "LDAELib"
LIST = REPO / "LDAE" / "CMake" / "LDAELibPackageData.txt"
RAW = "https://raw.githubusercontent.com/ldae-slicer/SlicerLDAE/main/"

# The catalog entry schema v1.0.2 (Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json):
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
SCHEMA_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str, "build_dependencies": list,
                "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool, "tier": int}
# A part of the index's ACCEPTED_EXTENSION_CATEGORIES (check_description_files.py), the ones near ours.
ACCEPTED_CATEGORIES = {"Analysis", "Diffusion", "Filtering", "Informatics", "Neuroimaging", "Quantification", "Registration",
                       "Segmentation", "Sequences", "Utilities"}


def patterns() -> list[str]:
    lines = [ln.strip() for ln in LIST.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def runtime_files() -> set[str]:
    """Every non-Python file under LDAELib/ (paths relative to LDAELib/): what LDAELib reads at run time."""
    return {str(p.relative_to(LIB)) for p in LIB.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def glob_one_level(pattern: str) -> set[str]:
    """CMake's ``file(GLOB LIST_DIRECTORIES false LDAELib/<pattern>)`` and setuptools' package-data
    pattern: a folder and a file-name pattern, no recursion."""
    folder, _, name = pattern.rpartition("/")
    base = LIB / folder
    return {str((base / f.name).relative_to(LIB)) for f in base.iterdir() if f.is_file() and fnmatch.fnmatchcase(f.name, name)} \
        if base.is_dir() else set()


def cmake_set(text: str, name: str) -> str:
    m = re.search(rf'set\({name}\s+"([^"]*)"\)', text)
    assert m, f"{name} not set"
    return m.group(1)


def s4ext() -> dict:
    out = {}
    for line in (REPO / "LDAE.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


# ---------------------------------------------------------------------- package data
def test_pip_and_the_slicer_extension_ship_the_same_one_list():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["setuptools"]["package-data"]["LDAELib"] == patterns()
    cmake = (REPO / "LDAE" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "include(${CMAKE_CURRENT_SOURCE_DIR}/CMake/LDAELibPackageData.cmake)" in cmake
    assert 'RESOURCES "${LDAELIB_PYTHON_RESOURCES}"' in cmake
    reader = (REPO / "LDAE" / "CMake" / "LDAELibPackageData.cmake").read_text(encoding="utf-8")
    assert "LDAELibPackageData.txt" in reader and "file(GLOB _files LIST_DIRECTORIES false" in reader


def test_the_list_covers_every_file_ldaelib_reads_at_run_time():
    shipped = set().union(*(glob_one_level(p) for p in patterns()))
    assert runtime_files() - shipped == set()


def test_the_files_the_module_opens_are_in_the_list():
    from LDAELib.resources import EXAMPLES, default_model_path, example_scans

    needed = {EXAMPLES / "examples.csv", *(s.path for s in example_scans()), *default_model_path().iterdir(),
              LIB / "resources" / "MNI_TEMPLATE_NOTICE.txt", EXAMPLES / "NOTICE.txt"}
    shipped = set().union(*(glob_one_level(p) for p in patterns()))
    assert {str(p.relative_to(LIB)) for p in needed if p.is_file()} <= shipped


def test_cmake_applies_the_list_to_the_tree():
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    out = subprocess.run([cmake, f"-DLDAELIB_SOURCE_DIR={REPO}", "-P", str(REPO / "LDAE" / "CMake" / "LDAELibPackageData.cmake")],
                         capture_output=True, text=True, check=True)
    listed = {line.strip().removeprefix("LDAELib/") for line in (out.stdout + out.stderr).splitlines() if line.strip()}
    assert listed == runtime_files()


# ---------------------------------------------------------------------- the Extensions Index entry
def test_the_index_entry_follows_the_catalog_schema():
    entry = json.loads((REPO / "LDAE.json").read_text(encoding="utf-8"))
    assert SCHEMA_REQUIRED <= set(entry)
    assert set(entry) <= set(SCHEMA_TYPES), f"not in the schema: {set(entry) - set(SCHEMA_TYPES)}"
    for key, value in entry.items():
        assert isinstance(value, SCHEMA_TYPES[key]) and not (SCHEMA_TYPES[key] is int and isinstance(value, bool)), key
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))
    assert 1 <= entry.get("tier", 1) <= 5
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1\.0\.[0-2]\.json#?",
                        entry["$schema"])


def test_the_index_entry_passes_the_description_checks():
    entry = json.loads((REPO / "LDAE.json").read_text(encoding="utf-8"))
    assert entry["category"] in ACCEPTED_CATEGORIES
    assert entry["scm_url"].split("://")[0] in ("git", "https") and "://" in entry["scm_url"]
    repo_name = entry["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git")
    assert "slicer" in repo_name.lower()
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake, re.I)[0] == "LDAE" == (REPO / "LDAE.json").stem
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in cmake_set(cmake, key).split():
            assert url.startswith(RAW) and url.endswith(".png"), url
            png = (REPO / url.removeprefix(RAW)).read_bytes()  # the file the URL serves once pushed
            assert png[:8] == b"\x89PNG\r\n\x1a\n", url
    assert any((REPO / name).is_file() for name in ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING"))


def test_the_index_entry_is_formatted_as_the_index_lint_wants():
    text = (REPO / "LDAE.json").read_text(encoding="utf-8")
    assert "\t" not in text and text.endswith("\n") and not text.endswith("\n\n")
    assert all(line == line.rstrip() for line in text.splitlines())
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"  # two spaces, one array item per line


def test_the_s4ext_and_cmake_say_what_the_index_entry_says():
    entry, desc, cmake = json.loads((REPO / "LDAE.json").read_text(encoding="utf-8")), s4ext(), (REPO / "CMakeLists.txt").read_text()
    assert desc["scmurl"] == entry["scm_url"] and desc["scmrevision"] == entry["scm_revision"]
    assert desc["depends"].split() == entry["build_dependencies"] == cmake_set(cmake, "EXTENSION_DEPENDS").split()
    assert desc["category"] == entry["category"] == cmake_set(cmake, "EXTENSION_CATEGORY")
    for key, var in (("homepage", "EXTENSION_HOMEPAGE"), ("contributors", "EXTENSION_CONTRIBUTORS"), ("description", "EXTENSION_DESCRIPTION"),
                     ("iconurl", "EXTENSION_ICONURL"), ("screenshoturls", "EXTENSION_SCREENSHOTURLS")):
        assert desc[key] == cmake_set(cmake, var), key
    assert desc["enabled"] == "1" and desc["scm"] == "git"


def test_the_extension_has_its_own_resources_beside_the_module_ones():
    icon = (REPO / "Resources" / "Icons" / "LDAE.png").read_bytes()
    assert icon[:8] == b"\x89PNG\r\n\x1a\n" and (int.from_bytes(icon[16:20], "big"), int.from_bytes(icon[20:24], "big")) == (128, 128)
    assert list((REPO / "Resources" / "Screenshots").glob("*.png"))
    assert (REPO / "LDAE" / "Resources" / "Icons" / "LDAE.png").is_file()  # the module's icon stays with the module


def test_the_cmake_minimum_is_the_range_of_slicers_extension_template():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert cmake.startswith("cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)\n")
