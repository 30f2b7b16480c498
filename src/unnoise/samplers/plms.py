"""PLMS, pseudo linear multistep (Liu et al. 2022, "PNDM", eq. 12-13).

PNDM combines the noise estimates of the last four points with the linear multistep weights
(55, -59, 37, -9) / 24 and moves x with the DDIM "transfer" (eq. 9). The transfer is exact for a
constant eps in the VE view, x~_s = x~_t + (s~_s - s~_t) eps, so PLMS is Adams-Bashforth on
d x~ / d s~ = eps. The fixed weights assume equal steps in s~, which no practical grid has; here the
weights are the variable-step Adams-Bashforth ones (the integral of the Lagrange interpolant of eps
over the step), which equal (55, -59, 37, -9) / 24 on equal steps and keep order 4 on any grid.

Warm-up ("rk4", PNDM's pseudo Runge-Kutta, eq. 13): the first three steps are classical RK4 in s~
with the transfer, four calls each, giving the history at fourth order. "multistep" warms up with
Adams-Bashforth of growing order instead (one call a step, as diffusers' `skip_prk_steps`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from unnoise.noise import Generators
from unnoise.samplers.steps import Callback, Denoiser, ddim_update, path_grid, report
from unnoise.schedules import Schedule

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)  # exact for degree <= 7


def adams_bashforth_weights(nodes: list[float], start: float, end: float) -> list[float]:
    """w_j with sum_j w_j f(nodes[j]) = (1 / (end - start)) * integral_start^end p(s) ds, p the
    polynomial through (nodes[j], f(nodes[j])). Equal spacing and 4 nodes give (55, -59, 37, -9) / 24."""
    x = 0.5 * (end - start) * _GL_NODES + 0.5 * (end + start)  # quadrature points on [start, end]
    weights = []
    for j, node_j in enumerate(nodes):
        basis = np.ones_like(x)
        for k, node_k in enumerate(nodes):
            if k != j:
                basis *= (x - node_k) / (node_j - node_k)
        weights.append(float(0.5 * (_GL_WEIGHTS * basis).sum()))
    return weights


def _transfer(x: Tensor, eps: Tensor, a_t: float, st_t: float, a_s: float, st_s: float) -> Tensor:
    """PNDM eq. 9 (the DDIM step with a given eps): x_s = alpha_s (x / alpha_t + (s~_s - s~_t) eps)."""
    return x.mul(a_s / a_t).add_(eps, alpha=a_s * (st_s - st_t))


def plms(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, warmup: str = "rk4",
         cond: Any = None, generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """PLMS with variable-step 4th-order Adams-Bashforth weights in s~ and RK4 (or multistep) warm-up."""
    if warmup not in ("rk4", "multistep"):
        raise ValueError(f"warmup must be 'rk4' or 'multistep', got {warmup!r}")
    grid = path_grid(schedule, times)

    def eps_at(x: Tensor, t: float, a: float, s: float) -> tuple[Tensor, Tensor]:
        x0_hat = denoise(x, t, cond)
        return (x - a * x0_hat) / s, x0_hat

    history: list[tuple[Tensor, float]] = []  # (eps, s~) at earlier grid points, newest first
    for i in range(grid.steps):
        a_t, s_t, a_s = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1]
        eps, x0_hat = eps_at(x, grid.t[i], a_t, s_t)
        if grid.sigma[i + 1] == 0 or a_t == 0:  # to t = 0: x0_hat; from alpha = 0: the DDIM step
            x = report(callback, grid, i, ddim_update(x, x0_hat, a_t, s_t, a_s, grid.sigma[i + 1]), x0_hat)
            continue
        st_t, st_s = grid.sigma_tilde(i), grid.sigma_tilde(i + 1)
        if warmup == "rk4" and len(history) < 3:
            t_mid = schedule.t_from_sigma_tilde(0.5 * (st_t + st_s)).item()
            a_m, s_m = schedule.alpha(t_mid).item(), schedule.sigma(t_mid).item()
            st_m = s_m / a_m
            e2, _ = eps_at(_transfer(x, eps, a_t, st_t, a_m, st_m), t_mid, a_m, s_m)
            e3, _ = eps_at(_transfer(x, e2, a_t, st_t, a_m, st_m), t_mid, a_m, s_m)
            e4, _ = eps_at(_transfer(x, e3, a_t, st_t, a_s, st_s), grid.t[i + 1], a_s, grid.sigma[i + 1])
            eps_step = (eps + 2 * e2 + 2 * e3 + e4) / 6  # PNDM eq. 13
        else:
            points = [(eps, st_t)] + history[:3]
            w = adams_bashforth_weights([st for _, st in points], st_t, st_s)
            eps_step = eps.mul(w[0])
            for w_j, (e_j, _) in zip(w[1:], points[1:]):
                eps_step.add_(e_j, alpha=w_j)
        history = [(eps, st_t)] + history[:2]
        x = report(callback, grid, i, _transfer(x, eps_step, a_t, st_t, a_s, st_s), x0_hat)
    return x
