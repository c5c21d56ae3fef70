"""Evaluation of a trained LDAE on the held-out test subjects of its work folder (``ldae evaluate``).

``evaluate(EvalSettings(workdir=..., output=...))`` writes ``report.md``, ``metrics.json`` and PNG
figures: reconstruction (from the encoded z_T, from y_sem alone, the autoencoder ceiling),
interpolation of a left-out middle visit against baselines, edits along ``disease`` and ``age``
measured with an image-based regional volume measure (validated against the cohort's ground truth),
and the probes' AUC / MAE. See docs/training.md, "Evaluating a model".
"""

from .report import DEFAULT_ALPHAS, DEFAULT_STEPS, EvalSettings, evaluate
from .volumes import RegionMeasure, build_measure, tissue_levels

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_STEPS", "EvalSettings", "evaluate", "RegionMeasure", "build_measure", "tissue_levels"]
