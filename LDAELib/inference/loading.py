"""Opening a model and its pipeline for ``RunSettings``, as every front end does."""

from __future__ import annotations

from typing import Callable

import torch

from ..accel.host import tune_allocator
from ..errors import LDAEError
from ..model import small_config
from ..pipeline import LDAEPipeline, make_pipeline
from ..resources import default_model_path
from ..weights import load_model, random_model
from .settings import RunSettings

RANDOM_WARNING = ("no trained model is installed and no model was given: using a small model with RANDOM weights. Its outputs "
                  "are noise, useful only to check the installation. Download the authors' weights and pass --model DIR.")


def resolve_device(device: str) -> str:
    """"auto" → "cuda" when this torch sees a GPU, else "cpu"; other names as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def open_model(path: str | None, settings: RunSettings, warn: Callable[[str], None] = print):
    """The model in ``path`` (a bundle or the authors' files), else the installed demo model, else
    random weights (with a warning)."""
    if path:
        return load_model(path, verify=settings.verify)
    demo = default_model_path()
    if demo is not None:
        return load_model(demo, verify=settings.verify)
    warn(RANDOM_WARNING)
    return random_model(small_config(), seed=0)


def open_pipeline(model, settings: RunSettings) -> LDAEPipeline:
    """A pipeline for ``model`` on the settings' device and precision, the allocator tuned after it."""
    device = resolve_device(settings.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LDAEError(f"device {device} was asked for but this torch has no CUDA device; use cpu")
    pipe = make_pipeline(model, device, settings.dtype, settings.decode_dtype, threads=settings.threads,
                         cache_dir=settings.cache_dir, weight_storage=settings.weight_storage)
    tune_allocator()  # after the weights are in place (make_pipeline's docstring)
    return pipe
