"""The texts the LDAE panel shows, made from plain values (no Qt, no MRML except node dates).

Kept apart from the scripted module so that ``LDAE/LDAE.py`` only wires widgets, and so the texts
can be tested without Slicer.
"""

from __future__ import annotations

import json
import platform

CUSTOM_PROBE = "Custom probe file…"


def model_status(model: dict) -> str:
    """'name · id … · 12.3 M parameters', with a warning for random weights."""
    warn = " — RANDOM WEIGHTS: outputs are noise" if model.get("random") else ""
    return f"{model['name']} · id {model['id']} · {model['parameters_m']} M parameters{warn}"


def licence(model: dict) -> str:
    return "Licence: " + (model.get("licence") or "see the model card")[:600]


def operation_note(model: dict, *operations: str) -> str:
    """What the model's bundle notes about ``operations`` ("edit", "reconstruct", "interpolate",
    "vary"; ``LDAEModel.limitations``), for the label under their buttons; empty when it notes nothing."""
    limitations = model.get("limitations") or {}
    notes = [limitations[op] for op in operations if limitations.get(op)]
    return "Note from the model's card: " + " ".join(notes) if notes else ""


def direction_items(info: dict | None) -> list[tuple[str, str]]:
    """(text, name) of the direction list: the model's directions, or before loading the one every
    LDAE model of the authors has; then the custom probe file (name "")."""
    directions = ((info or {}).get("model") or {}).get("directions", [])
    items = [(d["description"], d["name"]) for d in directions]
    if info is None:
        items.append(("cn (towards CN / AD; the model's own list appears once it is loaded)", "cn"))
    return items + [(CUSTOM_PROBE, "")]


def interpolation_points(text: str, months: bool) -> dict:
    """The 'At' field as arguments of an interpolation: {"fractions": [...]} or {"months": [...]}."""
    values = [float(v) for v in text.replace(",", " ").split()]
    return {"months": values, "fractions": None} if months else {"fractions": values}


def direction_hint(direction: dict | None, custom: bool) -> str:
    """Which side of the slider goes where ('−α: towards AD · +α: towards CN')."""
    if direction and (direction.get("positive") or direction.get("negative")):
        return f"−α: towards {direction.get('negative') or '?'}   ·   +α: towards {direction.get('positive') or '?'}"
    if custom:
        return "A probe file (.safetensors from 'ldae fit-probe', or the authors' probe layout)"
    return ""


def diagnostics_text(info: dict | None, installed_torch: str | None) -> str:
    """One line: torch and device from the worker once it runs; before that the installed torch
    (read from its metadata: torch is never imported into Slicer)."""
    if info:
        d = info["diagnostics"]
        device = d["device"]
        if d.get("gpu"):
            device += f" ({d['gpu']}, {d['gpu_memory_free_gb']}/{d['gpu_memory_total_gb']} GB free)"
        mem = f"RAM {d['memory_available_gb']}/{d['memory_total_gb']} GB free" if d.get("memory_total_gb") else ""
        precision = "float32" if d.get("decode_dtype", "float32") == "float32" else f"{d['decode_dtype']} decoder (fast)"
        return f"torch {d['torch']} · {device} · {precision} · {d['threads']} threads · {mem}"
    if installed_torch:
        return f"torch {installed_torch} installed · device chosen when the model loads"
    return "PyTorch is not installed yet: it is installed through the PyTorch extension on first use"


def diagnostics_report(info: dict | None, slicer_version: str | None, worker_python: str) -> str:
    """A JSON report for bug reports: Slicer, platform, Python, model, the worker's diagnostics."""
    info = info or {}
    report = {"slicer": slicer_version, "platform": platform.platform(), "python": platform.python_version(),
              "model": {k: (info.get("model") or {}).get(k) for k in ("name", "id", "format", "path")},
              "worker": info.get("diagnostics"), "worker_python": worker_python}
    return json.dumps(report, indent=2)


def dates_text(node_a, node_b) -> str:
    """'Scans 2020-01-15 → 2023-01-15: 36.0 months apart', or what is missing."""
    if node_a is None or node_b is None:
        return "Scan dates: choose two timepoints"
    from . import nodes as mrml

    da, db = mrml.acquisition_date(node_a), mrml.acquisition_date(node_b)
    if da is None or db is None:
        return "Scan dates unknown: give fractions between 0 and 1 (or set LDAE.Date on both volumes)"
    return f"Scans {da.isoformat()} → {db.isoformat()}: {mrml.months_between(node_a, node_b):.1f} months apart"


def progress_status(msg: dict) -> str:
    from ..server.protocol import progress_text

    return progress_text(msg)
