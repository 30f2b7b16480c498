"""Euler, Euler ancestral and Heun on the probability-flow ODE in the VE view (Karras et al. 2022).

In the VE view x~ = x / alpha, s~ = sigma / alpha the ODE is d x~ / d s~ = eps_hat = (x~ - x0_hat) / s~
(Karras et al. eq. 4 with s(t) = 1). Steps are computed in x and stay finite where alpha = 0 except
Heun's correction, which needs a finite s~: a step starting at alpha = 0 is taken as Euler's.

Churn (Karras et al. Algorithm 2, lines 4-6): before a step, raise the noise level from s~_i to
s~_hat = s~_i (1 + gamma) by adding fresh noise, gamma = min(s_churn / N, sqrt(2) - 1) while
s_tmin <= s~_i <= s_tmax, and step from there.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from unnoise.noise import Generators, randn_like
from unnoise.samplers.steps import Callback, Denoiser, Grid, ddim_update, owns_state, path_grid, report
from unnoise.schedules import Schedule


def _churn(x: Tensor, schedule: Schedule, grid: Grid, i: int, s_churn: float, s_tmin: float,
           s_tmax: float, s_noise: float, generator: Generators) -> tuple[Tensor, float, float, float]:
    """Karras et al. Algorithm 2, lines 4-6: returns (x_hat, t_hat, alpha_hat, sigma_hat)."""
    t, a, s = grid.t[i], grid.alpha[i], grid.sigma[i]
    st = grid.sigma_tilde(i)
    gamma = min(s_churn / grid.steps, math.sqrt(2) - 1) if s_tmin <= st <= s_tmax else 0.0
    if gamma == 0 or math.isinf(st):
        return x, t, a, s
    t_hat = min(schedule.t_from_sigma_tilde(st * (1 + gamma)).item(), 1.0)
    a_hat, s_hat = schedule.alpha(t_hat).item(), schedule.sigma(t_hat).item()
    added = math.sqrt(max((s_hat / a_hat) ** 2 - st**2, 0.0))  # fresh noise in the VE view
    x_hat = x.mul(a_hat / a).add_(randn_like(x, generator), alpha=a_hat * added * s_noise)
    return x_hat, t_hat, a_hat, s_hat


def _check_churn(s_churn: float, s_noise: float) -> None:
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn}, {s_noise}")


def euler(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, s_churn: float = 0.0,
          s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0, cond: Any = None,
          generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """Euler's method on the VE-view ODE (Karras et al. Algorithm 2 without the correction).
    Without churn it is DDIM with eta = 0, step for step."""
    _check_churn(s_churn, s_noise)
    grid = path_grid(schedule, times)
    for i in range(grid.steps):
        x, t_hat, a_hat, s_hat = _churn(x, schedule, grid, i, s_churn, s_tmin, s_tmax, s_noise, generator)
        x0_hat = denoise(x, t_hat, cond)
        x = ddim_update(x, x0_hat, a_hat, s_hat, grid.alpha[i + 1], grid.sigma[i + 1],
                        inplace=owns_state(callback, i) and s_churn == 0)
        x = report(callback, grid, i, x, x0_hat)
    return x


def euler_ancestral(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, eta: float = 1.0,
                    s_noise: float = 1.0, cond: Any = None, generator: Generators = None,
                    callback: Callback | None = None) -> Tensor:
    """Euler ancestral (k-diffusion `sample_euler_ancestral`): an Euler step down to s~_down, then
    fresh noise back up to s~_next, with s~_up = min(s~_next, eta s~_next sqrt(1 - r^2)) and
    s~_down = sqrt(s~_next^2 - s~_up^2), r = s~_next / s~. In x (times alpha_next) this is DDIM
    with eta <= 1: both draw from the same posterior."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    grid = path_grid(schedule, times)
    for i in range(grid.steps):
        x0_hat = denoise(x, grid.t[i], cond)
        s_next = grid.sigma[i + 1]
        sigma_up = s_next * min(1.0, eta * math.sqrt(1 - grid.decay(i) ** 2))
        noise = randn_like(x, generator) if sigma_up > 0 else None
        sigma_down = math.sqrt(s_next * s_next - sigma_up * sigma_up)
        x = ddim_update(x, x0_hat, grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], sigma_down)
        if noise is not None:  # out of place: a step to sigma_down = 0 returned x0_hat itself
            x = x.add(noise, alpha=sigma_up * s_noise)
        x = report(callback, grid, i, x, x0_hat)
    return x


def heun(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, s_churn: float = 0.0,
         s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0, cond: Any = None,
         generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2; Algorithm 1 without churn).
    2N - 1 denoiser calls for N steps: the last step, to t = 0, is Euler's (x0_hat)."""
    _check_churn(s_churn, s_noise)
    grid = path_grid(schedule, times)
    for i in range(grid.steps):
        x_hat, t_hat, a_hat, s_hat = _churn(x, schedule, grid, i, s_churn, s_tmin, s_tmax, s_noise, generator)
        x0_hat = denoise(x_hat, t_hat, cond)
        a_s, s_s = grid.alpha[i + 1], grid.sigma[i + 1]
        x = ddim_update(x_hat, x0_hat, a_hat, s_hat, a_s, s_s)  # Euler predictor (line 7)
        if s_s > 0 and a_hat > 0:
            # Trapezoid correction (line 10): x~_s = x~_euler + (s~_s - s~_hat)(eps' - eps) / 2 with
            # eps' = (x_euler - a_s x0') / s_s, eps = (x_hat - a_hat x0_hat) / s_hat and
            # x_euler = k x_hat + m x0_hat, collected into A x_hat + B x0_hat + C x0'.
            x0_next = denoise(x, grid.t[i + 1], cond)
            c = 0.5 * a_s * (s_s / a_s - s_hat / a_hat)
            k = s_s / s_hat
            m = a_s - k * a_hat
            A, B, C = (1 + c / s_s) * k - c / s_hat, (1 + c / s_s) * m + c * a_hat / s_hat, -c * a_s / s_s
            inplace = owns_state(callback, i) and s_churn == 0 and x0_hat is not x_hat and x0_next is not x_hat
            x = (x_hat.mul_(A) if inplace else x_hat.mul(A)).add_(x0_hat, alpha=B).add_(x0_next, alpha=C)
        x = report(callback, grid, i, x, x0_hat)
    return x
