"""Time grids for sampling: `steps + 1` times from the noisy end down to exactly one t = 0.

A grid t_N > ... > t_1 > t_0 = 0 gives N sampler steps. The spacings users know from other tools:

    linspace  N times evenly from t_max down to t_min (diffusers "linspace")
    leading   N times k * floor(T / N) + offset from the clean end up (diffusers "leading", DDIM paper)
    trailing  N times t_max * (1 - i / N): starts exactly at t_max (Lin et al. 2024, Table 2)
    karras    sigma_tilde^(1/rho) evenly spaced between its ends (Karras et al. 2022, eq. 5)
    karras-trailing  the N noisiest of karras's N + 1 levels: starts at t_max and leaves out the
              cleanest level t_min, so each of N denoiser calls lands at a useful noise level (one- and
              few-step samplers: consistency models, progressive distillation's students)
    logsnr    log-SNR evenly spaced between its ends (Lu et al. 2022, DPM-Solver §3.3)

On discrete schedules the index spacings (linspace, leading, trailing) land on multiples of 1/T, as
the timesteps of diffusers' schedulers do (timestep k there is t = (k + 1) / T here).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unnoise.schedules import Schedule

SPACINGS = ("trailing", "linspace", "leading", "karras", "logsnr", "karras-trailing")


def time_grid(schedule: Schedule, steps: int, spacing: str = "trailing", *, rho: float = 7.0,
              t_max: float = 1.0, offset: int = 0) -> Tensor:
    """Return a float64 tensor of shape (steps + 1,), strictly decreasing, ending at exactly 0.

    rho: Karras exponent (7 in the paper). t_max: the noisiest time. offset: diffusers'
    `steps_offset` for "leading" on discrete schedules.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {', '.join(SPACINGS)}")
    if not schedule.t_min < t_max <= 1:
        raise ValueError(f"t_max must lie in ({schedule.t_min:g}, 1], got {t_max!r}")
    T = schedule.num_timesteps
    if T is not None and spacing in ("linspace", "leading", "trailing") and steps > T:
        raise ValueError(f"{steps} steps asked of a discrete schedule with only {T} timesteps; "
                         f"use at most {T}, or the 'karras' or 'logsnr' spacing")
    i = torch.arange(steps, dtype=torch.float64)
    if spacing == "linspace":
        t = t_max + (schedule.t_min - t_max) * i / max(steps - 1, 1)
        if T is not None:
            t = (torch.round(t * T - 1) + 1) / T if steps > 1 else torch.tensor([t_max])
    elif spacing == "leading":
        if T is not None:
            t = ((steps - 1 - i) * (T // steps) + offset + 1) / T
        else:
            t = schedule.t_min + (steps - 1 - i) * (t_max - schedule.t_min) / steps
    elif spacing == "trailing":
        t = t_max * (1 - i / steps)
        if T is not None:
            t = torch.round(t * T) / T
    else:
        t = _noise_level_spacing(schedule, steps, spacing, rho, t_max)
    grid = torch.cat([t.to(torch.float64), torch.zeros(1, dtype=torch.float64)])
    if not bool((grid[1:] < grid[:-1]).all()) or grid[-2] <= 0 or grid[0] > 1:
        raise ValueError(f"{spacing!r} with {steps} steps gives no strictly decreasing grid in (0, 1] "
                         f"on schedule {schedule.name!r}: {grid.tolist()[:8]}...")
    return grid


def time_at(schedule: Schedule, fraction: float, spacing: str = "trailing", *, rho: float = 7.0) -> float:
    """The time `fraction` of the way from the clean end (0: t = 0) to the noisy end (1: t = 1) along
    the quantity `spacing` spaces evenly: t itself for the index spacings (on a discrete schedule the
    nearest multiple of 1 / T), sigma_tilde^(1/rho) for
    karras, log-SNR for logsnr (between t_min and 1, or t_min and the noisiest finite level). A
    "strength" that means the same share of the sampling path on every schedule (diffusers' img2img
    strength, as a continuous number: on edm's karras grid 0.5 is sigma_tilde = 2.5, not t = 0.5)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {', '.join(SPACINGS)}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    if fraction in (0, 1) or spacing in ("trailing", "linspace", "leading"):
        T = schedule.num_timesteps  # a discrete schedule's index spacings stay on its multiples of 1 / T
        return float(fraction) if T is None or fraction == 0 else max(round(fraction * T), 1) / T
    lam_hi, lam_lo = schedule.log_snr(schedule.t_min).item(), schedule.log_snr(1.0).item()
    if not math.isfinite(lam_lo):  # alpha(1) = 0: the noisiest finite level the grids use (edm's sigma_max)
        lam_lo = min(lam_hi - 1.0, -2 * math.log(80.0))
    if spacing == "logsnr":
        lam = lam_hi + fraction * (lam_lo - lam_hi)
    else:
        s_min, s_max = math.exp(-lam_hi / 2), math.exp(-lam_lo / 2)
        lam = -2 * math.log((s_min ** (1 / rho) + fraction * (s_max ** (1 / rho) - s_min ** (1 / rho))) ** rho)
    return min(max(schedule.t_from_log_snr(lam).item(), schedule.t_min), 1.0)


def _noise_level_spacing(schedule: Schedule, steps: int, spacing: str, rho: float, t_max: float) -> Tensor:
    lam_hi, lam_lo = schedule.log_snr(schedule.t_min).item(), schedule.log_snr(t_max).item()
    if not (math.isfinite(lam_hi) and math.isfinite(lam_lo)):
        raise ValueError(f"the {spacing!r} spacing needs a finite noise level at t_max = {t_max}; "
                         f"schedule {schedule.name!r} has log-SNR {lam_lo} there: "
                         "pass t_max < 1 or use 'trailing'")
    if spacing == "karras-trailing":  # levels i / steps of the way, i < steps: the last (t_min) left out
        frac = torch.arange(steps, dtype=torch.float64) / steps
    else:
        frac = torch.linspace(0, 1, steps, dtype=torch.float64)  # 0 = noisiest
    if spacing == "logsnr":
        lam = lam_lo + frac * (lam_hi - lam_lo)
    else:
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        s_max, s_min = math.exp(-lam_lo / 2), math.exp(-lam_hi / 2)  # sigma_tilde at the ends
        sig = (s_max ** (1 / rho) + frac * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        lam = -2 * torch.log(sig)
    t = schedule.t_from_log_snr(lam)
    if steps > 1 and spacing != "karras-trailing":
        t[-1] = schedule.t_min  # exact ends, free of round-off in the inverse
    t[0] = t_max
    return t
