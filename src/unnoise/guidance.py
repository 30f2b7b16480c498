"""Guidance as denoiser wrappers, so it composes with every sampler.

Classifier-free guidance (Ho & Salimans 2022, eq. 6) mixes a conditional and an unconditional
estimate, x0_cfg = x0_u + w (x0_c - x0_u); on x0 this equals the paper's mix of eps estimates, as
both are affine in each other at fixed (x_t, t). Options:
- rescale phi (Lin et al. 2024, §3.4, eq. 15-17): x0_rescaled = x0_cfg * std(x0_c) / std(x0_cfg),
  then phi x0_rescaled + (1 - phi) x0_cfg, std per sample; it counters over-saturation at large w.
- interval (Kynkaenniemi et al. 2024): guide only for t in (t_lo, t_hi], elsewhere use x0_c.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unnoise.samplers.steps import Denoiser


def _per_sample_std(v: Tensor) -> Tensor:
    return v.flatten(1).std(dim=1).view((-1,) + (1,) * (v.ndim - 1))


class ClassifierFreeGuidance:
    """denoise(x, t, cond) for a guided pair, with both branches in one batched call of the
    wrapped denoiser: cond and null_cond are stacked along the batch (null_cond broadcast to cond)."""

    def __init__(self, denoise: Denoiser, scale: float, null_cond: Any, *, rescale: float = 0.0,
                 interval: tuple[float, float] = (0.0, 1.0)):
        if not 0 <= rescale <= 1:
            raise ValueError(f"rescale must lie in [0, 1], got {rescale}")
        lo, hi = interval
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"interval must satisfy 0 <= t_lo < t_hi <= 1, got {interval}")
        self.denoise, self.scale, self.null_cond = denoise, float(scale), null_cond
        self.rescale, self.interval = rescale, (lo, hi)

    def __call__(self, x: Tensor, t: float | Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition; got cond=None")
        lo, hi = self.interval
        t_scalar = float(t) if not isinstance(t, Tensor) or t.ndim == 0 else None
        if self.scale == 1 or (t_scalar is not None and not lo < t_scalar <= hi):
            return self.denoise(x, t, cond)
        cond = torch.as_tensor(cond, device=x.device)
        null = torch.as_tensor(self.null_cond, dtype=cond.dtype, device=x.device).expand_as(cond)
        t_both = torch.cat([t, t]) if t_scalar is None else t
        x0_c, x0_u = self.denoise(torch.cat([x, x]), t_both, torch.cat([cond, null])).chunk(2)
        guided = x0_u + self.scale * (x0_c - x0_u)
        if self.rescale > 0:
            rescaled = guided * (_per_sample_std(x0_c) / _per_sample_std(guided).clamp(min=1e-12))
            guided = self.rescale * rescaled + (1 - self.rescale) * guided
        if t_scalar is None:  # per-example times: guide only inside the interval
            inside = ((t > lo) & (t <= hi)).view((-1,) + (1,) * (x.ndim - 1))
            guided = torch.where(inside, guided, x0_c)
        return guided
