"""Editing: sampling that starts from a given image, or that keeps part of one.

    x = sdedit(pipe, images, strength=0.5, seed=0)                  # image to image
    x = inpaint(pipe, images, keep, seed=0)                         # the replacement method
    x = inpaint(pipe, images, keep, resample=10, jump=10, seed=0)   # RePaint
    z, report = invert(pipe, images, steps=100)                     # the noise that samples back to images
    frames = interpolate(pipe, z[:1], z[1:2], frames=8, steps=100)  # slerp between two inverted noises

`images` are in data space (n, *data shape), as `Pipeline.sample` returns them; `keep` is 1 where a
pixel is known and kept, 0 where it is generated, of the images' shape or broadcastable to it
(e.g. (1, 1, H, W)). Everything else (labels, prompts, guidance, sampler, steps, ...) is passed on to
`Pipeline.sample`; inversion takes the condition the same way (none on a class-conditional model:
its unconditional branch, guidance 0). A latent model inpaints its latents: a latent cell is kept
only where every pixel it covers is known, and the known pixels are pasted back after decoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from unnoise.grids import time_at, time_grid
from unnoise.latent import PixelSpace
from unnoise.noise import derived_seed, per_sample_generators, randn_like
from unnoise.pipeline import BatchStep, Pipeline
from unnoise.samplers import InversionReport, ddim_invert, fixed_point_invert, slerp
from unnoise.schedules import Schedule

INVERSIONS = ("exact", "ddim")  # fixed-point solves of each sampler step, or explicit DDIM inversion
INPAINT_SAMPLER = "ddpm"  # Lugmayr et al. 2022 Alg. 1 draws x_{t-1} of the unknown part from p(x_{t-1} | x_t)
JUMP_STREAM = 2  # x_T and the noise of RePaint's jumps back up: apart from the samplers' (0) and add_noise's (1)


def sdedit(pipe: Pipeline, images: Tensor, strength: float, *, seed: int = 0, first: int = 0,
           **options: Any) -> Tensor:
    """SDEdit (Meng et al. 2022, §3, Alg. 1): noise the guide to t0 by q(x_t0 | x0), then solve back
    to t = 0 with any sampler; `steps` are those from t0 down. t0 is `strength` of the way along the
    run's noise levels as its spacing spaces them (`grids.time_at`: t0 = strength on a trailing grid,
    as Meng et al.'s VP-SDE; on a karras grid the Karras interpolation of sigma). strength near 0
    keeps the guide, 1 ignores it."""
    if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise ValueError(f"strength must lie in (0, 1], got {strength!r}")
    t0 = time_at(pipe.schedule, float(strength), options.get("spacing") or pipe.defaults.spacing)
    x = pipe.add_noise(_encoded(pipe, images), t0, seed, first=first)
    return pipe.sample(len(images), x=x, t_start=t0, seed=seed, first=first, **options)


def repaint_schedule(steps: int, jump: int, resample: int) -> list[int]:
    """The grid indices RePaint visits (0 = the noisiest time, steps = t 0), Lugmayr et al. 2022, Alg. 1
    with the jumps of §4.2 and their code's schedule: one index down per network call; on arriving
    (downwards) at the index b steps above t = 0 with b = 1, 1 + jump, 1 + 2 jump, ... <= steps - jump,
    go back up `jump` indices, resample - 1 times per such index, so every such stretch is walked
    `resample` times. Never from t = 0 itself (Alg. 1's "if t > 1"), never to above the top.
    resample = 1 is the replacement method."""
    for name, value in (("steps", steps), ("jump", jump), ("resample", resample)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    left = {steps - b: resample - 1 for b in range(1, steps - jump + 1, jump)}  # b = 1, 1 + j, ... <= steps - j
    path, i, descended = [0], 0, False
    while True:
        if descended and left.get(i, 0):
            left[i] -= 1
            i, descended = i - jump, False
        elif i < steps:
            i, descended = i + 1, True
        else:
            return path
        path.append(i)


def inpaint(pipe: Pipeline, images: Tensor, keep: Tensor, *, resample: int = 1, jump: int = 10, seed: int = 0,
            sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
            first: int = 0, **options: Any) -> Tensor:
    """Fill the pixels where keep = 0. After every sampler step the known part of x_t is replaced by
    a draw from q(x_t | x0) of the image (the replacement method; Song et al. 2021, App. I.2); with
    resample > 1 the path also jumps back up (RePaint, Lugmayr et al. 2022, Alg. 1): x_t ~ q(x_t | x_s)
    from the lower time s, `jump` grid steps at a time, so the generated part is harmonised with the
    known part (jump 10 as in the paper's experiments). sampler: None = ddpm (Alg. 1's ancestral step);
    steps, spacing: the grid of the whole
    descent (None: the run's). The network calls are those of `repaint_schedule`'s descents. A
    `callback` in options sees every step after the known part is replaced (and may replace x too)."""
    z = _encoded(pipe, images)
    keep_model, keep_data = _checked_keep(pipe, images, keep)
    s = pipe.settings(sampler=sampler or INPAINT_SAMPLER, steps=steps, spacing=spacing)  # checked before work
    times = time_grid(pipe.schedule, s.steps, s.spacing)
    path = repaint_schedule(len(times) - 1, jump, resample)
    callback = _replace_known(pipe, z, keep_model, first, options.pop("callback", None))
    gens = per_sample_generators(seed, len(z), start=first, stream=JUMP_STREAM)  # x_T and the jumps' noise
    x = pipe.schedule.sigma(times[0].item()).item() * randn_like(z, gens)
    for k, (start, end) in enumerate(_runs(path)):
        if end > start:  # down the grid: the sampler, the known part replaced after each step
            x = pipe.sample(len(z), x=x, times=times[start:end + 1], sampler=s.sampler, seed=derived_seed(seed, k),
                            callback=callback, decode=False, first=first, **options).to(z)
        else:  # back up: x_end ~ q(x_end | x_start) for the whole x
            x = _noise_up(pipe.schedule, x, times[start].item(), times[end].item(), gens)
    x = pipe.decode(x).cpu()
    return x if isinstance(pipe.space, PixelSpace) else torch.where(keep_data.cpu(), images.cpu().to(x), x)


def invert(pipe: Pipeline, images: Tensor, *, method: str = "exact", sampler: str = "ddim", steps: int | None = None,
           spacing: str | None = None, tol: float | None = None, max_iter: int = 50,
           **condition: Any) -> tuple[Tensor, InversionReport | None]:
    """The noise x_T (n, *model shape) at the grid's first time from which the deterministic `sampler`
    on the grid of `steps` and `spacing` (None: the run's) returns `images`: explicit DDIM inversion
    (method "ddim", off by O(1/steps)) or each step solved by fixed-point iteration ("exact", to an
    RMS residual below tol; None: 1e-9 in float64, 1e-5 in float32). condition: label, labels,
    prompts, guidance, ... as `Pipeline.sample` takes them. Returns (x_T, the exact solve's report)."""
    if method not in INVERSIONS:
        raise ValueError(f"method must be one of {', '.join(INVERSIONS)}, got {method!r}")
    if method == "ddim" and sampler != "ddim":
        raise ValueError(f"DDIM inversion inverts the ddim sampler; for {sampler} use the exact method")
    z = _encoded(pipe, images).to(next(pipe.denoiser.net.parameters()).dtype)
    s = pipe.settings(sampler=sampler, steps=steps, spacing=spacing)
    times = time_grid(pipe.schedule, s.steps, s.spacing)
    denoise, cond = pipe.conditioned(len(z), **_unconditional_by_default(pipe, condition))
    if method == "ddim":
        return ddim_invert(denoise, pipe.schedule, z, times, cond=cond).cpu(), None
    tol = tol if tol is not None else 1e-9 if z.dtype == torch.float64 else 1e-5
    x, report = fixed_point_invert(denoise, pipe.schedule, z, times, sampler=sampler, tol=tol, max_iter=max_iter,
                                   cond=cond)
    return x.cpu(), report


def reconstruct(pipe: Pipeline, z: Tensor, *, sampler: str = "ddim", steps: int | None = None,
                spacing: str | None = None, **condition: Any) -> Tensor:
    """Sample from inverted noises z with the sampler, grid and condition they were inverted with."""
    s = pipe.settings(sampler=sampler, steps=steps, spacing=spacing)
    times = time_grid(pipe.schedule, s.steps, s.spacing)
    return pipe.sample(len(z), x=z, times=times, sampler=sampler, **_unconditional_by_default(pipe, condition))


def interpolate(pipe: Pipeline, z0: Tensor, z1: Tensor, frames: int, **settings: Any) -> Tensor:
    """`frames` samples along the great circle from z0 to z1 (each (1, *model shape), e.g. two inverted
    images; Song et al. 2021, §5.3), each sampled as `reconstruct` does: the ends return the images."""
    if not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be a whole number >= 2, got {frames!r}")
    z = slerp(z0, z1, torch.linspace(0, 1, frames, dtype=torch.float64))
    return reconstruct(pipe, z.to(z0.dtype), **settings)


def _unconditional_by_default(pipe: Pipeline, condition: dict) -> dict:
    """A class-conditional model asked for no class: its unconditional branch (guidance 0, a single
    call of the null label), so that inversion and its round trip need no label."""
    asked = any(condition.get(k) is not None for k in ("label", "labels", "prompts", "guidance"))
    if pipe.interface.num_classes and not pipe.interface.text and not asked:  # 0 * (cond - uncond), everywhere
        return {**condition, "label": 0, "guidance": 0.0, "guidance_rescale": 0.0, "guidance_interval": (0.0, 1.0)}
    return condition


def _runs(path: list[int]) -> list[tuple[int, int]]:
    """The path cut into monotone runs (start, end): descents and the jumps between them."""
    runs, start = [], 0
    for j in range(1, len(path)):
        last = j == len(path) - 1
        if last or (path[j + 1] > path[j]) != (path[j] > path[j - 1]):
            runs.append((path[start], path[j]))
            start = j
    return runs


def _replace_known(pipe: Pipeline, z: Tensor, keep: Tensor, first: int, then: Callable | None = None):
    """The callback that sets the known part of x_t to alpha z + sigma eps after each step (z itself at
    t = 0), then calls `then` (a caller's own callback) with that x."""

    def replace(b: BatchStep) -> Tensor:
        x, t = b.step.x, b.step.t_next
        rows = slice(b.rows.start - first, b.rows.stop - first)
        a, s = pipe.schedule.alpha(t).item(), pipe.schedule.sigma(t).item()
        known = z[rows].to(x) * a
        if s > 0:
            known = known + s * randn_like(x, b.generators)
        x = torch.where(keep[rows], known, x)
        if then is None:
            return x
        again = then(dataclasses.replace(b, step=dataclasses.replace(b.step, x=x)))
        return x if again is None else again

    return replace


def _noise_up(schedule: Schedule, x: Tensor, t_lo: float, t_hi: float, gens: list[torch.Generator]) -> Tensor:
    """x_hi ~ q(x_hi | x_lo) = N((alpha_hi / alpha_lo) x_lo, sigma_hi^2 - (alpha_hi sigma_lo / alpha_lo)^2),
    the forward process from t_lo up to t_hi (Kingma et al. 2021, eq. 3)."""
    a_lo, s_lo = schedule.alpha(t_lo).item(), schedule.sigma(t_lo).item()
    a_hi, s_hi = schedule.alpha(t_hi).item(), schedule.sigma(t_hi).item()
    ratio = a_hi / a_lo
    std = math.sqrt(max(s_hi**2 - (ratio * s_lo) ** 2, 0.0))
    return ratio * x + std * randn_like(x, gens)


def _encoded(pipe: Pipeline, images: Tensor) -> Tensor:
    """Checked images (n, *data shape), encoded into the space the network diffuses in."""
    if not isinstance(images, Tensor) or images.ndim < 2 or not bool(torch.isfinite(images).all()):
        raise ValueError("images must be a finite tensor (n, *data shape)")
    shape = pipe.interface.sample_shape
    if isinstance(pipe.space, PixelSpace) and tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must have shape (n, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
    z = pipe.encode(images)
    if tuple(z.shape[1:]) != shape:
        raise ValueError(f"images of shape {tuple(images.shape[1:])} encode to {tuple(z.shape[1:])}, not the "
                         f"model's {shape}: give images of the size the model was trained on")
    return z


def _checked_keep(pipe: Pipeline, images: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """keep as bool masks in the model's space (a latent cell kept only where every pixel under it is
    known) and in data space."""
    keep = torch.as_tensor(keep)
    if not bool(((keep == 0) | (keep == 1)).all()):
        raise ValueError("keep must hold 0 (generate) and 1 (known) only")
    try:
        keep_data = torch.broadcast_to(keep.bool(), images.shape)
    except RuntimeError:
        raise ValueError(f"keep of shape {tuple(keep.shape)} does not fit images of shape "
                         f"{tuple(images.shape)}") from None
    if bool(keep_data.all()):
        raise ValueError("keep marks every pixel as known: nothing to inpaint")
    if isinstance(pipe.space, PixelSpace):
        return keep_data.to(pipe.device), keep_data
    latent = pipe.interface.sample_shape  # (C, h, w)
    unknown = F.adaptive_max_pool2d((~keep_data).any(1, keepdim=True).float(), latent[-2:])
    return (unknown == 0).expand(len(images), *latent).to(pipe.device), keep_data
