"""Ancestral and implicit samplers: DDPM (Ho et al. 2020) and DDIM (Song et al. 2021).

With r = exp(-h) = (alpha_t sigma_s) / (alpha_s sigma_t) for a step t -> s (h the step in lambda),
the posterior q(x_s | x_t, x0) of any Gaussian path (Ho et al. eq. 6-7, Kingma et al. 2021 eq. 33)
has mean alpha_s (1 - r^2) x0 + r (sigma_s / sigma_t) x_t and variance sigma_s^2 (1 - r^2).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from unnoise.noise import Generators, randn_like
from unnoise.samplers.steps import Callback, Denoiser, ddim_update, owns_state, path_grid, report
from unnoise.schedules import Schedule


def ddpm(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, variance: str = "small",
         cond: Any = None, generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any grid: draw x_s from the
    posterior q(x_s | x_t, x0 = x0_hat). variance: "small" is the posterior's (beta-tilde), "large"
    is the forward step's sigma_t^2 (1 - r^2) (beta; Ho et al. §3.2)."""
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    grid = path_grid(schedule, times)
    for i in range(grid.steps):
        x0_hat = denoise(x, grid.t[i], cond)
        s_t, a_s, s_s = grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        if s_s == 0:
            x = x0_hat
        else:
            r = grid.decay(i)
            std = (s_s if variance == "small" else s_t) * math.sqrt(1 - r * r)
            x = x.mul(r * s_s / s_t).add_(x0_hat, alpha=a_s * (1 - r * r)).add_(randn_like(x, generator), alpha=std)
        x = report(callback, grid, i, x, x0_hat)
    return x


def ddim(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, eta: float = 0.0,
         cond: Any = None, generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
    c = eta sigma_s sqrt(1 - r^2) (eq. 16). eta = 0 is deterministic (the probability-flow ODE's
    first-order exponential integrator); eta = 1 is DDPM with the small variance."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    grid = path_grid(schedule, times)
    for i in range(grid.steps):
        x0_hat = denoise(x, grid.t[i], cond)
        c = eta * grid.sigma[i + 1] * math.sqrt(1 - grid.decay(i) ** 2)
        noise = randn_like(x, generator) if c > 0 else None
        x = ddim_update(x, x0_hat, grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1], c, noise,
                        inplace=owns_state(callback, i))
        x = report(callback, grid, i, x, x0_hat)
    return x
