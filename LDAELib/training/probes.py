"""Stage (d): linear probes on the EMA encoder's codes of the training subjects → named directions.

* ``disease``: logistic regression, label 1 = the atrophy group; +alpha moves towards it.
* ``age``: ridge regression on the age in years; +alpha moves older. One unit of alpha is
  calibrated by the probe itself: an edit by alpha·scale moves the normalised code by
  alpha·scale·√E·w/‖w‖, which changes the probe's predicted age by alpha · scale · target_std · √E ·
  ‖w‖ years. With ``ProbeConfig.years_per_alpha`` set, ``scale`` is chosen so that one unit is that
  many years (else scale 1, the authors' step); the number is ``Direction.alpha_unit`` ("5.0
  years") and ``meta["years_per_alpha"]``. (The probe's view of the edit; what the decoder makes of
  it is measured by the evaluation.)
* ``ProbeConfig.age_axis = "longitudinal"`` (not in the paper) takes the ``age`` direction along how
  each training subject's own code changes with age instead (``fit_longitudinal_direction``: the
  pooled within-subject slope, of one group's subjects with ``age_axis_group``), one unit =
  ``years_per_alpha`` years of that change; its reading of age is a regression on the position
  along it. Between subjects the cohort's codes differ mostly by what age does not change, so a
  probe of age finds little ageing to edit along (handover/demo_model/README.md, fourteenth run).
* ``ProbeConfig.calibration = "cohort"`` measures a unit on the training codes instead: ``disease``
  one unit = the gap between the groups' mean positions along the direction, ``age`` one unit = the
  slope of the codes' position on age times ``years_per_alpha``. ``meta["code_sd_per_alpha"]`` says
  how far the training codes spread along each direction, in units of alpha.

Codes, probes and metrics on the validation subjects (AUC of the group, MAE of the age) go to
``probes/`` in the work folder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..directions import Direction, fit_linear_probe, fit_longitudinal_direction
from ..errors import LDAEError
from .config import ProbeConfig
from .data import CohortRow, TrainingData, semantic_input


@torch.inference_mode()
def encode_codes(encoder: nn.Module, data: TrainingData, rows: list[int], device: torch.device, plane: str = "axial", batch_size: int = 8, progress=None) -> torch.Tensor:
    """y_sem (N×E float32, CPU) of the given cohort rows, with the encoder in eval mode."""
    encoder.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        out.append(encoder(semantic_input(data.volumes.batch(chunk, device), plane)).float().cpu())
        if progress is not None:
            progress(min(i + batch_size, len(rows)), len(rows))
    return torch.cat(out) if out else torch.zeros(0)


def auc(scores, labels) -> float:
    """Area under the ROC curve (ties count half); nan when one class is missing."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _targets(rows: list[CohortRow], config: ProbeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    groups = [str(r.get(config.group_column, "")) for r in rows]
    disease = torch.tensor([g == config.disease_value for g in groups], dtype=torch.float64)
    age = torch.tensor([r.number(config.age_column) for r in rows], dtype=torch.float64)
    return disease, age


def _fit_age(codes: torch.Tensor, rows: list[CohortRow], age: torch.Tensor, config: ProbeConfig) -> Direction:
    if config.age_axis == "longitudinal":
        groups = [str(r.get(config.group_column, "")) for r in rows]
        axis_rows = torch.tensor([not config.age_axis_group or g == config.age_axis_group for g in groups])
        if not bool(axis_rows.any()):
            raise LDAEError(f"no training visit is in group {config.age_axis_group!r} (probes.age_axis_group); "
                            f"give a value of the {config.group_column!r} column")
        return fit_longitudinal_direction(codes, age, [r.subject for r in rows], "age", float(config.years_per_alpha), axis_rows,
                                          positive="older", negative="younger")
    return fit_linear_probe(codes, age, "age", "continuous", l2=config.l2, positive="older", negative="younger")


def fit_directions(codes: torch.Tensor, rows: list[CohortRow], config: ProbeConfig) -> dict[str, Direction]:
    """The ``disease`` and ``age`` directions from training codes (N×E) and their cohort rows."""
    disease, age = _targets(rows, config)
    if disease.unique().numel() != 2:
        raise LDAEError(f"the training subjects need both groups in column {config.group_column!r} (value {config.disease_value!r} and others) to fit the disease probe")
    e = codes.shape[1]
    d = fit_linear_probe(codes, disease, "disease", "binary", l2=config.l2, positive=f"atrophy ({config.disease_value} group)", negative="healthy")
    d.meta.update(target=f"{config.group_column} == {config.disease_value}", trained_on="EMA semantic codes of the training subjects' visits")
    a = _fit_age(codes, rows, age, config)
    if config.calibration == "cohort":
        sick = disease.bool()
        pos = position(d, codes)
        gap = float(pos[sick].mean() - pos[~sick].mean())
        if not gap > 0:
            raise LDAEError("the disease probe does not separate the training groups' mean codes; the codes carry no group difference to edit along")
        d.scale = gap / math.sqrt(e)
        d.alpha_unit = "the mean difference between the groups"
        d.meta.update(calibration="cohort: one unit = the difference between the groups' mean positions along the direction",
                      code_sd_per_alpha=float(pos.std()) / (d.scale * math.sqrt(e)))
    d.meta.update(logit_per_alpha=float(d.scale * math.sqrt(e) * d.weight.double().norm()))
    if config.age_axis == "longitudinal":  # calibrated by its own construction, whatever ``calibration`` says
        describe_longitudinal_age(a, float(config.years_per_alpha), config.age_column, "EMA semantic codes of the training subjects' visits")
        return {"disease": d, "age": a}
    unscaled = float(a.meta["target_std"] * math.sqrt(e) * a.weight.double().norm())
    if config.calibration == "cohort":
        pa = position(a, codes)
        per_year = float(((pa - pa.mean()) * (age - age.mean())).sum() / ((age - age.mean()) ** 2).sum())
        if not per_year > 0:
            raise LDAEError("along the age probe the training codes do not move with age; there is no ageing to edit along")
        a.scale = float(config.years_per_alpha) * per_year / math.sqrt(e)
        a.meta.update(calibration="cohort: the training codes' mean position along the direction changes by one unit "
                                  "per years_per_alpha years of age (slope of position on age)",
                      code_sd_per_alpha=float(pa.std()) / (a.scale * math.sqrt(e)))
        years = float(config.years_per_alpha)
        probe_years = unscaled * a.scale
    else:
        if config.years_per_alpha:
            a.scale = float(config.years_per_alpha) / unscaled
        years = probe_years = unscaled * a.scale
        a.meta.update(calibration="the age probe's predicted change for an edit of alpha = 1 (scale·target_std·√E·‖w‖)")
    a.alpha_unit = f"{years:.1f} years"
    a.meta.update(years_per_alpha=years, probe_years_per_alpha=probe_years, years_per_unscaled_alpha=unscaled, target=config.age_column,
                  trained_on="EMA semantic codes of the training subjects' visits")
    return {"disease": d, "age": a}


def describe_longitudinal_age(a: Direction, years: float, target: str, trained_on: str) -> None:
    """Unit and meta of an ``age`` direction from ``fit_longitudinal_direction`` (one unit = ``years``
    years of within-subject change): what the probes stage writes, and what a bundle refitted later
    (handover/demo_model/longitudinal_age.py) carries."""
    unscaled = float(a.meta["target_std"] * math.sqrt(a.dim) * a.weight.double().norm())
    a.alpha_unit = f"{years:.1f} years of within-subject ageing"
    a.meta.update(calibration="longitudinal: one unit moves a code as its subject's own code moves in years_per_alpha years "
                              "(pooled within-subject slope)",
                  years_per_alpha=years, probe_years_per_alpha=unscaled * a.scale * a.edit_sign, years_per_unscaled_alpha=unscaled,
                  target=target, trained_on=trained_on)


def position(direction: Direction, codes: torch.Tensor) -> torch.Tensor:
    """Where codes (N×E) lie along a direction: the normalised code's projection on w/‖w‖ (float64)."""
    w = direction.weight.double()
    return (((codes.double() - direction.mean.double()) / direction.std.double()) @ (w / w.norm()))


def cross_validated_metrics(codes: torch.Tensor, rows: list[CohortRow], config: ProbeConfig, folds: int = 5, seed: int = 0) -> dict:
    """Group AUC and age MAE of probes fitted on the other folds of the training subjects.

    The folds split subjects, not visits (a subject's visits are nearly the same code), and deal each
    group's subjects round-robin in a seeded order (at most as many folds as the smaller group has
    subjects, so that every fold holds out both groups). With a few dozen held-out subjects a split's
    AUC swings widely; this uses every training subject once as a held-out one. ``disease_auc`` is the
    mean over folds, ``disease_auc_folds`` each fold's, ``age_mae_years`` pooled over all visits.
    """
    disease, age = _targets(rows, config)
    group_of: dict[str, bool] = {}
    for r, sick in zip(rows, disease.bool().tolist()):
        group_of.setdefault(r.subject, sick)
    by_group = {g: [s for s, sick in group_of.items() if sick == g] for g in (True, False)}
    folds = min(folds, *(len(v) for v in by_group.values()))  # every fold holds out subjects of both groups
    if folds < 2:
        return {"folds": 0, "subjects": len(group_of), "disease_auc": float("nan"), "disease_auc_folds": [], "age_mae_years": float("nan")}
    rng = np.random.default_rng(seed)
    fold_of, k = {}, 0
    for sick in (True, False):
        for j in rng.permutation(len(by_group[sick])):
            fold_of[by_group[sick][j]] = k % folds
            k += 1
    fold = np.array([fold_of[r.subject] for r in rows])
    aucs, err = [], torch.zeros(len(rows), dtype=torch.float64)
    for f in range(folds):
        train, held = torch.from_numpy(fold != f), torch.from_numpy(fold == f)
        if disease[train].unique().numel() == 2 and disease[held].unique().numel() == 2:
            d = fit_linear_probe(codes[train], disease[train], "disease", "binary", l2=config.l2)
            aucs.append(auc(d.score(codes[held]).numpy(), disease[held].numpy().astype(bool)))
        a = _fit_age(codes[train], [r for r, keep in zip(rows, train.tolist()) if keep], age[train], config)
        err[held] = (predicted_age(a, codes[held]) - age[held]).abs()
    return {"folds": folds, "subjects": len(fold_of), "disease_auc": float(np.mean(aucs)) if aucs else float("nan"),
            "disease_auc_folds": aucs, "age_mae_years": float(err.mean())}


def predicted_age(direction: Direction, codes: torch.Tensor) -> torch.Tensor:
    """Age (years) the continuous probe predicts for codes (N×E)."""
    return direction.meta["target_mean"] + direction.meta["target_std"] * direction.score(codes).double()


def probe_metrics(directions: dict[str, Direction], codes: torch.Tensor, rows: list[CohortRow], config: ProbeConfig) -> dict:
    """AUC of the disease probe and MAE of the age probe on the given codes (e.g. validation subjects)."""
    if len(rows) == 0:
        return {}
    disease, age = _targets(rows, config)
    out = {"n": len(rows), "disease_auc": auc(directions["disease"].score(codes).numpy(), disease.numpy().astype(bool))}
    pred = predicted_age(directions["age"], codes)
    out["age_mae_years"] = float((pred - age).abs().mean())
    out["age_sd_years"] = float(age.std(unbiased=False))
    return out
