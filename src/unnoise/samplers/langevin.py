"""Score-based SDE samplers: reverse-SDE Euler-Maruyama, predictor-corrector with a Langevin
corrector (Song et al. 2021), and annealed Langevin dynamics (Song & Ermon 2019).

All work in the VE view, x~ = x / alpha and s~ = sigma / alpha, where the score of p_t is
(x0_hat - x~) / s~^2 = -eps_hat / s~, and every path is d x~ = sqrt(d s~^2 / dt) dw (Karras et al.
2022 §4). r = s~_{i+1} / s~_i below; updates are written in x and stay finite where they can.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unnoise.noise import Generators, randn_like
from unnoise.samplers.steps import Callback, Denoiser, Grid, ddim_update, path_grid, report
from unnoise.schedules import Schedule


def _em_step(x: Tensor, x0_hat: Tensor, grid: Grid, i: int, generator: Generators) -> Tensor:
    """Euler-Maruyama on the reverse SDE d x~ = -(d s~^2) score dt + sqrt(|d s~^2|) dw (Song et al.
    2021, eq. 6; the "reverse diffusion" discretisation of their eq. 46-47):
    x~_s = x~_t + (s~_t^2 - s~_s^2) score + sqrt(s~_t^2 - s~_s^2) z. Its mean equals the DDPM
    posterior mean; its variance sigma_s^2 (1 / r^2 - 1) exceeds the posterior's by 1 / r^2. A start
    at alpha = 0 (infinite s~) takes the posterior (ancestral) step instead."""
    s_t, a_s, s_s = grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
    if s_s == 0:
        return x0_hat
    r = grid.decay(i)
    std = s_s * math.sqrt(1 / (r * r) - 1) if r > 0 else s_s
    return x.mul(r * s_s / s_t).add_(x0_hat, alpha=a_s * (1 - r * r)).add_(randn_like(x, generator), alpha=std)


def euler_maruyama(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, cond: Any = None,
                   generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """Reverse-SDE Euler-Maruyama (Song et al. 2021, §4.1): first order, one call a step."""
    grid = path_grid(schedule, times)
    for i in range(grid.steps):
        x0_hat = denoise(x, grid.t[i], cond)
        x = report(callback, grid, i, _em_step(x, x0_hat, grid, i, generator), x0_hat)
    return x


def _per_sample_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).view((-1,) + (1,) * (v.ndim - 1))  # (B, 1, ..., 1)


def langevin_correct(denoise: Denoiser, x: Tensor, t: float, alpha: float, sigma: float, snr: float,
                     cond: Any, generator: Generators, norms: str = "expected") -> Tensor:
    """One Langevin corrector step at time t (Song et al. 2021, Algorithm 4 / 2 lines 5-7):
    x~ <- x~ + e g + sqrt(2 e) z with g the score and e = 2 (snr |z| / |g|)^2. With g = -eps_hat / s~
    this reads, in x, x <- x - 2 snr^2 sigma q^2 eps_hat + 2 snr sigma q z with q = |z| / |eps_hat|.

    norms="expected" (the default) puts q = 1, the value of |z| / |eps_hat| when eps_hat ~ N(0, I).
    norms="sample" takes the norms per sample, as Algorithm 4 reads; that makes the step size depend
    on the state and skews the stationary law (score_sde's code averages the norms over the batch
    instead, which would make a sample depend on its batch). With the exact denoiser of a 4-component
    mixture in 8 dimensions, 4,000 samples, 1,000 trailing steps: per-sample norms inflate the
    within-component variance by 51-61 % (ddpm) and 58-86 % (flow); expected norms by -1 to +6 %."""
    x0_hat = denoise(x, t, cond)
    eps = (x - alpha * x0_hat) / sigma
    z = randn_like(x, generator)
    if norms == "expected":
        return x - (2 * snr**2 * sigma) * eps + (2 * snr * sigma) * z
    q = _per_sample_norm(z) / _per_sample_norm(eps).clamp(min=torch.finfo(x.dtype).tiny)
    return x - (2 * snr**2 * sigma) * q**2 * eps + (2 * snr * sigma) * q * z


def pc(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, snr: float = 0.16,
       corrector_steps: int = 1, norms: str = "expected", cond: Any = None, generator: Generators = None,
       callback: Callback | None = None) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1; Algorithms 2-3 for the step
    sizes): at each noisy time, `corrector_steps` Langevin steps at signal-to-noise ratio `snr`
    (`norms` as in `langevin_correct`), then an Euler-Maruyama predictor step. Algorithm 3's extra
    factor alpha_i = 1 - beta_i on VP step sizes is left out (it tends to 1 as steps shrink).
    (1 + corrector_steps) calls a step."""
    if snr <= 0 or corrector_steps < 0 or norms not in ("sample", "expected"):
        raise ValueError(f"need snr > 0, corrector_steps >= 0 and norms 'sample' or 'expected', "
                         f"got {snr}, {corrector_steps}, {norms!r}")
    grid = path_grid(schedule, times)
    for i in range(grid.steps):
        if grid.alpha[i] > 0:  # at alpha = 0 p_t is pure noise already: nothing to correct
            for _ in range(corrector_steps):
                x = langevin_correct(denoise, x, grid.t[i], grid.alpha[i], grid.sigma[i], snr, cond, generator, norms)
        x0_hat = denoise(x, grid.t[i], cond)
        x = report(callback, grid, i, _em_step(x, x0_hat, grid, i, generator), x0_hat)
    return x


def annealed_langevin(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, steps_per_level: int = 10,
                      step_lr: float | None = None, cond: Any = None, generator: Generators = None,
                      callback: Callback | None = None) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): for each noise level s~_i of the
    grid, `steps_per_level` steps x~ <- x~ + (a_i / 2) score + sqrt(a_i) z with a_i = step_lr
    s~_i^2 / s~_L^2 (s~_L the smallest level), then the last step to t = 0 returns x0_hat (the
    denoising step of Jolicoeur-Martineau et al. 2021). Levels at alpha = 0 are passed with DDIM.

    step_lr None: 0.2 s~_L^2, Song & Ermon's ratio (eps = 2e-5 at sigma_L = 0.01) on whatever grid is
    given. Each step multiplies x by (1 - c), c = step_lr / (2 s~_L^2), before adding the estimate and
    noise; with c >= 2 that factor is at least 1 in size and the chain diverges, so such a step_lr is
    refused. Langevin dynamics at a finite step size has its own stationary law, not p_t: its samples
    carry a bias of the algorithm's own that shrinks with step_lr."""
    if steps_per_level < 1 or (step_lr is not None and not step_lr > 0):
        raise ValueError(f"need steps_per_level >= 1 and step_lr > 0, got {steps_per_level}, {step_lr}")
    grid = path_grid(schedule, times)
    st_last = grid.sigma_tilde(grid.steps - 1)
    step_lr = 0.2 * st_last**2 if step_lr is None else step_lr
    c = step_lr / (2 * st_last**2)
    if c >= 2:
        raise ValueError(f"annealed_langevin: step_lr = {step_lr:g} diverges on this grid, whose smallest noise level "
                         f"is s~ = {st_last:.3g}: step_lr / (2 s~^2) = {c:.3g} must be < 2, so step_lr < "
                         f"{4 * st_last**2:.3g}; leave step_lr unset for 0.2 s~^2")
    for i in range(grid.steps):
        a, s = grid.alpha[i], grid.sigma[i]
        x0_hat = None
        if a > 0:
            # In x: x <- (1 - c) x + c alpha x0_hat + alpha sqrt(a_i) z with c = step_lr / (2 s~_L^2).
            noise_scale = a * math.sqrt(step_lr) * grid.sigma_tilde(i) / st_last
            for _ in range(steps_per_level):
                x0_hat = denoise(x, grid.t[i], cond)
                x = x.mul(1 - c).add_(x0_hat, alpha=c * a).add_(randn_like(x, generator), alpha=noise_scale)
        if grid.sigma[i + 1] == 0 or a == 0:
            x0_hat = denoise(x, grid.t[i], cond)
            x_next = ddim_update(x, x0_hat, a, s, grid.alpha[i + 1], grid.sigma[i + 1])
        else:
            x_next = x * (grid.alpha[i + 1] / a)  # carry x~ to the next level unchanged
        x = report(callback, grid, i, x_next, x0_hat)  # x0_hat: the level's last estimate
    return x
