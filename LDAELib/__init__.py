"""LDAELib: the Latent Diffusion Autoencoder (Lozupone et al. 2025) for brain MRI, without Slicer.

    from LDAELib import load_model, LDAEPipeline
    model = load_model("path/to/weights")            # the authors' files or an LDAE bundle
    pipe = LDAEPipeline(model, device="cpu")
    enc = pipe.encode(x, steps=10)                   # x: model-space volume (see LDAELib.space)
    edited = pipe.edit(enc, model.directions["cn"], [-2.0, 2.0], steps=10)

Names are imported lazily so that ``import LDAELib`` stays cheap (it does not import torch).
"""

from __future__ import annotations

__all__ = ["LDAEError", "Cancelled", "load_model", "random_model", "LDAEPipeline", "Encoding", "Direction", "fit_linear_probe", "LDAEModel", "LDAEConfig"]

_WHERE = {
    "LDAEError": "errors", "Cancelled": "errors",
    "load_model": "weights", "random_model": "weights",
    "LDAEPipeline": "pipeline", "Encoding": "pipeline",
    "Direction": "directions", "fit_linear_probe": "directions",
    "LDAEModel": "model", "LDAEConfig": "model",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'LDAELib' has no attribute {name!r}")
