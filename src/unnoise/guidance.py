"""Guidance as denoiser wrappers, so it composes with every sampler.

Classifier-free guidance (Ho & Salimans 2022, eq. 6) mixes a conditional and an unconditional
estimate, x0_cfg = x0_u + w (x0_c - x0_u); on x0 this equals the paper's mix of eps estimates, as
both are affine in each other at fixed (x_t, t). Options:
- rescale phi (Lin et al. 2024, §3.4, eq. 15-17): x0_rescaled = x0_cfg * std(x0_c) / std(x0_cfg),
  then phi x0_rescaled + (1 - phi) x0_cfg, std per sample; it counters over-saturation at large w.
- interval (Kynkaenniemi et al. 2024): guide only for t in (t_lo, t_hi], elsewhere use x0_c.

Classifier guidance (Dhariwal & Nichol 2021, Alg. 2 / eq. 14) adds the gradient of a noise-aware
classifier's log p(y | x_t) to the score: eps_guided = eps_hat - sigma s grad log p(y | x_t). On x0,
by Tweedie's formula x0_hat = (x_t + sigma^2 grad log p(x_t)) / alpha, this is

    x0_guided = x0_hat + s sigma^2 / alpha * grad_x log p(y | x_t)

and with the exact classifier and s = 1 it is the exact class-conditional denoiser (a test).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unnoise.conditioning import Condition, as_condition
from unnoise.samplers.steps import Denoiser
from unnoise.schedules import Schedule

SAME = "same"  # ClassifierGuidance: the wrapped denoiser sees the labels being guided to
ALPHA_ZERO_LAMBDA = -5.0  # ClassifierGuidance at alpha = 0: where the correction's limit is taken


def _per_sample_std(v: Tensor) -> Tensor:
    return v.flatten(1).std(dim=1).view((-1,) + (1,) * (v.ndim - 1))


def _pair(cond: Any, null: Any, batch: int, device) -> tuple[Condition, Condition]:
    """cond and the null condition as Conditions of `batch` rows (a null of one row is broadcast; an
    int null is the null label)."""
    if isinstance(null, int):
        null = torch.tensor([null])
    cond, null = as_condition(cond), as_condition(null)
    if cond is None or null is None:
        raise ValueError("classifier-free guidance needs a condition and a null condition")
    return cond.to(device), null.to(device).expand(batch)


def log_prob_gradient(classifier, x: Tensor, t: float | Tensor, labels: Tensor) -> Tensor:
    """grad_x log p(y | x_t) for labels y (B,) of classifier(x_t, t) -> logits, in x's dtype."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        log_p = torch.log_softmax(classifier(x, t).double(), dim=1)
        chosen = log_p.gather(1, labels.view(-1, 1).to(log_p.device)).sum()
        (grad,) = torch.autograd.grad(chosen, x)
    if not math.isfinite(grad.abs().max().item()):
        raise FloatingPointError("the classifier's gradient is not finite")
    return grad


class ClassifierFreeGuidance:
    """denoise(x, t, cond) for a guided pair, with both branches in one batched call of the
    wrapped denoiser: cond and null_cond (Conditions, or bare label tensors) are stacked along the
    batch, null_cond broadcast to cond."""

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
        cond, null = _pair(cond, self.null_cond, x.shape[0], x.device)
        if self.scale == 0 and self.rescale == 0 and t_scalar is not None:  # x0_u alone: one half-size call
            return self.denoise(x, t, null)
        t_both = torch.cat([t, t]) if t_scalar is None else t
        x0_c, x0_u = self.denoise(torch.cat([x, x]), t_both, Condition.cat(cond, null)).chunk(2)
        guided = x0_u + self.scale * (x0_c - x0_u)
        if self.rescale > 0:
            rescaled = guided * (_per_sample_std(x0_c) / _per_sample_std(guided).clamp(min=1e-12))
            guided = self.rescale * rescaled + (1 - self.rescale) * guided
        if t_scalar is None:  # per-example times: guide only inside the interval
            inside = ((t > lo) & (t <= hi)).view((-1,) + (1,) * (x.ndim - 1))
            guided = torch.where(inside, guided, x0_c)
        return guided


class ClassifierGuidance:
    """denoise(x, t, labels) guided towards `labels` by classifier(x_t, t) -> logits, at `scale`.

    model_cond says what the wrapped denoiser is called with: SAME (the labels: a conditional model,
    or a classifier-free guided one), None (an unconditional model), or one label broadcast to the
    batch (e.g. the null label: a class-conditional model's unconditional branch).
    """

    def __init__(self, denoise: Denoiser, classifier, schedule: Schedule, scale: float, model_cond: Any = SAME):
        if scale < 0:
            raise ValueError(f"the classifier guidance scale must be >= 0, got {scale}")
        self.denoise, self.classifier, self.schedule = denoise, classifier, schedule
        self.scale, self.model_cond = float(scale), model_cond

    def __call__(self, x: Tensor, t: float | Tensor, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("classifier guidance needs the labels to guide to; got cond=None")
        cond = as_condition(cond)
        if cond.labels is None:
            raise ValueError("classifier guidance needs class labels in the condition")
        labels = cond.labels.to(x.device).expand(x.shape[0])
        if isinstance(self.model_cond, str) and self.model_cond == SAME:
            model_cond = cond
        elif self.model_cond is None:
            model_cond = None
        else:
            model_cond = Condition(labels=torch.as_tensor(self.model_cond, dtype=labels.dtype,
                                                          device=x.device).expand_as(labels))
        x0 = self.denoise(x, t, model_cond)
        if self.scale == 0:
            return x0
        t64 = torch.as_tensor(t, dtype=torch.float64).cpu()
        # At alpha = 0 (flow and cosine at t = 1) the correction is a 0 * infinity limit that tends to
        # E[x0 | y] - E[x0], not to 0: take it at the half log-SNR ALPHA_ZERO_LAMBDA instead, where
        # alpha / sigma = e^-5 (exact to O(alpha) there, and a learned classifier's gradient is
        # amplified 150 times rather than without bound).
        t_floor = self.schedule.t_from_log_snr(torch.tensor(2 * ALPHA_ZERO_LAMBDA, dtype=torch.float64))
        t_g = torch.where(self.schedule.alpha(t64) > 0, t64, t_floor)
        alpha, sigma = self.schedule.alpha(t_g), self.schedule.sigma(t_g)
        coef = sigma**2 / alpha
        if coef.ndim:
            coef, t_g = coef.to(x.device, x0.dtype).view((-1,) + (1,) * (x.ndim - 1)), t_g.to(x.device)
        else:
            coef, t_g = coef.item(), t_g.item()
        return x0 + self.scale * coef * log_prob_gradient(self.classifier, x, t_g, labels).to(x0.dtype)
