"""Training an LDAE on a cohort: the authors' three stages, the probes, and the bundle.

    from LDAELib.training import Recipe, TrainingSession
    session = TrainingSession(Recipe(), "cohort/", "run/")
    session.run("all")                       # autoencoder → ddpm → representation → probes → bundle

Stages: (a) the AutoencoderKL (L1 + KL), then the latent scale = 1/std of the training
latents; (b) the latent DDPM UNet (ε-MSE); (c) the semantic encoder and the gradient estimator
(ε-loss on ε_θ + c_t·g with the ε-branch frozen); (d) linear probes ``disease`` and ``age`` on the
EMA encoder's codes. Every stage keeps an EMA of its weights and the bundle ships the EMA weights.
Configs are files (``config``, ``recipe_file``), checkpoints are resumable and safe (``checkpoint``), and the same
code runs in one process or data-parallel under torchrun (``distributed``). See docs/training.md.
"""

from __future__ import annotations

from .config import (AutoencoderStageConfig, DataConfig, DDPMStageConfig, ProbeConfig, Recipe,
                     RepresentationStageConfig, StageConfig)
from .recipe_file import load_recipe, save_recipe
from .session import TrainingSession

__all__ = ["Recipe", "StageConfig", "AutoencoderStageConfig", "DDPMStageConfig", "RepresentationStageConfig",
           "ProbeConfig", "DataConfig", "load_recipe", "save_recipe", "TrainingSession"]
