"""Recipe files: read (.json, .yaml, .yml), write atomically, and change settings one by one from
the command line (``ldae train --set SECTION.KEY=VALUE``). The settings themselves live in
:mod:`.config`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import LDAEError
from .config import Recipe


def _yaml():
    try:
        import yaml
    except ImportError:
        raise LDAEError("YAML recipes need PyYAML (pip install pyyaml); or write the recipe as .json") from None
    return yaml


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a .json, .yaml or .yml file."""
    path = Path(path)
    if not path.is_file():
        raise LDAEError(f"recipe file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            d = _yaml().safe_load(text)
        else:
            d = json.loads(text)
    except (ValueError, Exception) as err:  # yaml.YAMLError or json.JSONDecodeError
        if isinstance(err, LDAEError):
            raise
        raise LDAEError(f"{path} is not a valid recipe file ({str(err).splitlines()[0][:160]})") from None
    return Recipe.from_dict(d or {})


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write a recipe as JSON (.json) or YAML (.yaml/.yml), atomically."""
    from ..inference.outputs import write_text_atomic

    path = Path(path)
    d = recipe.to_dict()
    if path.suffix.lower() in (".yaml", ".yml"):
        text = _yaml().safe_dump(d, sort_keys=False, allow_unicode=True, width=110)
    else:
        text = json.dumps(d, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, text)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("null", "none"):
            return None
        return text


_OPTIONAL_MODEL_SETTINGS = ("latent_shift", "x0_clip", "code_guidance", "code_guidance_mean_free")
"""Model settings a recipe's JSON leaves out at their defaults, which ``--set model.KEY=…`` may still set."""


def apply_overrides(recipe: Recipe, assignments: list[str]) -> Recipe:
    """``["ddpm.steps=200", "model.unet_args.base_channel=64"]`` → a new, validated recipe."""
    d = recipe.to_dict()
    for a in assignments:
        if "=" not in a:
            raise LDAEError(f"--set takes SECTION.KEY=VALUE, got {a!r}")
        key, value = a.split("=", 1)
        parts = key.strip().split(".")
        node = d
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node:
                raise LDAEError(f"--set {key}: there is no section {p!r} in the recipe")
            node = node[p]
        optional = parts[:-1] == ["model"] and parts[-1] in _OPTIONAL_MODEL_SETTINGS
        if not isinstance(node, dict) or (parts[-1] not in node and not optional):
            raise LDAEError(f"--set {key}: unknown setting {parts[-1]!r}")
        node[parts[-1]] = _parse_value(value)
    return Recipe.from_dict(d)
