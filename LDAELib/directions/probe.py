"""Named attribute directions in the semantic space.

A direction is a linear probe w (E,) on normalised codes ŷ = (y − μ)/σ. An edit by alpha moves
ŷ′ = ŷ + alpha·√E·w/‖w‖ and maps back y′ = ŷ′·σ + μ (the authors' formula; E = 768 at official
size). Positive alpha moves towards ``positive`` (for the authors' disease probe, ``cn``: towards
cognitively normal; negative alpha towards AD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import LDAEError


@dataclass
class Direction:
    """A linear probe and the statistics that normalise the codes it was trained on.

    Attributes:
        name: short id used on the command line (``cn``, ``disease``, ``age``…).
        weight: (E,) float32 probe weight; only its direction matters for edits.
        mean, std: (E,) per-dimension statistics of the training codes (population std).
        bias: probe bias (used by ``score`` only).
        positive, negative: what +alpha and −alpha move towards, for people.
        alpha_unit: what one unit of alpha means, when calibrated (e.g. "≈ 4.1 years"), else "".
        scale: multiplies alpha (1 = the authors' step of √E·w/‖w‖ in normalised code per unit); a
            calibrated direction sets it so that one unit means ``alpha_unit``.
        edit_sign: +1 (the authors' convention: +alpha moves the code along w), or −1: +alpha moves
            it against w. A probe reads its label along w; a model can render a move along w the
            other way (the demo model does, for age). Orienting a direction by what the model
            renders (``LDAELib.training.orient``) sets −1 there and keeps w, so ``score`` still
            reads the label and +alpha still means ``positive`` in the image.
    """

    name: str
    weight: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    bias: float = 0.0
    positive: str = ""
    negative: str = ""
    alpha_unit: str = ""
    meta: dict = field(default_factory=dict)
    scale: float = 1.0
    edit_sign: int = 1

    def __post_init__(self) -> None:
        self.weight = torch.as_tensor(self.weight, dtype=torch.float32).reshape(-1).cpu()
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).reshape(-1).cpu()
        self.std = torch.as_tensor(self.std, dtype=torch.float32).reshape(-1).cpu()
        e = self.weight.numel()
        if self.mean.numel() != e or self.std.numel() != e:
            raise LDAEError(
                f"direction '{self.name}': probe weight has {e} values but mean/std have "
                f"{self.mean.numel()}/{self.std.numel()}; they must come from the same model"
            )
        if not torch.isfinite(self.weight).all() or float(self.weight.norm()) == 0.0:
            raise LDAEError(f"direction '{self.name}': the probe weight is zero or not finite")
        if not torch.isfinite(self.std).all() or (self.std <= 0).any():
            raise LDAEError(f"direction '{self.name}': the std statistics must be positive and finite")
        self.scale = float(self.scale)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise LDAEError(f"direction '{self.name}': its scale must be a positive number, got {self.scale}")
        if isinstance(self.edit_sign, bool) or self.edit_sign not in (1, -1):
            raise LDAEError(f"direction '{self.name}': its edit_sign must be +1 or -1, got {self.edit_sign!r}")
        self.edit_sign = int(self.edit_sign)

    def settings(self) -> dict:
        """What a direction file or bundle stores beside the tensors (JSON-ready); the defaults
        (scale 1, edit_sign +1) are left out, so the authors' directions read as before."""
        out = {"bias": self.bias, "positive": self.positive, "negative": self.negative, "alpha_unit": self.alpha_unit, "meta": self.meta}
        if self.scale != 1.0:
            out["scale"] = self.scale
        if self.edit_sign != 1:
            out["edit_sign"] = self.edit_sign
        return out

    @classmethod
    def from_settings(cls, name: str, weight, mean, std, settings: dict) -> "Direction":
        """The inverse of ``settings`` (missing fields take their defaults)."""
        s = settings
        return cls(name, weight, mean, std, float(s.get("bias", 0.0)), s.get("positive", ""), s.get("negative", ""), s.get("alpha_unit", ""),
                   dict(s.get("meta") or {}), float(s.get("scale", 1.0)), s.get("edit_sign", 1))

    @property
    def dim(self) -> int:
        return self.weight.numel()

    def apply(self, y: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """Move codes y (B×E) by alpha (scalar, or (B,) one per row) along the direction:
        ŷ′ = ŷ + alpha·edit_sign·scale·√E·w/‖w‖ on the normalised code."""
        if y.shape[-1] != self.dim:
            raise LDAEError(f"direction '{self.name}' is for {self.dim}-d codes, the model gives {y.shape[-1]}-d codes")
        w = self.weight.to(y.device, torch.float32)
        mu, sd = self.mean.to(y.device, torch.float32), self.std.to(y.device, torch.float32)
        a = torch.as_tensor(alpha, dtype=torch.float32, device=y.device).reshape(-1, 1)
        if self.scale != 1.0 or self.edit_sign != 1:
            a = a * (self.scale * self.edit_sign)
        y_hat = (y.float() - mu) / sd
        y_hat = y_hat + a * math.sqrt(self.dim) * (w / w.norm())
        return (y_hat * sd + mu).to(y.dtype)

    def score(self, y: torch.Tensor) -> torch.Tensor:
        """Probe logit w·(y−μ)/σ + b for codes y (B×E) → (B,)."""
        w = self.weight.to(y.device)
        return ((y.float() - self.mean.to(y.device)) / self.std.to(y.device)) @ w + self.bias

    def describe(self) -> str:
        s = self.name
        if self.positive or self.negative:
            s += f" (+alpha → {self.positive or '?'}, −alpha → {self.negative or '?'})"
        if self.alpha_unit:
            s += f"; 1 alpha ≈ {self.alpha_unit}"
        return s


def fit_linear_probe(
    codes: torch.Tensor,
    targets: torch.Tensor,
    name: str,
    kind: str = "binary",
    l2: float = 1e-3,
    positive: str = "",
    negative: str = "",
) -> Direction:
    """Fit a probe on codes (N×E) and turn it into a direction.

    kind "binary": logistic regression, targets 0/1, +alpha towards label 1.
    kind "continuous": ridge regression on the standardised target, +alpha towards larger values;
    ``meta["target_per_unit_score"]`` records how much the target changes per unit of probe score.
    Codes are normalised with their own mean and population std, as the authors do.
    """
    x = torch.as_tensor(codes, dtype=torch.float64)
    t = torch.as_tensor(targets, dtype=torch.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != t.shape[0] or x.shape[0] < 3:
        raise LDAEError(f"a probe needs N×E codes and N targets with N ≥ 3; got {tuple(x.shape)} and {tuple(t.shape)}")
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    xn = (x - mean) / std
    e = xn.shape[1]
    meta: dict = {"kind": kind, "n": int(x.shape[0])}
    if kind == "binary":
        if not set(t.unique().tolist()) <= {0.0, 1.0} or t.unique().numel() != 2:
            raise LDAEError("a binary probe needs targets of both classes 0 and 1")
        w = torch.zeros(e, dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xn @ w + b, t) + l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        weight, bias = w.detach(), float(b.detach())
    elif kind == "continuous":
        tm, ts = t.mean(), t.std(unbiased=False).clamp_min(1e-12)
        tn = (t - tm) / ts
        a = xn.T @ xn + l2 * xn.shape[0] * torch.eye(e, dtype=torch.float64)
        weight = torch.linalg.solve(a, xn.T @ tn)
        bias = 0.0
        meta.update(target_mean=float(tm), target_std=float(ts), target_per_unit_score=float(ts))
    else:
        raise LDAEError(f"unknown probe kind '{kind}' (binary or continuous)")
    return Direction(name, weight.float(), mean.float(), std.float(), bias, positive, negative, meta=meta)


def fit_longitudinal_direction(
    codes: torch.Tensor,
    targets: torch.Tensor,
    subjects: list[str],
    name: str,
    per_unit: float,
    axis_rows: torch.Tensor | None = None,
    positive: str = "",
    negative: str = "",
) -> Direction:
    """A direction along how one subject's code changes as the target (age) grows; not in the paper.

    Between subjects, codes differ mostly by what the target does not change; within one subject,
    only time does. The axis is the pooled within-subject slope of the normalised codes on the
    target, Σ (t − t̄ₛ)(ŷ − ȳₛ) / Σ (t − t̄ₛ)² over the subjects with two or more codes (of
    ``axis_rows`` only, when given: e.g. one group's). One unit of alpha moves the code by
    ``per_unit`` of the target along it (``scale`` = per_unit·‖slope‖/√E), towards larger targets.

    The reading (``score``) is the standardised target regressed on the position along the axis,
    over all codes (``meta`` has target_mean / target_std as for a continuous probe). When that
    reading falls along the axis (older subjects' codes sit lower on it than younger ones'),
    the weight points the other way and ``edit_sign`` is −1, so that +alpha still moves each code
    as its subject's own code moves with age.
    """
    x = torch.as_tensor(codes, dtype=torch.float64)
    t = torch.as_tensor(targets, dtype=torch.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != t.shape[0] or len(subjects) != t.shape[0]:
        raise LDAEError(f"a longitudinal direction needs N×E codes, N targets and N subject ids; got {tuple(x.shape)}, {tuple(t.shape)}, {len(subjects)}")
    if not per_unit > 0:
        raise LDAEError(f"one unit of a longitudinal direction must be a positive amount of '{name}', got {per_unit}")
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    xn = (x - mean) / std
    use = torch.ones(len(subjects), dtype=torch.bool) if axis_rows is None else torch.as_tensor(axis_rows, dtype=torch.bool)
    sxy, sxx, n_subjects = torch.zeros(xn.shape[1], dtype=torch.float64), 0.0, 0
    for s in sorted(set(subjects)):
        i = torch.tensor([k for k, v in enumerate(subjects) if v == s and bool(use[k])], dtype=torch.long)
        if i.numel() < 2:
            continue
        dt = t[i] - t[i].mean()
        if float((dt * dt).sum()) == 0.0:
            continue
        sxy += (dt[:, None] * (xn[i] - xn[i].mean(0))).sum(0)
        sxx += float((dt * dt).sum())
        n_subjects += 1
    if n_subjects == 0 or float(sxy.norm()) == 0.0:
        raise LDAEError(f"a longitudinal '{name}' direction needs subjects with two or more codes at different '{name}' values")
    slope = sxy / sxx
    axis = slope / slope.norm()
    pos = xn @ axis
    tm, ts = t.mean(), t.std(unbiased=False).clamp_min(1e-12)
    tn = (t - tm) / ts
    pc = pos - pos.mean()
    c = float((pc * (tn - tn.mean())).sum() / (pc * pc).sum().clamp_min(1e-300))
    if c == 0.0 or not math.isfinite(c):
        raise LDAEError(f"the '{name}' values do not vary along the within-subject axis at all; there is nothing to read")
    bias = float(tn.mean() - c * pos.mean())
    e = xn.shape[1]
    meta = {"kind": "longitudinal", "n": int(x.shape[0]), "axis_subjects": n_subjects, "target_mean": float(tm), "target_std": float(ts),
            "target_per_unit_score": float(ts), "within_subject_per_unit_target": float(slope.norm()),
            "reading_r": float(torch.corrcoef(torch.stack([pos, t]))[0, 1]), "code_sd_per_alpha": float(pos.std(unbiased=False)) / (per_unit * float(slope.norm()))}
    return Direction(name, (c * axis).float(), mean.float(), std.float(), bias, positive, negative, meta=meta,
                     scale=per_unit * float(slope.norm()) / math.sqrt(e), edit_sign=1 if c > 0 else -1)
