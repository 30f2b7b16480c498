"""Exponential moving average of a network's weights, the weights every sample is drawn with."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """EMA decay at optimiser step `step` (0-based): min(decay, (1 + step) / (10 + step)) with warm-up,
    so early averages forget the random initialisation quickly (as in Tan & Le 2019's EMA schedule)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


class EMA:
    """Shadow copies of a module's state: floating parameters and buffers averaged, others copied."""

    def __init__(self, model: nn.Module):
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v, 1 - decay)
            else:
                self.shadow[k].copy_(v)
