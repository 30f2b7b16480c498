"""An error-controlled ODE solve of the probability-flow ODE (Song et al. 2021, eq. 13).

In the VE view x~ = x / alpha with lambda = log(alpha / sigma) = -log s~ as the variable, the ODE
d x~ / d s~ = (x~ - x0_hat) / s~ (Karras et al. 2022, eq. 4) becomes d x~ / d lambda = x0_hat - x~:
smooth, schedule-free (a schedule enters only through t(lambda)), and linear apart from x0_hat.
torchdiffeq's embedded Runge-Kutta pairs (Dormand-Prince "dopri5" by default) choose the steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from unnoise.noise import Generators
from unnoise.samplers.steps import Callback, Denoiser, ddim_update, path_grid, report, whole_path
from unnoise.schedules import Schedule

LAMBDA_FLOOR = -15.0  # where a start at alpha = 0 hands over to the solver: alpha ~ 3e-7 there
# Default cap on the solver's network calls. Measured on the MNIST demo run (EDM, karras grid): 75
# calls at rtol = atol = 1e-3, 183 at 1e-4 (16 samples, guidance 3), 507 at the default 1e-5 (4 samples).
MAX_NFE = 2000


def ode_adaptive(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, rtol: float = 1e-5,
                 atol: float = 1e-5, max_nfe: int = MAX_NFE, method: str = "dopri5", cond: Any = None,
                 generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """Solve from times[0] to times[-2] with adaptive steps, then step to t = 0 (x0_hat). The grid's
    inner times are the output points the callback sees; they do not constrain the solver's steps:
    rtol and atol do, and the solve stops with an error once it would pass max_nfe network calls.
    A start at alpha = 0 (lambda = -inf) first takes the exact-in-the-limit DDIM step to lambda = -15."""
    if not (rtol > 0 and atol > 0) or not (isinstance(max_nfe, int) and max_nfe >= 2):
        raise ValueError(f"ode_adaptive needs rtol > 0, atol > 0 and a whole max_nfe >= 2, got {rtol}, {atol}, {max_nfe}")
    grid = path_grid(schedule, times)
    whole_path(grid, "ode_adaptive")  # its last step is the denoiser's x0_hat
    if grid.steps == 1:
        x0_hat = denoise(x, grid.t[0], cond)
        return report(callback, grid, 0, x0_hat, x0_hat)
    lams = [grid.lam(i) for i in range(grid.steps)]  # the noisy grid points, increasing
    a_first, calls = grid.alpha[0], [0]  # calls: network calls so far
    if lams[0] == -math.inf:
        calls[0] += 1
        lams[0] = min(LAMBDA_FLOOR, lams[1] - 1.0)
        t_start = schedule.t_from_log_snr(2 * lams[0]).item()
        a_first = schedule.alpha(t_start).item()
        x = ddim_update(x, denoise(x, grid.t[0], cond), 0.0, grid.sigma[0], a_first, schedule.sigma(t_start).item())

    def velocity(lam: Tensor, x_tilde: Tensor) -> Tensor:
        calls[0] += 1
        if calls[0] + 1 > max_nfe:  # this call and the final x0_hat must fit
            raise ValueError(f"ode_adaptive: the solve needs more than max_nfe = {max_nfe} network calls at rtol = "
                             f"{rtol:g}, atol = {atol:g}; loosen the tolerances or raise max_nfe")
        t = schedule.t_from_log_snr(2 * lam.to(torch.float64)).item()
        return denoise(x_tilde * schedule.alpha(t).item(), t, cond) - x_tilde  # d x~ / d lambda

    path = odeint(velocity, x / a_first, torch.tensor(lams, dtype=torch.float64), rtol=rtol, atol=atol,
                  method=method)  # (steps, *x.shape): x~ at each noisy grid time
    for i in range(grid.steps - 1):
        x = report(callback, grid, i, path[i + 1] * grid.alpha[i + 1], None)
    x0_hat = denoise(x, grid.t[-2], cond)
    return report(callback, grid, grid.steps - 1, x0_hat, x0_hat)
