"""Inversion of deterministic samplers: run the probability-flow ODE upward, data -> noise.

`times` is always the SAMPLER's grid (strictly decreasing, ending at 0, as `path_grid` checks);
inversion walks it upward. Symbols for one sampler step t -> s (t = times[i] > s = times[i + 1]):

    a_t, s_t, a_s, s_s   alpha and sigma at t and s          k = s_s / s_t
    Phi(y)               one step of the sampler from (y, t) down to s: the sampler run on [t, s]
    DDIM's Phi(y)        k y + m x0_hat(y, t),  m = a_s - k a_t      (Song et al. 2021, eq. 12)

Explicit DDIM inversion (Song et al. 2021, eq. 13 run upward; Dhariwal & Nichol 2021, App. F) takes
the known lower state x_s for the unknown upper one inside x0_hat: y = (x_s - m x0_hat(x_s, s)) / k,
which is DDIM's update from (x_s, s) up to t. Its error per step is O(h^2), so the round trip
(invert, then sample on the same grid) is off by O(1/N) over N steps.

Exact inversion (Hong et al. 2024, "On exact inversion of DPM-solvers"; Pan et al. 2023, AIDI) solves
Phi(y) = x_s for y by the preconditioned fixed-point (Richardson) iteration y <- y + c (x_s - Phi(y)),
which contracts an error direction by 1 - c lambda for each eigenvalue lambda of dPhi/dy. For DDIM,
dPhi/dy = k I + m J with J the Jacobian of x0_hat. For an exact posterior mean J = (a_t / s_t^2)
Cov[x0 | x_t] is symmetric with eigenvalues >= 0, and <= 1 / a_t where log p_t is concave, so there
dPhi/dy has eigenvalues in [k, a_s / a_t] (k a_t / a_s = exp(-h), h = lambda_s - lambda_t the step in
half-log-SNR). We take c = a_t / a_s: wherever the noise is small next to the data's spread, J is
close to I / a_t and lambda to a_s / a_t, which this c solves in one update; the other end contracts
by 1 - exp(-h) ~ h; and it keeps contracting up to lambda = 2 a_s / a_t, i.e. J up to about twice the
log-concave bound, which multimodal data exceed between modes. The minimax c = 2 / (k + a_s / a_t)
guarantees tanh(h / 2) on all of [k, a_s / a_t], but on large steps that is slow exactly where the
eigenvalues sit, and it diverges sooner. A sample whose update grows its residual (an eigenvalue past
2 / c) has the update rejected and its c halved, so its residual never grows. Inverting ddim and heun
on 2-D Gaussian mixtures (3 mixtures x 4 schedules, max_iter 200), this left 4, 4, 0 and 0 of 24
inversions unconverged at 10, 20, 50 and 100 steps; the minimax c left 12, 6, 1 and 0 with halving
and 16, 11, 4 and 0 without.
Heun's and Euler's steps are within O(h) of DDIM's (euler.py), so the same c serves them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unnoise.samplers.ddpm import ddim
from unnoise.samplers.euler import euler, heun
from unnoise.samplers.steps import (
    Callback,
    Denoiser,
    Grid,
    ddim_update,
    eps_from_x0,
    graph_only_if_asked,
    path_grid,
    report,
    whole_path,
)
from unnoise.schedules import Schedule

ONE_STEP_DETERMINISTIC = {"ddim": ddim, "euler": euler, "heun": heun}  # each step a function of the state alone


@dataclass(frozen=True)
class InversionReport:
    """How `fixed_point_invert` converged. Entry n is the n-th inversion step, from times[-1 - n] up
    to times[-2 - n] (the order of the callback's StepInfo.i)."""

    iterations: list[int]  # fixed-point updates taken (0: the explicit DDIM estimate already met tol)
    residuals: list[float]  # final RMS of target - Phi(y), worst sample of the batch
    tol: float  # the RMS residual asked for

    @property
    def converged(self) -> bool:
        return all(r < self.tol for r in self.residuals)


def _upward_grid(schedule: Schedule, times, caller: str) -> Grid:
    """The sampler's whole grid, checked by `path_grid` and read upward: entry 0 is t = 0, so inversion
    step n goes from up.t[n] to up.t[n + 1] and `report` tells callbacks (n, t_from, t_to)."""
    grid = path_grid(schedule, times)
    whole_path(grid, caller)
    if grid.steps == 1 and grid.alpha[0] == 0:
        raise ValueError(f"a single step from t = {grid.t[0]} (alpha = 0) to t = 0 maps every x_T to the "
                         "same sample: there is nothing to invert; use more steps")
    return Grid(grid.t[::-1], grid.alpha[::-1], grid.sigma[::-1])


def _explicit_step(denoise: Denoiser, up: Grid, x: Tensor, n: int, cond: Any) -> tuple[Tensor, Tensor]:
    """Explicit DDIM inversion from x at up.t[n] to up.t[n + 1]; returns (x_up, x0_hat).

    Above t = 0 the denoiser is evaluated at the lower, known point (Dhariwal & Nichol 2021, App. F).
    At t = 0 (n = 0) eps_hat = (x - alpha x0_hat) / sigma is 0 / 0; there x0_hat = x is known exactly
    (it is the data), and eps_hat is the denoiser's estimate at the lowest noisy level of the grid,
    t1 = up.t[1], with the data put there noise-free (alpha_t1 x, the VE view's x~ = x). In the VE
    view the step is x~_t1 = x + (x - x0_hat(x~ = x, t1)): one fixed-point update, from the data, of the
    sampler's own last step x0 = x0_hat(x_t1, t1), so that step undoes it to O(s~_t1^4); it is also
    the usual practice of evaluating eps at the clean data with the smallest noise label.
    """
    a_s, s_s, t_up, a_t, s_t = up.alpha[n], up.sigma[n], up.t[n + 1], up.alpha[n + 1], up.sigma[n + 1]
    if s_s > 0:
        x0_hat = denoise(x, up.t[n], cond)
        return ddim_update(x, x0_hat, a_s, s_s, a_t, s_t), x0_hat  # eq. 12 from s up to t
    y = x * a_t  # (B, ...) the data at t1, noise-free
    eps_hat = eps_from_x0(y, denoise(y, t_up, cond), a_t, s_t)
    return y.add_(eps_hat, alpha=s_t), x  # a_t x0_hat + s_t eps_hat with x0_hat = x


@graph_only_if_asked
def ddim_invert(denoise: Denoiser, schedule: Schedule, x0: Tensor, times, *, cond: Any = None,
                callback: Callback | None = None) -> Tensor:
    """Explicit DDIM inversion (Song et al. 2021, eq. 13 run upward; Dhariwal & Nichol 2021, App. F):
    the x_T at times[0] from which `ddim` on the same `times` approximately returns x0. One denoiser
    call per step; the round trip is off by O(1/N) (see `_explicit_step` for the step from t = 0).
    The callback sees StepInfo(n, t_from, t_to, x at t_to, x0_hat) for inversion step n, upward."""
    up = _upward_grid(schedule, times, "ddim_invert")
    x = x0
    for n in range(up.steps):
        x, x0_hat = _explicit_step(denoise, up, x, n, cond)
        x = report(callback, up, n, x, x0_hat)
    return x


def _relaxation(a_t: float, s_t: float, a_s: float, s_s: float) -> float:
    """c in y <- y + c (x_s - Phi(y)) for the step t -> s (module docstring): a_t / a_s, which is exact
    where J = I / a_t; 1 / k where a_t = 0, since x0_hat(y, t) cannot depend on y there (dPhi = k I)."""
    return 1 / (s_s / s_t) if a_t == 0 else a_t / a_s


def _rms(r: Tensor) -> Tensor:
    """Per-sample root-mean-square of r (B, ...): shape (B,)."""
    return r.reshape(r.shape[0], -1).square().mean(1).sqrt()


def _solve_step(phi: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, c: float, tol: float,
                max_iter: int) -> tuple[Tensor, int, float]:
    """Solve phi(y) = x from y by y <- y + c (x - phi(y)), with c per sample. Where an eigenvalue of
    dPhi passes 2 / c (J beyond twice the log-concave bound, between modes) an update can grow the
    residual: that sample's update is then rejected and its c halved, which doubles the largest
    eigenvalue that still contracts. Returns (y, updates tried, worst per-sample residual)."""
    r = x - phi(y)
    res = _rms(r)  # (B,)
    c = torch.full_like(res, c)  # (B,)
    per_sample = (-1,) + (1,) * (y.ndim - 1)
    it = 0
    while it < max_iter and res.max().item() >= tol:
        it += 1
        y_try = y + c.view(per_sample) * r
        r_try = x - phi(y_try)
        res_try = _rms(r_try)
        worse = res_try > res  # (B,)
        c = torch.where(worse, c / 2, c)
        keep = worse.view(per_sample)
        y, r, res = torch.where(keep, y, y_try), torch.where(keep, r, r_try), torch.where(worse, res, res_try)
    return y, it, res.max().item()


@graph_only_if_asked
def fixed_point_invert(denoise: Denoiser, schedule: Schedule, x0: Tensor, times, *, sampler: str = "ddim",
                       tol: float = 1e-7, max_iter: int = 50, cond: Any = None,
                       callback: Callback | None = None) -> tuple[Tensor, InversionReport]:
    """Exact inversion of a one-step deterministic sampler (Hong et al. 2024; Pan et al. 2023, AIDI):
    the x_T at times[0] from which `sampler` on the same `times` returns x0, each of its steps solved to
    an RMS residual below `tol` (absolute, in x's units: float32 states need tol ~1e-5 times their
    scale) by the fixed-point iteration of the module docstring, started from explicit DDIM inversion.
    Costs one denoiser call and 1 + iterations sampler steps per step. Returns (x_T, report); the
    callback sees StepInfo(n, t_from, t_to, x at t_to, None) for inversion step n, upward."""
    if sampler not in ONE_STEP_DETERMINISTIC:
        raise ValueError(f"fixed_point_invert needs a one-step deterministic sampler "
                         f"({', '.join(ONE_STEP_DETERMINISTIC)}), got {sampler!r}")
    if not tol > 0 or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"tol must be > 0 and max_iter a whole number >= 0, got {tol!r}, {max_iter!r}")
    step, up = ONE_STEP_DETERMINISTIC[sampler], _upward_grid(schedule, times, "fixed_point_invert")
    x, iterations, residuals = x0, [], []
    for n in range(up.steps):
        # 1. Start from explicit DDIM inversion; 2. solve Phi(y) = x for the state y one step up.
        y, _ = _explicit_step(denoise, up, x, n, cond)
        c = _relaxation(up.alpha[n + 1], up.sigma[n + 1], up.alpha[n], up.sigma[n])
        phi = functools.partial(step, denoise, schedule, times=[up.t[n + 1], up.t[n]], cond=cond)  # one step
        y, it, residual = _solve_step(phi, x, y, c, tol, max_iter)
        iterations.append(it)
        residuals.append(residual)
        x = report(callback, up, n, y, None)  # 3. the solved state is the next step's target
    return x, InversionReport(iterations, residuals, tol)


def slerp(z0: Tensor, z1: Tensor, w: float | Tensor) -> Tensor:
    """Spherical linear interpolation per sample (Shoemake 1985), as used between DDIM latents
    (Song et al. 2021, §5.3): sin((1 - w) theta) / sin(theta) z0 + sin(w theta) / sin(theta) z1, theta the
    angle between the flattened samples. Endpoints are exact; with |z0| = |z1| every point keeps that
    norm (Gaussian noises in many dimensions have nearly equal norms, where lerp would shrink them by
    up to 1 / sqrt(2) at w = 1/2). Parallel samples (theta -> 0) get the limit, linear interpolation;
    opposite or zero samples have no unique great circle and are refused.
    z0, z1: (B, ...) or (1, ...); w: a float, or a tensor () or (W,) broadcast against the batch."""
    shape = torch.broadcast_shapes(z0.shape, z1.shape)
    a, b = z0.reshape(z0.shape[0], -1).double(), z1.reshape(z1.shape[0], -1).double()  # (B, D)
    ua, ub = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    theta = 2 * torch.atan2((ua - ub).norm(dim=1), (ua + ub).norm(dim=1))  # (B,) Kahan's stable angle
    bad = ~(theta < math.pi - 1e-6)  # also catches the NaN of a zero sample
    if bool(bad.any()):
        raise ValueError(f"slerp needs nonzero samples that are not opposite: samples "
                         f"{bad.nonzero().flatten().tolist()} are zero or point in opposite directions")
    w = torch.as_tensor(w, dtype=torch.float64, device=a.device).reshape(-1, 1)  # (W, 1) or (1, 1)
    theta = theta.unsqueeze(1)  # (B, 1)
    straight = theta < 1e-6  # slerp's coefficients differ from lerp's by O(theta^2) there
    safe = torch.where(straight, torch.ones_like(theta), theta)
    c0 = torch.where(straight, 1 - w, torch.sin((1 - w) * safe) / torch.sin(safe))  # (max(B, W), 1)
    c1 = torch.where(straight, w, torch.sin(w * safe) / torch.sin(safe))
    out = c0 * a + c1 * b  # (max(B, W), D)
    return out.reshape((out.shape[0],) + tuple(shape[1:])).to(torch.promote_types(z0.dtype, z1.dtype))
