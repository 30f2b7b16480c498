"""A frozen teacher for distillation, and the one-step ODE solvers that move a batch from per-example
times t to s along the teacher's probability-flow ODE.

The solvers step in the VE view (x~ = x / alpha, s~ = sigma / alpha; Karras et al. 2022, §4), where
the probability-flow ODE is dx~/ds~ = (x~ - D(x~, s~)) / s~ for any schedule; t and s are (B,)
tensors, one time per example, as a distillation batch needs.

    ddim      one denoiser call: x~_s = D + (s~_s / s~_t)(x~_t - D), the exact step when D is constant
              (Song et al. 2021, eq. 12 with eta = 0; DPM-Solver++'s first-order step)
    heun      two calls: Euler then the trapezoidal correction (Karras et al. 2022, Alg. 1 without
              churn), second order
    dpmpp_2s  two calls: DPM-Solver++(2S) with r = 1/2 (Lu et al. 2022b, Alg. 1): a first-order step to
              the midpoint in lambda = -ln s~, then the full step with the midpoint's D; second order
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from unnoise.guidance import ClassifierFreeGuidance
from unnoise.pipeline import Pipeline
from unnoise.schedules import Schedule

SOLVER_CALLS = {"ddim": 1, "heun": 2, "dpmpp_2s": 2}  # teacher calls per step


def load_teacher(path: str | Path, config, device: torch.device, dtype: torch.dtype):
    """The teacher run's EMA network as a frozen denoiser, and its pipeline; checked to diffuse the
    same data the same way as the student (`config`) does."""
    if not str(path):
        raise ValueError(f"train.objective = {config.train.objective!r} needs a teacher: set [distill] teacher to a "
                         "trained run (unnoise distill TEACHER_RUN sets it)")
    pipe = Pipeline.load(path, device)
    pipe.denoiser.net.to(dtype)
    theirs, ours = pipe.config, config
    if tuple(pipe.interface.sample_shape) != tuple(ours.model.interface.sample_shape):
        raise ValueError(f"the teacher {path} makes samples of shape {tuple(pipe.interface.sample_shape)}, the student "
                         f"{tuple(ours.model.interface.sample_shape)}")
    if theirs.diffusion.schedule != ours.diffusion.schedule and config.train.objective != "reflow":
        raise ValueError(f"the teacher {path} was trained on schedule {theirs.diffusion.schedule!r}, the student is on "
                         f"{ours.diffusion.schedule!r}: distil on the teacher's schedule")
    if theirs.latent.sha256 != ours.latent.sha256 and ours.latent.sha256:
        raise ValueError(f"the teacher {path} diffuses in another autoencoder's latents than the student")
    return pipe.denoiser, pipe


def guided(teacher, scale: float, null) -> object:
    """The teacher with classifier-free guidance at `scale` (null: the null condition, one row);
    scale 1 is the plain conditional teacher."""
    return teacher if scale == 1 or null is None else ClassifierFreeGuidance(teacher, scale, null)


def _view(schedule: Schedule, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """alpha(t) and s~(t) for per-example times (B,), shaped to broadcast against x."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    t64 = t.to(torch.float64)
    alpha, level = schedule.alpha(t64), schedule.sigma_tilde(t64)
    return alpha.to(x.device, x.dtype).view(shape), level.to(x.device, x.dtype).view(shape)


def ode_step(denoise, schedule: Schedule, x: Tensor, t: Tensor, s: Tensor, cond=None, solver: str = "heun") -> Tensor:
    """x_s from x_t along denoise's probability-flow ODE, per example (t > s > 0, (B,) each)."""
    if solver not in SOLVER_CALLS:
        raise ValueError(f"solver must be one of {', '.join(SOLVER_CALLS)}, got {solver!r}")
    if not bool((s > 0).all() and (t > s).all()):
        raise ValueError("a teacher step goes from t down to s with t > s > 0 for every example")
    a_t, l_t = _view(schedule, t, x)
    a_s, l_s = _view(schedule, s, x)
    x_t = x / a_t
    d_t = denoise(x, t, cond)
    if solver == "ddim":
        return a_s * (d_t + (l_s / l_t) * (x_t - d_t))
    if solver == "heun":
        slope = (x_t - d_t) / l_t
        euler = x_t + (l_s - l_t) * slope
        d_s = denoise(a_s * euler, s, cond)
        return a_s * (x_t + (l_s - l_t) * 0.5 * (slope + (euler - d_s) / l_s))
    l_u = (l_t * l_s).sqrt()  # the midpoint in lambda = -ln s~
    u = schedule.t_from_sigma_tilde(l_u.flatten().double()).to(t.dtype)
    a_u, _ = _view(schedule, u, x)
    x_u = d_t + (l_u / l_t) * (x_t - d_t)
    d_u = denoise(a_u * x_u, u, cond)
    return a_s * (d_u + (l_s / l_t) * (x_t - d_u))
