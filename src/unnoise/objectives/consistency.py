"""Consistency models (Song et al. 2023): a network f(x_t, t) that maps every point of a
probability-flow trajectory to the trajectory's start, so that one call samples.

    cd   consistency distillation (Alg. 2): the pair of adjacent levels (s_n, s_{n+1}) of an N-level
         Karras discretisation; x_{n+1} = x0 + s_{n+1} z is moved to s_n by one step of the teacher's
         ODE (unnoise.objectives.teacher: heun, dpmpp_2s or ddim), and
             loss = d(f_theta(x_{n+1}, s_{n+1}), f_theta-(x^_n, s_n)),  n ~ U{1, ..., N - 1}
         with the target network theta- <- mu theta- + (1 - mu) theta after each step (eq. 8).
    ct   consistency training, improved (Song & Dhariwal 2023): no teacher; x_n = x0 + s_n z with the
         same z (the one-sample estimate of the ODE step), target theta- = stopgrad(theta) (mu = 0),
         weight 1 / (s_{n+1} - s_n) (§3.1), pseudo-Huber distance with c = 0.00054 sqrt(d) (§3.3),
         n drawn from the lognormal law discretised on the levels (§3.5, eq. 12: [distill] level_mean,
         level_std), and N doubling from `start_levels` to `levels_max` + 1 (§3.4, eq. 11).

Everything is written in the VE view (x~ = x / alpha, s~ = sigma / alpha), so any schedule with
alpha(1) > 0 serves; the levels run from the boundary sigma_min to s~(1). The network's output is
the consistency parameterisation (unnoise.parameterization), whose f(x, sigma_min) = x holds exactly.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from unnoise.config import RunConfig
from unnoise.objectives.base import Batch, LossOutput, RunContext
from unnoise.objectives.diffusion import DiffusionObjective, independent_noise_only
from unnoise.objectives.teacher import guided, load_teacher, ode_step
from unnoise.parameterization import ConsistencyParameterization, NetworkDenoiser
from unnoise.resume_state import check_weights

MODES = ("cd", "ct")


def karras_levels(s_min: float, s_max: float, n: int, rho: float) -> Tensor:
    """N noise levels s~_1 = s_min < ... < s~_N = s_max, evenly spaced in s~^(1/rho) (Karras et al.
    2022, eq. 5; Song et al. 2023, §4), float64."""
    frac = torch.arange(n, dtype=torch.float64) / (n - 1)
    return (s_min ** (1 / rho) + frac * (s_max ** (1 / rho) - s_min ** (1 / rho))) ** rho


def ct_levels(step: int, total: int, start: int, most: int) -> int:
    """N at optimiser step k of K (Song & Dhariwal 2023, eq. 11): min(s0 2^floor(k / K'), s1) + 1 with
    s0 = start - 1, s1 = most, K' = floor(K / (log2 floor(s1 / s0) + 1))."""
    s0 = start - 1
    per = max(1, math.floor(total / (math.log2(max(most // s0, 1)) + 1)))
    return min(s0 * 2 ** (step // per), most) + 1


def lognormal_level_weights(levels: Tensor, p_mean: float, p_std: float) -> Tensor:
    """p(n) for the pair (s_n, s_{n+1}), n < N: the lognormal's mass between the two levels (Song &
    Dhariwal 2023, eq. 12), normalised."""
    cdf = torch.erf((levels.log() - p_mean) / (math.sqrt(2) * p_std))
    mass = (cdf[1:] - cdf[:-1]).clamp(min=0)
    if not mass.sum() > 0:
        raise ValueError(f"the lognormal law of the levels (distill.level_mean = {p_mean:g}, level_std = {p_std:g}) "
                         f"puts no mass between {levels[0].item():g} and {levels[-1].item():g}")
    return mass / mass.sum()


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """sqrt(|a - b|^2 + c^2) - c per example (Song & Dhariwal 2023, eq. 13): L2 near 0, L1 far out."""
    return ((a.float() - b.float()).flatten(1).pow(2).sum(1) + c * c).sqrt() - c


class ConsistencyObjective(DiffusionObjective):
    """cd or ct, as [train] objective names it; teacher: a denoiser to distil instead of the
    [distill] teacher run (e.g. an exact one, unnoise.oracle)."""

    def __init__(self, config: RunConfig, run: RunContext, dataset=None, teacher=None):
        independent_noise_only(config)
        self.setup(config, run, dataset)
        self.mode, dc = config.train.objective or "ct", config.distill
        if self.mode not in MODES or not isinstance(self.parameterization, ConsistencyParameterization):
            raise ValueError(f"a consistency run needs train.objective cd or ct and diffusion.parameterization = "
                             f"\"consistency\", got {self.mode!r} and {config.diffusion.parameterization!r}")
        if self.schedule.alpha(1.0).item() == 0:
            raise ValueError(f"schedule {self.schedule.name!r} has alpha(1) = 0 (infinite noise level at t = 1): "
                             "consistency models need a schedule whose largest s~ is finite (edm, ve, ddpm, vp)")
        self.s_min, self.s_max = self.parameterization.sigma_min, self.schedule.sigma_tilde(1.0).item()
        self.teacher = None
        if self.mode == "cd":
            if teacher is None:  # the student starts as the teacher's network (Song et al. 2023, §6)
                teacher, pipe = load_teacher(dc.teacher, self.config, run.device, run.dtype)
                self.network.load_state_dict(pipe.denoiser.net.state_dict())
            self.teacher = guided(teacher, dc.guidance, self.null_condition())
        # theta-: cd's EMA copy of the network (mu > 0); ct's (and cd's with mu = 0) is the network itself
        # without gradients
        ema_target = self.mode == "cd" and dc.target_ema > 0
        self.target = copy.deepcopy(self.network).requires_grad_(False) if ema_target else None
        d = math.prod(self.config.model.interface.sample_shape)
        self.huber_c = dc.huber_c or 0.00054 * math.sqrt(d)

    def level_count(self, step: int) -> int:
        """N at optimiser step `step`: cd's fixed N, or ct's doubling schedule."""
        dc = self.config.distill
        return dc.levels if self.mode == "cd" else ct_levels(step, self.config.train.steps, dc.start_levels,
                                                             dc.levels_max)

    def levels(self, step: int) -> Tensor:
        return karras_levels(self.s_min, self.s_max, self.level_count(step), self.config.distill.rho)

    def draw(self, index: Tensor, generator: torch.Generator, step: int) -> Batch:
        """x0, z and the adjacent levels (t_lo, t_hi) of each example, as times."""
        x0, labels = self.dataset.batch(index)
        levels = self.levels(step)
        if self.mode == "cd":
            n = torch.randint(0, len(levels) - 1, (len(x0),), generator=generator)
        else:
            dc = self.config.distill
            weights = lognormal_level_weights(levels, dc.level_mean, dc.level_std)
            n = torch.multinomial(weights, len(x0), replacement=True, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        t_lo, t_hi = self.schedule.t_from_sigma_tilde(levels[n]), self.schedule.t_from_sigma_tilde(levels[n + 1])
        batch = {"x0": x0, "noise": noise, "t_lo": t_lo, "t_hi": t_hi, "gap": levels[n + 1] - levels[n]}
        return self.with_condition(batch, index, labels, generator)

    def loss(self, net: nn.Module, batch: Batch, step: int) -> LossOutput:
        x0, z, dtype = batch["x0"].to(self.run.dtype), batch["noise"].to(self.run.dtype), self.run.dtype
        t_lo, t_hi = batch["t_lo"].to(dtype), batch["t_hi"].to(dtype)
        cond = self.condition(batch)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a_hi, s_hi = (v.to(x0.device, dtype).view(shape) for v in (self.schedule.alpha(t_hi.double()),
                                                                   self.schedule.sigma(t_hi.double())))
        x_hi = a_hi * x0 + s_hi * z
        f = NetworkDenoiser(net, self.parameterization, self.schedule)(x_hi, t_hi, cond)
        with torch.no_grad():
            if self.teacher is not None:  # one step of the teacher's ODE from s_{n+1} to s_n
                x_lo = ode_step(self.teacher, self.schedule, x_hi, t_hi, t_lo, cond, self.config.distill.solver)
            else:  # the same z at the lower level: the one-sample estimate of that step
                a_lo, s_lo = (v.to(x0.device, dtype).view(shape) for v in (self.schedule.alpha(t_lo.double()),
                                                                           self.schedule.sigma(t_lo.double())))
                x_lo = a_lo * x0 + s_lo * z
            target_net = net if self.target is None else self.target
            target = NetworkDenoiser(target_net, self.parameterization, self.schedule)(x_lo, t_lo, cond)
        if self.config.distill.distance == "l2":
            distance = (f.float() - target.float()).flatten(1).pow(2).mean(1)
        else:
            distance = pseudo_huber(f, target, self.huber_c)
        weight = 1 / batch["gap"].to(distance) if self.mode == "ct" else torch.ones_like(distance)
        return LossOutput((weight * distance).mean(), {"levels": self.level_count(step)})

    def after_step(self, batch: Batch, out: LossOutput, step: int) -> None:
        """theta- <- mu theta- + (1 - mu) theta (Song et al. 2023, eq. 8)."""
        if self.target is not None:
            mu = self.config.distill.target_ema
            with torch.no_grad():
                for mine, theirs in zip(self.target.parameters(), self.network.parameters(), strict=True):
                    mine.lerp_(theirs, 1 - mu)
                for mine, theirs in zip(self.target.buffers(), self.network.buffers(), strict=True):
                    mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict()} if self.target is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """The target network, checked against the live one before use."""
        if self.target is None:
            return
        source = f"{self.run.resume.path}/state.json" if self.run.resume is not None else "the resume state"
        if not isinstance(state, dict) or "target" not in state:
            raise ValueError(f"{source} holds no target network (saved with distill.target_ema = 0?); resume with "
                             "the same target_ema")
        check_weights(state["target"], self.target, f"{source} (target network)")
        self.target.load_state_dict(state["target"])
