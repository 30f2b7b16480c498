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
from unnoise.samplers.steps import Callback, Denoiser, Grid, ddim_update, path_grid, report, whole_path
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
    mixture in 8 dimensions, 8,000 samples and 1,000 steps (karras on ddpm and edm, trailing on flow),
    per-sample norms inflate the within-component variance by 56-62 % and move the masses (chi-square
    p < 1e-9); expected norms measured -3.3 to +3.2 % over 4 seeds, what the sampling noise (1.0-1.2 %)
    allows around the +0.4 to +0.8 % of an exact variance recursion (tests/test_stochastic_truth.py)."""
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
    (1 + corrector_steps) calls a step.

    Like every sampler, it needs a grid that is fine in log s~ down to well below the data's scale.
    edm's trailing grid is not: it is linear in s~ = 80 t, so at 1,000 steps its last noisy level is
    s~ = 0.08 and its last steps have r = 1/2, 2/3, 3/4, ...; there the predictor's noise is 1 / r^2
    times the posterior's, and the final x0_hat at s~ = 0.08 narrows a component of std s by
    s^2 / (s^2 + 0.0064). For stds 0.09-0.28 the two leave the within-component variance at +10 to
    +18 % (exact recursion; +12 to +22 % measured with the mixture of `langevin_correct`), against
    +14 to +22 % for euler_maruyama and -34 to -60 % for ddpm on the same grid. The corrector is not
    the cause (none: +14 to +22 %; half the snr: +13 to +21 %), nor the start at s~ = 80: the same
    trailing grid down to s~ = 2 and 200 karras steps below gives +1.1 to +1.3 %, and the karras grid
    alone (the [sample] default, and edm's own) +0.5 %."""
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
    refused.

    Its samples are not p_0's, by the algorithm's own doing. For one Gaussian component N(m, s^2)
    every step is linear and the variance follows V <- (1 - a_i / (2 v_i))^2 V + a_i, with
    a_i = step_lr s~_i^2 / s~_L^2 and v_i = s^2 + s~_i^2 (the analysis of Song & Ermon 2020, §3.3).
    A level's fixed point, v_i / (1 - a_i / (4 v_i)), is wider than p_t, and at the default the chain
    does not even reach it: a step scales x~ - m by 1 - c u / (1 + u), u = s~_i^2 / s^2 (c = 0.1 at
    the default), a pull that vanishes once s~_i is below s, so the width left by the levels near
    s~ = s stays. With the exact denoiser of a 4-component mixture in 8-D (stds 0.09-0.28; 8,000
    samples, mean of 4 seeds), the within-component variance is, measured against the recursion:
        ddpm, 200 karras levels    +8.4 to +10.3 %   (recursion +9.0 to +9.4 %)
        ddpm, 400 karras levels    +2.8 to +4.8 %    (recursion +3.9 to +4.5 %; 2 seeds)
        edm,  200 karras levels    +8.3 to +10.3 %   (recursion +8.7 to +10.2 %)
        flow, 200 trailing levels  +9.6 to +19.0 %   (recursion +9.8 to +20.6 %)
    A larger step_lr narrows it (recursion at 0.8 s~_L^2, ddpm: +1.8 to +2.6 %) but the finite step
    also moves mass while the modes separate, toward the widest component: it gets 22.4-23.5 % of
    the samples against its weight of 20.6 % at the default (any of the above), 28 % at 0.8 s~_L^2
    and 40 % at 1.6 s~_L^2 (ddpm, 200 levels); smaller steps, more of them, shrink the shift slowly
    (0.025 s~_L^2 and 80 steps a level: 22.1 %)."""
    if steps_per_level < 1 or (step_lr is not None and not step_lr > 0):
        raise ValueError(f"need steps_per_level >= 1 and step_lr > 0, got {steps_per_level}, {step_lr}")
    grid = path_grid(schedule, times)
    whole_path(grid, "annealed_langevin")  # its step sizes are relative to the last noisy level
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
