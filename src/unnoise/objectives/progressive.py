"""Progressive distillation (Salimans & Ho 2022, Alg. 2): a student learns to take in one DDIM step
what its teacher takes in two, so N steps become N / 2; repeated, with each student the next
round's teacher, 1,024 steps become 4 (unnoise distill --method progressive chains the rounds).

For the student's step t -> t'' (adjacent times of its N/2-step grid) and the teacher's midpoint t',
two teacher DDIM steps z_t -> z_t' -> z_t'' give the target the student's single DDIM step must hit:

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

(Alg. 2, the "x~" line: the x0 estimate whose DDIM step from z_t lands exactly on z_t''), and the
loss is w(t) |x0_theta(z_t) - x~|^2 with [loss] weighting (truncated SNR, max(SNR, 1), by default:
§4). The grids are the student's [sample] spacing at N/2 and the teacher's at N steps, which holds
it ("karras-trailing" and "trailing" both do), and the student starts as the teacher's network.
The parameterisation must give a stable x0 at every level (v, x0, edm, velocity): eps cannot
(§4: at alpha -> 0 its x0 = (z - sigma eps) / alpha blows up).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unnoise.config import RunConfig
from unnoise.grids import time_grid
from unnoise.losses import DiffusionLoss
from unnoise.objectives.base import Batch, LossOutput, RunContext
from unnoise.objectives.diffusion import DiffusionObjective, independent_noise_only
from unnoise.objectives.teacher import guided, load_teacher
from unnoise.parameterization import NetworkDenoiser


def ddim_to(x: Tensor, x0: Tensor, a_t: Tensor, s_t: Tensor, a_s: Tensor, s_s: Tensor) -> Tensor:
    """One DDIM step t -> s (eta = 0; Song et al. 2021, eq. 12), per example."""
    return a_s * x0 + (s_s / s_t) * (x - a_t * x0)


def progressive_target(teacher, schedule, z: Tensor, t: Tensor, mid: Tensor, end: Tensor, cond=None) -> Tensor:
    """x~ of Salimans & Ho 2022, Alg. 2, for per-example times t > mid > end >= 0 (B,)."""
    shape = (-1,) + (1,) * (z.ndim - 1)
    a = {k: schedule.alpha(v.double()).to(z).view(shape) for k, v in (("t", t), ("mid", mid), ("end", end))}
    s = {k: schedule.sigma(v.double()).to(z).view(shape) for k, v in (("t", t), ("mid", mid), ("end", end))}
    z_mid = ddim_to(z, teacher(z, t.to(z.dtype), cond), a["t"], s["t"], a["mid"], s["mid"])
    z_end = ddim_to(z_mid, teacher(z_mid, mid.to(z.dtype), cond), a["mid"], s["mid"], a["end"], s["end"])
    ratio = s["end"] / s["t"]
    return (z_end - ratio * z) / (a["end"] - ratio * a["t"])


class ProgressiveObjective(DiffusionObjective):
    """One round: the student takes [sample] steps = N / 2 steps; the teacher, N = 2 x that.
    teacher: a denoiser to distil instead of the [distill] teacher run (e.g. an exact one)."""

    def __init__(self, config: RunConfig, run: RunContext, dataset=None, teacher=None):
        independent_noise_only(config)
        self.setup(config, run, dataset)
        if config.diffusion.parameterization == "eps":
            raise ValueError("progressive distillation needs a parameterisation with a stable x0 at every noise level "
                             "(v, x0, edm or velocity; Salimans & Ho 2022, §4); this teacher predicts eps")
        steps, dc = config.sample.steps, config.distill
        if dc.teacher_steps and dc.teacher_steps != 2 * steps:
            raise ValueError(f"distill.teacher_steps = {dc.teacher_steps} must be twice the student's sample.steps = "
                             f"{steps} (or 0)")
        if teacher is None:  # the student starts as its teacher
            teacher, pipe = load_teacher(dc.teacher, self.config, run.device, run.dtype)
            self.network.load_state_dict(pipe.denoiser.net.state_dict())
        self.teacher = guided(teacher, dc.guidance, self.null_condition())
        self.student_grid = time_grid(self.schedule, steps, config.sample.spacing)
        teacher_grid = time_grid(self.schedule, 2 * steps, config.sample.spacing)
        if not torch.allclose(teacher_grid[::2], self.student_grid, rtol=1e-9, atol=1e-12):
            raise ValueError(f"the {config.sample.spacing!r} grid of {2 * steps} steps does not hold the one of "
                             f"{steps}: use the karras-trailing or trailing spacing")
        self.midpoints = teacher_grid[1::2]
        self.loss_fn = DiffusionLoss(self.schedule, self.parameterization, config.loss)

    def draw(self, index: Tensor, generator: torch.Generator, step: int) -> Batch:
        """x0, eps and each example's student step i: times t_i > t'_i > t_{i+1}."""
        x0, labels = self.dataset.batch(index)
        i = torch.randint(0, len(self.midpoints), (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        batch = {"x0": x0, "noise": noise, "t": self.student_grid[i], "mid": self.midpoints[i],
                 "end": self.student_grid[i + 1]}
        return self.with_condition(batch, index, labels, generator)

    def loss(self, net: nn.Module, batch: Batch, step: int) -> LossOutput:
        x0, eps, t = batch["x0"].to(self.run.dtype), batch["noise"].to(self.run.dtype), batch["t"]
        cond = self.condition(batch)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        z = self.schedule.alpha(t.double()).to(x0).view(shape) * x0 + self.schedule.sigma(t.double()).to(x0).view(
            shape) * eps
        with torch.no_grad():
            target = progressive_target(self.teacher, self.schedule, z, t, batch["mid"], batch["end"], cond)
        x0_hat = NetworkDenoiser(net, self.parameterization, self.schedule)(z, t.to(x0.dtype), cond)
        error = (x0_hat.float() - target.float()).flatten(1).pow(2).mean(1)
        weight = 1.0 if self.config.loss.weighting == "simple" else self.loss_fn.x0_weight(t.cpu()).to(error)
        return LossOutput((weight * error).mean())
