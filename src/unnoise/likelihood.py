"""Likelihoods: the probability-flow ODE's exact log-density and the discrete-time variational bound.

ODE (Song et al. 2021, §4.3 and App. D.2; Chen et al. 2018, instantaneous change of variables).
In the VE view x~ = x / alpha with lambda = log(alpha / sigma) the probability-flow ODE is
    d x~ / d lambda = f = x0_hat(alpha x~, t(lambda)) - x~                 (samplers/adaptive.py)
and the log-density along a solution changes as  d log p(x~) / d lambda = -tr(df/dx~), with
    tr(df/dx~) = alpha tr(d x0_hat / d x) - D.
Solving from the data end (t_start, default the schedule's t_min) to t = 1 gives
    log p_{t_start}(x) = log N(x_1; 0, (alpha_1^2 + sigma_1^2) I) + integral of tr(df/dx~) d lambda
                         + D log(alpha_1 / alpha_start)      (x~ -> x at both ends),
where the prior is the marginal at t = 1 of unit-variance data (N(0, I) for VP, as Song et al.).
The trace is exact (D backward passes; small D) or Hutchinson's estimate z^T J z with one fixed
probe z per sample, Rademacher or Gaussian (Hutchinson 1989; Grathwohl et al. 2019).

Images of 8-bit pixels are dequantised uniformly (Theis et al. 2016): pixel k in 0..255 becomes
y = (k + u - 0.5) / 127.5 - 1, u ~ U(0, 1), a bin of width 1 / 127.5 centred on the training value,
so -log P(k) <= E_u[-log p(y)] + D log 127.5, reported in bits per dimension.

VLB (Ho et al. 2020, eq. 5; Kingma et al. 2021 for a general alpha, sigma): on the grid t_i = i / T,
    L = KL(q(x_T | x0) || p(x_T)) + sum_{i=2..T} KL(q(x_{i-1} | x_i, x0) || p(x_{i-1} | x_i))
        - log p(x0 | x_1),
with the reverse mean the posterior mean at x0_hat, the reverse variance the posterior's ("small")
or sigma_{t|s}^2 ("large"), and the discretised Gaussian decoder of Ho et al. eq. 13.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from unnoise.samplers.adaptive import LAMBDA_FLOOR
from unnoise.samplers.steps import Denoiser
from unnoise.schedules import Schedule

PIXEL_BIN = 1.0 / 127.5  # width of one 8-bit level in the [-1, 1] data space
TRACES = ("exact", "rademacher", "gaussian")


@dataclass(frozen=True)
class NLL:
    """Per-sample negative log-likelihoods and their summary in bits per dimension."""

    nats: Tensor  # (N,) -log p per sample, float64 (of the dequantised discrete data where asked)
    dims: int  # D, the dimensions per sample

    @property
    def bits_per_dim(self) -> Tensor:
        return self.nats / (self.dims * math.log(2.0))

    def summary(self) -> tuple[float, float]:
        """Mean bits/dim and its standard error over the samples."""
        b = self.bits_per_dim
        se = b.std().item() / math.sqrt(len(b)) if len(b) > 1 else float("nan")
        return b.mean().item(), se


def dequantize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Data on the 8-bit grid k / 127.5 - 1 plus uniform noise filling each pixel's bin."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    return x.double() + (u - 0.5) * PIXEL_BIN


def _trace(x0_hat: Tensor, x: Tensor, probe: Tensor | None) -> Tensor:
    """tr(d x0_hat / d x) per sample: exact by D backward passes, or Hutchinson's z^T J z."""
    if probe is not None:
        (vjp,) = torch.autograd.grad(x0_hat, x, probe, create_graph=False)
        return (vjp * probe).flatten(1).sum(1)
    flat = x0_hat.flatten(1)
    total = torch.zeros(x.shape[0], dtype=flat.dtype, device=x.device)
    for i in range(flat.shape[1]):  # samples are independent: the batch sum's gradient is per-sample
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        total = total + g.flatten(1)[:, i]
    return total


def ode_nll(denoise: Denoiser, schedule: Schedule, x: Tensor, *, cond: Any = None, trace: str = "rademacher",
            rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", t_start: float | None = None,
            generator: torch.Generator | None = None, model_dtype: torch.dtype | None = None) -> tuple[Tensor, int]:
    """-log p_{t_start}(x) in nats per sample of x (N, ...) under the probability-flow ODE.

    Returns the per-sample values (float64) and the number of denoiser calls the solver made.
    The solver's state is float64; the denoiser sees model_dtype (None: x's dtype) and must be
    differentiable in x.
    """
    if trace not in TRACES:
        raise ValueError(f"trace must be one of {', '.join(TRACES)}, got {trace!r}")
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be > 0, got {rtol}, {atol}")
    t0 = schedule.t_min if t_start is None else float(t_start)
    if not 0 < t0 < 1:
        raise ValueError(f"t_start must lie in (0, 1), got {t0}")
    lam_start = schedule.log_snr(t0).item() / 2
    lam_end = max(schedule.log_snr(1.0).item() / 2, LAMBDA_FLOOR)  # alpha(1) = 0: flow, zero terminal SNR
    t_end = schedule.t_from_log_snr(2 * lam_end).item()
    a_start, a_end, s_end = schedule.alpha(t0).item(), schedule.alpha(t_end).item(), schedule.sigma(t_end).item()
    n, dims = x.shape[0], x[0].numel()
    probe = None
    if trace != "exact":
        probe = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        if trace == "rademacher":
            probe = probe.sign()
    calls = 0

    def dynamics(lam: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal calls
        x_tilde = state[0]
        t = schedule.t_from_log_snr(2 * lam.double()).item()
        alpha = schedule.alpha(t).item()
        with torch.enable_grad():
            xt = (x_tilde * alpha).to(model_dtype or x.dtype).detach().requires_grad_(True)
            x0_hat = denoise(xt, t, cond)
            tr = _trace(x0_hat, xt, None if probe is None else probe.to(x0_hat.dtype))
        calls += 1
        # d x~/d lambda, and d(log-det)/d lambda = tr(df/dx~) = alpha tr(dx0_hat/dx) - D
        return (x0_hat.detach().to(x_tilde.dtype) - x_tilde), (alpha * tr.double() - dims)

    x_tilde = x.double() / a_start
    lams = torch.tensor([lam_start, lam_end], dtype=torch.float64)
    path, logdet = odeint(dynamics, (x_tilde, torch.zeros(n, dtype=torch.float64, device=x.device)), lams,
                          rtol=rtol, atol=atol, method=method)
    x_end = path[-1] * a_end  # back to x at t_end
    var = a_end**2 + s_end**2
    log_prior = -0.5 * (x_end.flatten(1) ** 2).sum(1) / var - 0.5 * dims * math.log(2 * math.pi * var)
    # d log p / d lambda = -tr, so log p(start) = log p(end) + integral from lam_start to lam_end of tr,
    # which is logdet[-1] (lambda runs downwards: the integral is positive where the flow spreads).
    log_p_tilde = (log_prior + dims * math.log(a_end)) + logdet[-1]
    log_p = log_p_tilde - dims * math.log(a_start)
    return -log_p, calls


def image_nll(denoise: Denoiser, schedule: Schedule, x: Tensor, *, cond: Any = None,
              generator: torch.Generator | None = None, **ode_options) -> NLL:
    """-log P of 8-bit images x (on the grid k / 127.5 - 1) through uniform dequantisation."""
    y = dequantize(x, generator)  # float64; the solver keeps it so, the denoiser sees x's dtype
    nats, _ = ode_nll(denoise, schedule, y, cond=cond, generator=generator, model_dtype=x.dtype, **ode_options)
    return NLL(nats + y[0].numel() * math.log(1.0 / PIXEL_BIN), y[0].numel())


def discretized_gaussian_nll(x0: Tensor, mean: Tensor, std: float) -> Tensor:
    """-log of N(mean, std^2) integrated over each pixel's 8-bit bin (Ho et al. 2020, eq. 13), with
    the outermost bins reaching to -inf and +inf; summed per sample."""
    half = PIXEL_BIN / 2
    upper = torch.where(x0 > 1 - half, torch.full_like(x0, math.inf), (x0 + half - mean) / std)
    lower = torch.where(x0 < -1 + half, torch.full_like(x0, -math.inf), (x0 - half - mean) / std)
    # Phi(b) - Phi(a) = Phi(b) (1 - exp(log Phi(a) - log Phi(b))); for a bin in the upper tail use the
    # mirror image Phi(-a) - Phi(-b), else both log Phi round to -0 and the mass to 0 there.
    flip = lower > 0
    a, b = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    log_mass = log_b + torch.log(-torch.expm1(log_a - log_b))
    return -log_mass.flatten(1).sum(1)


def _gaussian_kl(mean_q: Tensor, var_q: float, mean_p: Tensor, var_p: float) -> Tensor:
    """KL(N(mean_q, var_q I) || N(mean_p, var_p I)) per sample."""
    d = (mean_q - mean_p).flatten(1)
    dims = d.shape[1]
    return 0.5 * (dims * (math.log(var_p / var_q) + var_q / var_p - 1) + (d**2).sum(1) / var_p)


def vlb(denoise: Denoiser, schedule: Schedule, x0: Tensor, *, cond: Any = None, num_steps: int | None = None,
        variance: str = "large", generator: torch.Generator | None = None) -> NLL:
    """The discrete-time variational bound on -log P(x0) of 8-bit images x0, in nats per sample.

    num_steps: T (None: the schedule's own T, or 1000 for a continuous one): T model calls per
    sample. Every term is summed: a few drawn at random would be unbiased but far too noisy, as the
    terms nearest the data dominate the sum (on the tests' mixture the first is 10^4 times the median).
    """
    if variance not in ("small", "large"):
        raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
    T = num_steps or schedule.num_timesteps or 1000
    if T < 2:
        raise ValueError(f"the bound needs at least 2 steps, got {T}")
    model_dtype, x0 = x0.dtype, x0.double()
    t = torch.arange(T + 1, dtype=torch.float64) / T
    alpha, sigma = schedule.alpha(t).tolist(), schedule.sigma(t).tolist()
    if sigma[0] != 0.0 or alpha[0] != 1.0:
        raise ValueError("the variational bound needs alpha(0) = 1, sigma(0) = 0")

    def noised(i: int) -> Tensor:
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
        return alpha[i] * x0 + sigma[i] * eps

    def x0_pred(x: Tensor, i: int) -> Tensor:
        with torch.no_grad():
            return denoise(x.to(model_dtype), t[i].item(), cond).double()

    # Prior term: q(x_T | x0) = N(alpha_T x0, sigma_T^2), p(x_T) = N(0, alpha_T^2 + sigma_T^2)
    total = _gaussian_kl(alpha[T] * x0, sigma[T] ** 2, torch.zeros_like(x0), alpha[T] ** 2 + sigma[T] ** 2)
    # Decoder: x0 | x_1 ~ N(x0_hat, (sigma_1 / alpha_1)^2), the VE-view noise level (beta_1 / (1 - beta_1)
    # in VP, where Ho et al. take beta_1: a factor 1.0001 apart); `variance` does not apply to it.
    total = total + discretized_gaussian_nll(x0, x0_pred(noised(1), 1), sigma[1] / alpha[1])
    for i in range(2, T + 1):
        s, a_ts = i - 1, alpha[i] / alpha[i - 1]
        var_ts = sigma[i] ** 2 - a_ts**2 * sigma[s] ** 2  # sigma_{t|s}^2
        var_post = var_ts * sigma[s] ** 2 / sigma[i] ** 2  # Kingma et al. 2021, eq. 26
        c_x, c_0 = a_ts * sigma[s] ** 2 / sigma[i] ** 2, alpha[s] * var_ts / sigma[i] ** 2
        x_t = noised(i)
        mean_q = c_x * x_t + c_0 * x0
        mean_p = c_x * x_t + c_0 * x0_pred(x_t, i)
        var_p = var_post if variance == "small" else var_ts
        total = total + _gaussian_kl(mean_q, var_post, mean_p, var_p)
    return NLL(total, x0[0].numel())
