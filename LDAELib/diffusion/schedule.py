"""Noise schedules: the 1000-step linear DDPM schedule and DDIM sub-schedules.

Pure arithmetic on numpy arrays; the precision of every step follows the authors' code so the
coefficient arrays are the same float32 numbers (see ``ddim_schedule``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=8)
def linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """ᾱ_t of the linear β schedule: computed in float64, returned as the float32 values the model saw."""
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas).astype(np.float32)


@dataclass(frozen=True)
class DDIMSchedule:
    """A DDIM sub-schedule of N steps: arrays over k = 0..N (float32 unless stated).

    ``timesteps[k]`` is the DDPM timestep τ_k (int64) the network is called with.
    """

    timesteps: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    alphas_cumprod_next: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod_m1: np.ndarray
    betas_float64: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    def coefficient(self, name: str, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """One float32 coefficient at DDIM index k as a 0-d tensor on ``device``."""
        return torch.tensor(getattr(self, name)[k], dtype=torch.float32, device=device)


@lru_cache(maxsize=32)
def ddim_schedule(num_steps: int, num_timesteps: int = 1000) -> DDIMSchedule:
    """The "ddimN" sub-schedule.

    τ = sorted set of int(v) for v in linspace(0, T−1, N+1) (float64). New betas
    b_k = 1 − ᾱ32[τ_k]/ᾱ32[τ_{k−1}] with the ratio taken in float32 and ``1 − ratio`` in float64,
    exactly as the authors' code runs under numpy 1.26; this keeps the arrays bit-identical to theirs
    whatever numpy version is installed here. Cumulative products and square roots in float64, then
    cast to float32.
    """
    if not 1 <= num_steps <= num_timesteps - 1:
        raise ValueError(f"DDIM steps must be between 1 and {num_timesteps - 1}, got {num_steps}")
    a32 = linear_alphas_cumprod(num_timesteps)
    taus = sorted({int(v) for v in np.linspace(0, num_timesteps - 1, num_steps + 1, dtype=np.float64)})
    if len(taus) != num_steps + 1:
        raise ValueError(f"{num_steps} DDIM steps do not give distinct timesteps")
    betas = []
    last = None
    for t in taus:
        ratio = float(a32[t]) if last is None else float(np.float32(a32[t]) / np.float32(last))
        betas.append(1.0 - ratio)
        last = a32[t]
    b = np.asarray(betas, dtype=np.float64)
    ac = np.cumprod(1.0 - b)
    prev = np.append(1.0, ac[:-1])
    nxt = np.append(ac[1:], 0.0)
    f32 = lambda a: np.asarray(a, dtype=np.float64).astype(np.float32)  # noqa: E731
    return DDIMSchedule(
        timesteps=np.asarray(taus, dtype=np.int64),
        alphas_cumprod=f32(ac),
        alphas_cumprod_prev=f32(prev),
        alphas_cumprod_next=f32(nxt),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
        sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / ac)),
        sqrt_recip_alphas_cumprod_m1=f32(np.sqrt(1.0 / ac - 1.0)),
        betas_float64=b,
    )
