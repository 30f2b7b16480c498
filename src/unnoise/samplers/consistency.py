"""Multistep consistency sampling (Song et al. 2023, Algorithm 1).

A consistency model f(x_t, t) maps any point of a probability-flow trajectory to its start, so one
call turns noise into a sample. More calls trade time for quality: denoise, then noise the result
back up to the next (lower) level and denoise again. In the VE view (x~ = x / alpha, s~ = sigma /
alpha), Alg. 1's step is

    x0 = f(x_{t_i}, t_i),    x~_{t_{i+1}} = x0 + sqrt(s~_{i+1}^2 - s~_min^2) z,    z ~ N(0, I)

where s~_min is the boundary level at which f(x~, s~_min) = x~ (f's output is a sample at s~_min,
so the renoising adds only the variance still missing). Any denoiser runs here; for a consistency
model each grid time but the last 0 costs one network call. The grids of few-step samplers want
the "karras-trailing" spacing (unnoise.grids), whose levels all lie above t_min.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from unnoise.noise import Generators, randn_like
from unnoise.samplers.steps import Callback, Denoiser, path_grid, report
from unnoise.schedules import Schedule


def consistency(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, sigma_min: float = 0.0,
                cond: Any = None, generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """Song et al. 2023, Alg. 1 on any grid. sigma_min: the model's boundary level s~_min (0: the
    schedule's t_min, which is where unnoise's consistency models put it by default)."""
    if not (math.isfinite(sigma_min) and sigma_min >= 0):
        raise ValueError(f"sigma_min must be a finite number >= 0, got {sigma_min}")
    grid = path_grid(schedule, times)
    floor = sigma_min or schedule.sigma_tilde(schedule.t_min).item()
    for i in range(grid.steps):
        x0 = denoise(x, grid.t[i], cond)
        if grid.sigma[i + 1] == 0:
            x = x0
        else:
            level = grid.sigma_tilde(i + 1)
            extra = math.sqrt(max(level * level - floor * floor, 0.0))
            x = (x0 + extra * randn_like(x0, generator)) * grid.alpha[i + 1]
        x = report(callback, grid, i, x, x0)
    return x
