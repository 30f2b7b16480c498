"""What a network predicts, and how that becomes the denoiser x0_hat that every sampler uses.

A parameterisation maps (network output, x_t, point on the path) to x0_hat, says what the network
is fed, and gives the training target. With x_t = alpha x0 + sigma eps:

    eps       network predicts eps                   Ho et al. 2020, eq. 11
    x0        network predicts x0                    Ho et al. 2020, §3.2
    v         v = alpha eps - sigma x0                Salimans & Ho 2022, §4 (eq. after 9)
    velocity  u = d x_t / dt = alpha' x0 + sigma' eps Lipman et al. 2022, eq. 21; Liu et al. 2022
    edm       x0_hat = c_skip x~ + c_out F(c_in x~)  Karras et al. 2022, Table 1 and eq. 7,
              in the VE view x~ = x / alpha, s~ = sigma / alpha (§4)
    consistency  f = c_skip x~ + c_out F(c_in x~)    Song et al. 2023, eq. 5 and Appendix C: c_skip,
              c_out shifted so that f(x~, sigma_min) = x~ exactly (the boundary condition)

`NetworkDenoiser` glues a network, a parameterisation and a schedule into the one contract that
samplers see: denoise(x_t, t, cond) -> x0_hat.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from unnoise.schedules import Schedule


@dataclass(frozen=True)
class PathPoint:
    """The path's coefficients at a time t: scalars, or tensors broadcastable against x."""

    t: Tensor  # (B,) times, float32/64
    alpha: Tensor | float
    sigma: Tensor | float
    d_alpha: Tensor | float  # d alpha / dt (only the velocity parameterisation reads it)
    d_sigma: Tensor | float


class Parameterization(Protocol):
    def network_inputs(self, x: Tensor, p: PathPoint) -> tuple[Tensor, Tensor]:
        """(input image, time/noise input) that the network is called with."""
        ...

    def x0(self, output: Tensor, x: Tensor, p: PathPoint) -> Tensor:
        """x0_hat from the network output at x_t."""
        ...

    def target(self, x0: Tensor, eps: Tensor, p: PathPoint) -> Tensor:
        """What the network output should equal for training pair (x0, eps)."""
        ...


class _PlainInputs:
    """Network sees x_t and t unchanged (DDPM, v-prediction, flow matching)."""

    def network_inputs(self, x: Tensor, p: PathPoint) -> tuple[Tensor, Tensor]:
        return x, p.t


class EpsPrediction(_PlainInputs):
    def x0(self, output, x, p):
        if isinstance(p.alpha, Tensor):
            return (x - p.sigma * output) / p.alpha
        if p.alpha == 0:
            raise ValueError(f"eps-prediction cannot give x0 where alpha = 0 (t = {p.t[0].item():g}): "
                             "use the v, x0, velocity or edm parameterization, or a grid with t_max < 1")
        return torch.add(x, output, alpha=-p.sigma).div_(p.alpha)  # two fused ops for scalar coefficients

    def target(self, x0, eps, p):
        return eps


class X0Prediction(_PlainInputs):
    def x0(self, output, x, p):
        return output

    def target(self, x0, eps, p):
        return x0


class VPrediction(_PlainInputs):
    # alpha x - sigma v = (alpha^2 + sigma^2) x0, which is x0 on VP paths and stays right off them.
    def x0(self, output, x, p):
        return (p.alpha * x - p.sigma * output) / (p.alpha**2 + p.sigma**2)

    def target(self, x0, eps, p):
        return p.alpha * eps - p.sigma * x0


class VelocityPrediction(_PlainInputs):
    needs_derivatives = True  # the only parameterisation that reads alpha' and sigma'

    # Solve x = alpha x0 + sigma eps, u = alpha' x0 + sigma' eps for x0 (for flow: x0 = x - t u).
    def x0(self, output, x, p):
        return (p.d_sigma * x - p.sigma * output) / (p.d_sigma * p.alpha - p.sigma * p.d_alpha)

    def target(self, x0, eps, p):
        return p.d_alpha * x0 + p.d_sigma * eps


@dataclass(frozen=True)
class EDMPreconditioning:
    """Karras et al. 2022, Table 1 ("Ours"), written for any alpha via the VE view:
    c_in x~ = x / sqrt(sigma^2 + alpha^2 sigma_data^2) stays finite even where alpha = 0."""

    sigma_data: float = 0.5  # standard deviation of the data (0.5 for images in [-1, 1])

    def _coefficients(self, p: PathPoint) -> tuple[Any, Any, Any]:
        sd2 = self.sigma_data**2
        norm2 = p.sigma**2 + p.alpha**2 * sd2  # alpha^2 (s~^2 + sigma_data^2)
        c_skip = sd2 * p.alpha / norm2  # c_skip / alpha, applied to x
        c_out = p.sigma * self.sigma_data / _sqrt(norm2)
        c_in = 1 / _sqrt(norm2)  # c_in / alpha, applied to x
        return c_skip, c_out, c_in

    def network_inputs(self, x, p):
        if not isinstance(p.alpha, Tensor) and p.alpha == 0:
            raise ValueError("EDM preconditioning cannot be used where alpha = 0: its noise input "
                             f"ln(sigma / alpha) / 4 is infinite at t = {p.t[0].item():g}; use a grid with t_max < 1")
        _, _, c_in = self._coefficients(p)
        sigma_tilde = torch.as_tensor(p.sigma / p.alpha, dtype=p.t.dtype, device=p.t.device)
        c_noise = 0.25 * torch.log(sigma_tilde).reshape(-1).expand(p.t.shape[0])  # ln(s~) / 4
        return x * c_in, c_noise

    def x0(self, output, x, p):
        c_skip, c_out, _ = self._coefficients(p)
        return c_skip * x + c_out * output

    def target(self, x0, eps, p):
        c_skip, c_out, _ = self._coefficients(p)
        x = p.alpha * x0 + p.sigma * eps
        return (x0 - c_skip * x) / c_out  # eq. 8: F's target (x0 - c_skip x~) / c_out

    def loss_weight(self, p: PathPoint) -> Any:
        """lambda(sigma) = 1 / c_out^2 (eq. 8), which makes the effective weight on F uniform."""
        return 1 / self._coefficients(p)[1] ** 2


@dataclass(frozen=True)
class ConsistencyParameterization:
    """A consistency function f(x_t, t) (Song et al. 2023, eq. 5 and Appendix C) in the VE view:

        f = c_skip(s~) x~ + c_out(s~) F(c_in x~, ln(s~) / 4)
        c_skip = sigma_data^2 / ((s~ - sigma_min)^2 + sigma_data^2),  c_out = sigma_data (s~ - sigma_min) /
        sqrt(sigma_data^2 + s~^2),  c_in = 1 / sqrt(s~^2 + sigma_data^2) (as EDM's)

    At s~ = sigma_min, c_skip = 1 and c_out = 0 exactly: f(x~, sigma_min) = x~ whatever F is. f is an
    estimate of x0 (strictly, of x~ at sigma_min), so a consistency model is a denoiser like any other:
    every sampler runs it, and the consistency sampler (unnoise.samplers.consistency) is Alg. 1."""

    sigma_data: float = 0.5
    sigma_min: float = 0.002  # the boundary noise level s~ (the schedule's t_min as a rule)

    @property
    def sampler_options(self) -> dict:
        """What the consistency sampler needs of the model: its boundary (unnoise.pipeline passes it)."""
        return {"sigma_min": self.sigma_min}

    def _coefficients(self, p: PathPoint) -> tuple[Any, Any, Any]:
        sd, s = self.sigma_data, p.sigma / p.alpha
        c_skip = sd**2 / ((s - self.sigma_min) ** 2 + sd**2)
        c_out = sd * (s - self.sigma_min) / _sqrt(sd**2 + s**2)
        return c_skip, c_out, 1 / _sqrt(s**2 + sd**2)

    def network_inputs(self, x, p):
        if not isinstance(p.alpha, Tensor) and p.alpha == 0:
            raise ValueError(f"a consistency model cannot be evaluated where alpha = 0 (t = {p.t[0].item():g}): "
                             "use a schedule whose alpha(1) > 0 or a grid with t_max < 1")
        _, _, c_in = self._coefficients(p)
        sigma_tilde = torch.as_tensor(p.sigma / p.alpha, dtype=p.t.dtype, device=p.t.device)
        return x / p.alpha * c_in, 0.25 * torch.log(sigma_tilde).reshape(-1).expand(p.t.shape[0])

    def x0(self, output, x, p):
        c_skip, c_out, _ = self._coefficients(p)
        return c_skip * (x / p.alpha) + c_out * output

    def target(self, x0, eps, p):
        """F's denoising target (x0 - c_skip x~) / c_out, defined above sigma_min (consistency
        models train with the cd and ct objectives, not on this target)."""
        c_skip, c_out, _ = self._coefficients(p)
        return (x0 - c_skip * (x0 + p.sigma / p.alpha * eps)) / c_out


def _sqrt(v):
    return torch.sqrt(v) if isinstance(v, Tensor) else math.sqrt(v)


PARAMETERIZATIONS: dict[str, Callable[[], Parameterization]] = {
    "eps": EpsPrediction,
    "x0": X0Prediction,
    "v": VPrediction,
    "velocity": VelocityPrediction,
    "edm": EDMPreconditioning,
    "consistency": ConsistencyParameterization,
}


def get_parameterization(name: str, sigma_data: float = 0.5, sigma_min: float = 0.002) -> Parameterization:
    """The parameterisation called `name`; sigma_data: the data std of edm and consistency;
    sigma_min: the consistency boundary s~ (see `parameterization_of` for a run's)."""
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; choose from {', '.join(PARAMETERIZATIONS)}")
    if name == "consistency":
        return ConsistencyParameterization(sigma_data, sigma_min)
    return EDMPreconditioning(sigma_data) if name == "edm" else PARAMETERIZATIONS[name]()


def parameterization_of(diffusion: Any, schedule: Schedule) -> Parameterization:
    """A run's parameterisation from its [diffusion] section; the consistency boundary sigma_min = 0
    means the schedule's own t_min (EDM's 0.002)."""
    sigma_min = diffusion.sigma_min or schedule.sigma_tilde(schedule.t_min).item()
    return get_parameterization(diffusion.parameterization, diffusion.sigma_data, sigma_min)


def path_point(schedule: Schedule, t: Tensor, ndim: int, derivatives: bool = True) -> PathPoint:
    """Coefficients at per-example times t (B,), shaped (B, 1, ..., 1) to broadcast against x.
    derivatives=False leaves d_alpha, d_sigma at 0 (taking them costs a forward-mode pass)."""
    shape = (-1,) + (1,) * (ndim - 1)
    t64 = t.to(torch.float64)
    d_alpha, d_sigma = schedule.derivatives(t64) if derivatives else (torch.zeros_like(t64),) * 2
    cast = lambda v: v.to(t.dtype if t.is_floating_point() else torch.float32).reshape(shape)  # noqa: E731
    return PathPoint(t, cast(schedule.alpha(t64)), cast(schedule.sigma(t64)), cast(d_alpha), cast(d_sigma))


class NetworkDenoiser:
    """denoise(x_t, t, cond) -> x0_hat for a network `net(x_in, t_in, cond) -> output`.

    t may be a float (all examples at one time, as samplers call it; its coefficients are computed
    once and cached, so a sampler step pays nothing for them) or a (B,) tensor (training).
    """

    def __init__(self, net: Callable[..., Tensor], parameterization: Parameterization, schedule: Schedule):
        self.net, self.parameterization, self.schedule = net, parameterization, schedule
        self._derivatives = getattr(parameterization, "needs_derivatives", False)
        self._cache: dict[tuple, PathPoint] = {}  # (t, batch, dtype, device) -> point; samplers reuse times

    def point(self, x: Tensor, t: float | Tensor) -> PathPoint:
        if isinstance(t, Tensor) and t.ndim > 0:
            return path_point(self.schedule, t.to(x.device, x.dtype), x.ndim, self._derivatives)
        key = (float(t), x.shape[0], x.dtype, x.device)
        if key not in self._cache:
            if len(self._cache) > 4096:  # adaptive solvers visit new times without end
                self._cache.clear()
            t = key[0]
            d_alpha, d_sigma = self.schedule.derivatives(t) if self._derivatives else (torch.zeros(()),) * 2
            self._cache[key] = PathPoint(torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device),
                                         self.schedule.alpha(t).item(), self.schedule.sigma(t).item(),
                                         d_alpha.item(), d_sigma.item())
        return self._cache[key]

    def __call__(self, x: Tensor, t: float | Tensor, cond: Any = None) -> Tensor:
        p = self.point(x, t)
        x_in, t_in = self.parameterization.network_inputs(x, p)
        return self.parameterization.x0(self.net(x_in, t_in, cond), x, p)
