"""Exponential moving average of a module's weights, updated after every optimizer step."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """θ_ema ← d·θ_ema + (1−d)·θ after every optimizer step.

    d = ``decay`` (the authors: 0.999), or with ``warmup`` min(decay, (1+n)/(10+n)) after n
    updates, so a short run is not dominated by the random initial weights. Parameters that do not
    require gradients (frozen parts) are left as they are; buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0

    def current_decay(self) -> float:
        if self.warmup:
            n = self.updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        pairs = [(e, p) for e, p in zip(self.module.parameters(), model.parameters()) if p.requires_grad]
        if pairs:
            ema_p, cur_p = zip(*pairs)
            torch._foreach_lerp_(list(ema_p), [p.detach() for p in cur_p], 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(sd)
        self.updates = int(updates)
