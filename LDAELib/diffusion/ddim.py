"""Guided DDIM inversion and sampling (SPEC §5.3–5.4). Arithmetic only: the network is a callable.

A ``GuidedModel`` maps (x: B×C×D×H×W, t: (B,) int64 DDPM timesteps, y: B×E) to (ε, g), as the
ShiftUNet does. Every step runs in the dtype of x with float32 coefficients, in the authors'
operation order, so a float32 run reproduces their numbers.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ..errors import Cancelled
from .schedule import DDIMSchedule

ProgressFn = Callable[[int, int], None]
"""Called as progress(done, total) after each network call."""
CancelFn = Callable[[], bool]
"""Returns True when the caller wants the computation stopped (checked before each step)."""


class GuidedModel(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _coef(values, k: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(values[k]), dtype=torch.float32, device=like.device).to(like.dtype)


def predict_x0(x: torch.Tensor, eps: torch.Tensor, k: int, sched: DDIMSchedule, clip: bool = True) -> torch.Tensor:
    """x̂0 = r_k·x − rm_k·ε, clamped to [−1, 1] (the authors clip in the scaled latent space)."""
    x0 = _coef(sched.sqrt_recip_alphas_cumprod, k, x) * x - _coef(sched.sqrt_recip_alphas_cumprod_m1, k, x) * eps
    return x0.clamp(-1, 1) if clip else x0


def ddim_step(x: torch.Tensor, eps: torch.Tensor, k: int, sched: DDIMSchedule, inverse: bool) -> torch.Tensor:
    """One deterministic DDIM step from index k: to k+1 if ``inverse`` (encoding), else to k−1.

    ε is re-derived from the clipped x̂0 before the update, as in the authors' code.
    """
    x0 = predict_x0(x, eps, k, sched)
    eps = (_coef(sched.sqrt_recip_alphas_cumprod, k, x) * x - x0) / _coef(sched.sqrt_recip_alphas_cumprod_m1, k, x)
    a = _coef(sched.alphas_cumprod_next if inverse else sched.alphas_cumprod_prev, k, x)
    return x0 * torch.sqrt(a) + torch.sqrt(1 - a) * eps


def guided_eps(model: GuidedModel, x: torch.Tensor, k: int, y: torch.Tensor, sched: DDIMSchedule, shift: bool = True) -> torch.Tensor:
    """ε̂ = ε − √(1−A_k)·g: the denoiser's ε shifted by the gradient estimator (PDAE guidance)."""
    t = torch.full((x.shape[0],), int(sched.timesteps[k]), dtype=torch.long, device=x.device)
    eps, g = model(x, t, y)
    if not shift:
        return eps
    return eps - _coef(sched.sqrt_one_minus_alphas_cumprod, k, x) * g


def _check(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled")


def ddim_invert(
    model: GuidedModel,
    z0: torch.Tensor,
    y: torch.Tensor,
    sched: DDIMSchedule,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> torch.Tensor:
    """Deterministic inversion z0 (state at k=0) → z_T (state at k=N): N calls at τ_0..τ_{N−1}."""
    x = z0
    n = sched.num_steps
    for k in range(n):
        _check(cancel)
        x = ddim_step(x, guided_eps(model, x, k, y, sched), k, sched, inverse=True)
        if progress:
            progress(k + 1, n)
    return x


def ddim_sample(
    model: GuidedModel,
    z_t: torch.Tensor,
    y: torch.Tensor,
    sched: DDIMSchedule,
    stop_percent: float = 0.0,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> torch.Tensor:
    """Deterministic sampling z_T (k=N) → ẑ0 (k=0): N calls at τ_N..τ_1.

    The gradient shift is applied while k−1 ≥ int(stop_percent·N) (always, for the default 0).
    """
    x = z_t
    n = sched.num_steps
    stop = int(stop_percent * n)
    for i, k in enumerate(range(n, 0, -1)):
        _check(cancel)
        x = ddim_step(x, guided_eps(model, x, k, y, sched, shift=k - 1 >= stop), k, sched, inverse=False)
        if progress:
            progress(i + 1, n)
    return x
