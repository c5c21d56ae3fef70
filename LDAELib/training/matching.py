"""Scans brought to one intensity reference, for training targets that must not carry contrast.

The demo cohort's subjects differ in tissue contrast and gain (``ldae cohort``: each subject its own
CSF, grey and white matter levels), and the model space's min–max normalisation keeps most of it: the
brain's mean intensity varies between training visits about 25 times more than a year of atrophy
darkens it. A training target built from the difference of two scans' latents (the representation
stage's paired items, its code regression) then asks the semantic code to carry that contrast, and
the gradient estimator learns to render a move of the code as a brightening or darkening
(handover/demo_model/README.md, sixteenth and seventeenth runs).

``match_brain_histogram`` maps a scan's brain intensities (voxels above ``BRAIN_LEVEL``) monotonically
onto a reference quantile function, so two scans of different contrast but the same anatomy come out
alike; the background is left as it is. The reference is the median, level by level, of the training
scans' own brain quantiles (``reference_quantiles``). Smooth bias fields are not removed.
"""

from __future__ import annotations

import numpy as np

from ..errors import LDAEError

BRAIN_LEVEL = 0.02  # the evaluation's "inside the brain": model-space voxels above this
LEVELS = 101  # quantiles 0, 1, …, 100 % of the brain's intensities


def brain_quantiles(x: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """The quantiles (``levels`` of them, 0 … 100 %) of the voxels of ``x`` above ``BRAIN_LEVEL``."""
    v = np.asarray(x, dtype=np.float64)[np.asarray(x) > BRAIN_LEVEL]
    if v.size < levels:
        raise LDAEError(f"a scan has only {v.size} voxels above {BRAIN_LEVEL} (a brain in model space has many thousands); "
                        "is it empty or not in model space?")
    return np.quantile(v, np.linspace(0.0, 1.0, levels))


def reference_quantiles(quantiles: list[np.ndarray]) -> np.ndarray:
    """The level-by-level median of several scans' ``brain_quantiles`` (non-decreasing)."""
    if not quantiles:
        raise LDAEError("no scans to build the intensity reference from")
    return np.maximum.accumulate(np.median(np.stack(quantiles), axis=0))


def match_brain_histogram(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x`` (float, model space) with its brain voxels mapped, monotonically and piecewise linearly
    between quantiles, onto ``reference`` (from ``reference_quantiles``); other voxels unchanged."""
    x = np.asarray(x, dtype=np.float32)
    q = brain_quantiles(x, len(reference))
    # Strictly increasing knots (ties, e.g. a saturated maximum, would make the map ill-defined).
    q = q + np.arange(q.size) * 1e-9
    out = x.copy()
    brain = x > BRAIN_LEVEL
    out[brain] = np.interp(x[brain].astype(np.float64), q, np.asarray(reference, dtype=np.float64)).astype(np.float32)
    return out
