"""What README.md and docs/slicer.md tell a Slicer user: an install route that works today, what the
Extensions Manager route needs first, the supported Slicer versions, and a panel picture called
what it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
GUIDE = (REPO / "docs" / "slicer.md").read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"^## ", text[start + len(heading):], re.M)
    return text[start:start + len(heading) + (nxt.start() if nxt else len(text))]


DOCS = {"README": section(README, "## In 3D Slicer"), "docs/slicer.md": section(GUIDE, "## Install and first run")}


@pytest.mark.parametrize("name", DOCS)
def test_the_install_route_works_without_the_extensions_index(name):
    text = " ".join(DOCS[name].split())
    steps = ["PyTorch", "git clone https://github.com/ldae-slicer/SlicerLDAE.git", "Extension Wizard", "Additional module paths",
             "Restart Slicer", "pip_ensure", "pip_install"]
    positions = [text.find(s) for s in steps]
    assert all(p >= 0 for p in positions), [s for s, p in zip(steps, positions) if p < 0]
    assert positions[:5] == sorted(positions[:5]), "the steps are in the order a user takes them"
    assert "not in the Extensions Index yet" in text or "is not in the Slicer Extensions Index yet" in text


@pytest.mark.parametrize("name", DOCS)
def test_the_extensions_manager_is_what_happens_once_it_is_in_the_index(name):
    text = " ".join(DOCS[name].split())
    assert not re.search(r"Install the \*\*LDAE\*\*\s+extension from the Extensions Manager", text)
    assert re.search(r"[Oo]nce LDAE is in the (Extensions )?[Ii]ndex", text)
    for needed in ("LDAE.json", "ExtensionsIndex", "100 MB", "3d-slicer-extension"):
        assert needed in text, needed


@pytest.mark.parametrize("name", DOCS)
def test_the_supported_slicer_versions_are_named(name):
    assert re.search(r"Supported Slicer versions: 5\.10 and 5\.12", " ".join(DOCS[name].split()))


def test_no_document_mentions_a_slicer_pydeps_module():
    assert "pydeps" not in README and "pydeps" not in GUIDE


def test_the_panel_picture_is_called_a_rendering_not_a_screenshot_of_slicer():
    for text in (README, GUIDE):
        (alt, path), = re.findall(r"!\[([^\]]*)\]\(([^)]*ldae_panel\.png)\)", text)
        assert "rendered" in alt and "in Slicer" not in alt
        assert (REPO / "docs" / path).resolve().is_file() or (REPO / path).is_file()
