"""Files shipped inside the package (the demo model, once it exists)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def default_model_path() -> Path | None:
    """The bundled demo model folder, or None when no trained model ships with this install."""
    p = HERE / "demo_model"
    return p if (p / "ldae_bundle.json").is_file() else None
