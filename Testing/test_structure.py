"""The shape of LDAELib: no import circle anywhere (function-level imports included), no module over
600 lines, and the one-way dependencies of the layers (docs/architecture in README's layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "LDAELib"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """Every LDAELib module ``name`` imports, at any depth of its code (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    base = name if _is_package(name) else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            found.update(t for t in targets if t in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("LDAELib"):
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
            if subs:
                found.update(subs)
            if len(subs) < len(node.names) and mod in MODULES:
                found.add(mod)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_function_level_and_relative_imports():
    graph = _graph()
    assert "LDAELib.pipeline.core" in graph["LDAELib.inference.operations"] or "LDAELib.pipeline" in graph["LDAELib.inference.operations"]
    assert "LDAELib.nets.slab" in graph["LDAELib.pipeline.core"]  # imported inside a method
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_LDAELib():
    cycles = _cycles(_graph())
    assert not cycles, "import circles: " + "; ".join(" ↔ ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_600_lines(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {n} lines; split it by concept"


def test_layers_point_one_way():
    """nets and diffusion know nothing above them; the pipeline knows no front end; only
    LDAELib.slicer knows Slicer, and nothing in LDAELib imports Qt."""
    graph = _graph()

    def reaches(src_prefix: str, dst_prefix: str) -> list[str]:
        return sorted(f"{m} → {d}" for m, deps in graph.items() if m.startswith(src_prefix) for d in deps if d.startswith(dst_prefix))

    for low in ("LDAELib.nets", "LDAELib.diffusion", "LDAELib.accel"):
        for high in ("LDAELib.pipeline", "LDAELib.inference", "LDAELib.batch", "LDAELib.server", "LDAELib.slicer", "LDAELib.cli", "LDAELib.training"):
            assert not reaches(low, high), reaches(low, high)
    for high in ("LDAELib.inference", "LDAELib.batch", "LDAELib.server", "LDAELib.slicer", "LDAELib.cli", "LDAELib.training", "LDAELib.evaluation"):
        assert not reaches("LDAELib.pipeline", high), reaches("LDAELib.pipeline", high)
    for high in ("LDAELib.batch", "LDAELib.server", "LDAELib.slicer", "LDAELib.cli"):
        assert not reaches("LDAELib.inference", high), reaches("LDAELib.inference", high)
    assert not reaches("LDAELib.server", "LDAELib.slicer"), reaches("LDAELib.server", "LDAELib.slicer")
    assert not reaches("LDAELib.inference", "LDAELib.training"), reaches("LDAELib.inference", "LDAELib.training")
    for name, path in MODULES.items():
        text = path.read_text()
        assert "import qt" not in text and "PySide" not in text and "PyQt" not in text, name
        if not name.startswith("LDAELib.slicer"):
            assert "import slicer" not in text and "import vtk" not in text, name
