"""One step of guided DDIM, as arithmetic on tensors: no network, no loop, no progress.

The pipeline (``LDAELib.pipeline``) runs the loops: at DDIM index k it calls the ShiftUNet at
timestep ``sched.timesteps[k]`` for (ε, g), shifts ε by the gradient estimator
(``guided_eps``) and takes a step (``ddim_step``): towards k+1 when inverting a scan, towards
k−1 when sampling. Every coefficient is a float32 number cast to the dtype of x, and the
operations follow the authors' order, so a float32 run reproduces their numbers bit for bit.
"""

from __future__ import annotations

import torch

from .schedule import DDIMSchedule

DEFAULT_X0_CLIP = 1.0
"""The authors clamp x̂0 to [−1, 1] in the scaled latent space at every step."""


def _coef(values, k: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(values[k]), dtype=torch.float32, device=like.device).to(like.dtype)


def timestep(sched: DDIMSchedule, k: int, batch: int, device) -> torch.Tensor:
    """(batch,) int64 DDPM timestep τ_k, the network's time input at DDIM index k."""
    return torch.full((batch,), int(sched.timesteps[k]), dtype=torch.long, device=device)


def guided_eps(eps: torch.Tensor, g: torch.Tensor, k: int, sched: DDIMSchedule) -> torch.Tensor:
    """ε̂ = ε − √(1−ᾱ_k)·g: the denoiser's ε shifted by the gradient estimator (PDAE guidance)."""
    return eps - _coef(sched.sqrt_one_minus_alphas_cumprod, k, eps) * g


def code_guided_shift(g: torch.Tensor, g_ref: torch.Tensor, weight: float, mean_free: bool = False) -> torch.Tensor:
    """g(ȳ) + w·(g(y) − g(ȳ)): the gradient estimator's answer to the code y, scaled by w around its
    answer to a reference code ȳ. w = 1 gives g(y) (the authors' rule); w > 1 makes the code, and
    so a move of the code, decide more of the sample, as guidance scales do in diffusion models.

    ``mean_free``: the difference g(y) − g(ȳ) first loses its mean over the latent grid, channel by
    channel, so the code cannot move a latent channel as a whole (``LDAEConfig.code_guidance_mean_free``)."""
    d = g - g_ref
    if mean_free:
        d = d - d.mean(dim=tuple(range(2, d.ndim)), keepdim=True)
    return g_ref + float(weight) * d


def predict_x0(x: torch.Tensor, eps: torch.Tensor, k: int, sched: DDIMSchedule, clip: float | None = DEFAULT_X0_CLIP) -> torch.Tensor:
    """x̂0 = r_k·x − rm_k·ε, clamped to [−clip, clip] (None: not clamped)."""
    x0 = _coef(sched.sqrt_recip_alphas_cumprod, k, x) * x - _coef(sched.sqrt_recip_alphas_cumprod_m1, k, x) * eps
    return x0.clamp(-clip, clip) if clip is not None else x0


def ddim_step(x: torch.Tensor, eps: torch.Tensor, k: int, sched: DDIMSchedule, inverse: bool,
              clip: float | None = DEFAULT_X0_CLIP) -> torch.Tensor:
    """One deterministic DDIM step from index k: to k+1 if ``inverse`` (encoding), else to k−1.

    ε is re-derived from the clamped x̂0 before the update, as in the authors' code.
    """
    x0 = predict_x0(x, eps, k, sched, clip)
    eps = (_coef(sched.sqrt_recip_alphas_cumprod, k, x) * x - x0) / _coef(sched.sqrt_recip_alphas_cumprod_m1, k, x)
    a = _coef(sched.alphas_cumprod_next if inverse else sched.alphas_cumprod_prev, k, x)
    return x0 * torch.sqrt(a) + torch.sqrt(1 - a) * eps


def inversion_indices(sched: DDIMSchedule) -> range:
    """DDIM indices of an inversion z0 → z_T: k = 0 … N−1 (N network calls)."""
    return range(sched.num_steps)


def sampling_indices(sched: DDIMSchedule) -> range:
    """DDIM indices of a sampling z_T → ẑ0: k = N … 1 (N network calls)."""
    return range(sched.num_steps, 0, -1)


def shift_applies(k: int, sched: DDIMSchedule, stop_percent: float = 0.0) -> bool:
    """Whether sampling step k uses the gradient shift: while k−1 ≥ int(stop_percent·N) (always at 0)."""
    return k - 1 >= int(stop_percent * sched.num_steps)
