"""What every sampler shares: the grid's coefficients as plain floats, and the per-step callback.

Conventions: x lives in the schedule's own coordinates, x_t = alpha x0 + sigma eps. The
"VE view" x~ = x / alpha, s~ = sigma / alpha turns every path into alpha = 1 (Karras et al. 2022 §4);
lambda = log(alpha / sigma) = -log s~ is half the log-SNR (Lu et al. 2022's lambda). A step to t = 0
returns the denoiser's estimate x0_hat: every sampler ends the same way, and a sampler's accuracy is
that of its solve down to the grid's last positive time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unnoise.schedules import Schedule

Denoiser = Callable[..., Tensor]  # denoise(x_t, t: float, cond) -> x0_hat


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each step."""

    i: int  # step index, 0 for the first (noisiest) step
    t: float  # time the step started from
    t_next: float  # time it reached
    x: Tensor  # the state at t_next
    x0_hat: Tensor | None  # the denoiser's estimate at t (None between an adaptive solver's outputs)


Callback = Callable[[StepInfo], Tensor | None]  # may return a replacement for x (e.g. inpainting)


@dataclass(frozen=True)
class Grid:
    """A validated time grid and its path coefficients, as floats (computed once, in float64)."""

    t: list[float]
    alpha: list[float]
    sigma: list[float]

    def __len__(self) -> int:
        return len(self.t)

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def lam(self, i: int) -> float:
        """lambda = log(alpha / sigma): -inf where alpha = 0, +inf at t = 0."""
        a, s = self.alpha[i], self.sigma[i]
        return math.inf if s == 0 else -math.inf if a == 0 else math.log(a / s)

    def sigma_tilde(self, i: int) -> float:
        return math.inf if self.alpha[i] == 0 else self.sigma[i] / self.alpha[i]

    def decay(self, i: int) -> float:
        """exp(-h) = exp(lambda_i - lambda_{i+1}) = (alpha_i sigma_{i+1}) / (alpha_{i+1} sigma_i), in [0, 1)."""
        return self.alpha[i] * self.sigma[i + 1] / (self.alpha[i + 1] * self.sigma[i])


def path_grid(schedule: Schedule, times: Sequence[float] | Tensor) -> Grid:
    """Check a sampler's `times` (strictly decreasing, in [0, 1]) and tabulate. A grid ending at 0
    is a whole path; one ending above 0 is part of a path: the sampler returns x at times[-1] (e.g.
    RePaint's segments between its jumps back up)."""
    t = torch.as_tensor(times, dtype=torch.float64).flatten()
    if t.numel() < 2:
        raise ValueError(f"times needs at least 2 entries (one step), got {t.numel()}")
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"times must decrease strictly, got {t.tolist()[:6]}...")
    if t[-1].item() < 0.0 or t[0].item() > 1.0:
        raise ValueError(f"times must lie in [0, 1], got {t[0].item()} .. {t[-1].item()}")
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    if bool((sigma[:-1] <= 0).any()):
        raise ValueError(f"every time but the last must be noisy (sigma > 0); schedule {schedule.name!r} "
                         f"is clean at t = {t[:-1][sigma[:-1] <= 0].tolist()}")
    return Grid(t.tolist(), alpha.tolist(), sigma.tolist())


def whole_path(grid: Grid, sampler: str) -> None:
    """Refuse part of a path for a sampler that needs the whole one."""
    if grid.t[-1] != 0.0:
        raise ValueError(f"{sampler} needs times ending at exactly 0, got a grid ending at t = {grid.t[-1]:g}")


def graph_only_if_asked(sampler: Callable) -> Callable:
    """A sampler that records no autograd graph unless its x requires grad. Sampling is inference:
    without this, a network with trainable parameters makes every step keep its activations for a
    backward pass no one asked for. A caller who wants gradients through the sampler (with respect
    to the start x, and then also the network's parameters) passes an x that requires grad."""

    @functools.wraps(sampler)
    def run(denoise: Denoiser, schedule: Schedule, x: Tensor, times, **options) -> Tensor:
        if isinstance(x, Tensor) and x.requires_grad:
            return sampler(denoise, schedule, x, times, **options)
        with torch.no_grad():
            return sampler(denoise, schedule, x, times, **options)

    return run


def owns_state(callback: Callback | None, i: int) -> bool:
    """Whether a sampler may update x in place at step i: never the caller's x_T (step 0), and never
    a state a callback has seen (it may have kept it)."""
    return callback is None and i > 0


def report(callback: Callback | None, grid: Grid, i: int, x: Tensor, x0_hat: Tensor | None) -> Tensor:
    """Tell the callback about step i; it may hand back a replacement state."""
    if callback is None:
        return x
    replaced = callback(StepInfo(i, grid.t[i], grid.t[i + 1], x, x0_hat))
    return x if replaced is None else replaced


def eps_from_x0(x: Tensor, x0_hat: Tensor, alpha: float, sigma: float) -> Tensor:
    """eps_hat = (x_t - alpha x0_hat) / sigma: the denoiser contract's noise estimate."""
    return torch.add(x, x0_hat, alpha=-alpha).div_(sigma)


def ddim_update(x: Tensor, x0_hat: Tensor, a_t: float, s_t: float, a_s: float, s_s: float,
                noise_std: float = 0.0, noise: Tensor | None = None, inplace: bool = False) -> Tensor:
    """The DDIM step t -> s (Song et al. 2021, eq. 12): x_s = alpha_s x0_hat + k eps_hat + c z with
    k = sqrt(sigma_s^2 - c^2), c = noise_std. With c = 0 it is also Euler's step in the VE view and
    DPM-Solver's first-order step, exact when x0_hat is constant; it stays finite where alpha_t = 0.
    A step to sigma_s = 0 returns x0_hat. `inplace` overwrites x (for a state the caller owns)."""
    if s_s == 0:
        return x0_hat
    k = math.sqrt(max(s_s * s_s - noise_std * noise_std, 0.0)) / s_t  # on eps_hat = (x - a_t x0_hat) / s_t
    x = (x.mul_(k) if inplace and x0_hat is not x else x.mul(k)).add_(x0_hat, alpha=a_s - k * a_t)
    return x.add_(noise, alpha=noise_std) if noise_std > 0 else x
