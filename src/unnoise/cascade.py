"""Cascaded sampling (Ho et al. 2022, "Cascaded diffusion models"): a base model samples at low
resolution; a super-resolution model, trained on the data's own low-resolution copies ([data] hint =
"lowres") as extra input channels, samples the high-resolution image given them.

    low, high = cascade(base, sr, 16, label=3, hint_noise=0.2)   # 14x14 -> 28x28
    high = super_resolve(sr, low)                                  # any low-resolution images
    cond = hint_condition(controlnet, "edges.png", 8)              # one hint picture as 8 samples' condition

Conditioning augmentation (§4.2): a super-resolution model trained with [loss] hint_noise = s_max saw
its input noised to a level s ~ U(0, s_max), told s; at sampling the base's output is noised to a
chosen level `hint_noise` by the same forward process, which hides the base's own artefacts that the
model never saw in training (0: the input as it is; None everywhere here: the run's [sample] hint_noise).
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import torch
from torch import Tensor

from unnoise.conditioning import Condition
from unnoise.data.hints import upsample
from unnoise.inputs import read_image
from unnoise.noise import derived_seed
from unnoise.pipeline import Pipeline


def sr_factor(sr: Pipeline, low_shape: tuple[int, ...]) -> int:
    """How much the super-resolution model enlarges images of low_shape (C, h, w); checked."""
    channels, side = sr.interface.hint_channels, sr.interface.sample_shape[-1]
    lowres = sr.config is not None and sr.config.data.hint == "lowres"
    if not lowres or sr.interface.sample_shape[0] != channels:
        raise ValueError(f"{sr.source or 'the model'} is not a super-resolution model (a run trained with "
                         "[data] hint = \"lowres\")")
    factor = sr.config.data.hint_factor
    if tuple(low_shape) != (channels, side // factor, side // factor):
        raise ValueError(f"{sr.source} enlarges {channels}x{side // factor}x{side // factor} images {factor} times; "
                         f"got images of shape {tuple(low_shape)}")
    return factor


def hint_level(sr: Pipeline, hint_noise: float | None) -> float:
    """The level s a super-resolution model's input is noised to: the one asked for, or (None) the run's
    [sample] hint_noise; checked."""
    if hint_noise is None:
        hint_noise = sr.config.sample.hint_noise if sr.config is not None else 0.0
    if not (isinstance(hint_noise, (int, float)) and 0 <= hint_noise <= 1):
        raise ValueError(f"hint_noise must lie in [0, 1], got {hint_noise!r}")
    return float(hint_noise)


def sr_condition(sr: Pipeline, low: Tensor, *, hint_noise: float | None = None, seed: int = 0,
                 first: int = 0) -> Condition:
    """The condition of a super-resolution model given low-resolution images (n, C, h, w) in [-1, 1]:
    blown up, noised to level hint_noise (None: the run's) by noise of (seed, first + i), the level given."""
    level = hint_level(sr, hint_noise)
    factor = sr_factor(sr, tuple(low.shape[1:]))
    hint = upsample(low.float().clamp(-1, 1), factor)  # the range the data's copies have
    if level > 0:
        hint = sr.add_noise(hint.to(sr.device), level, seed, first=first).cpu()
    return Condition(image=hint, image_noise=torch.full((len(low),), level))


def super_resolve(sr: Pipeline, low: Tensor, *, hint_noise: float | None = None, seed: int = 0, first: int = 0,
                  **options: Any) -> Tensor:
    """High-resolution samples given low-resolution images (n, C, h, w) in [-1, 1]; sample i draws from
    (seed, first + i) as `Pipeline.sample` does; options (label, prompts, guidance, sampler, steps, ...)
    go to it."""
    cond = sr_condition(sr, low, hint_noise=hint_noise, seed=seed, first=first)
    return sr.sample(len(low), cond=cond, seed=seed, first=first, **options)


def hint_picture(pipe: Pipeline) -> tuple[str | None, tuple[int, ...]]:
    """What hint a model reads ("lowres", else its [data] hint, e.g. "edges") and the shape (C, H, W)
    of the picture that gives it: the low-resolution image, or the hint at the model's size."""
    channels, shape = pipe.interface.hint_channels, tuple(pipe.interface.sample_shape)
    if not channels:
        return None, ()
    if pipe.config is not None and pipe.config.data.hint == "lowres":
        side = shape[-1] // pipe.config.data.hint_factor
        return "lowres", (channels, side, side)
    return (pipe.config.data.hint if pipe.config is not None else "image"), (channels, *shape[1:])


def hint_condition(pipe: Pipeline, source: str | os.PathLike | BinaryIO, n: int, *, hint_noise: float | None = None,
                   seed: int = 0) -> Condition:
    """The condition of n samples of a model that reads a hint image, given one picture (a path or a
    file object) of `hint_picture`'s shape (resized to it): a ControlNet's hint (e.g. an edge map,
    white edges on black), or a super-resolution model's low-resolution image (`sr_condition`)."""
    kind, shape = hint_picture(pipe)
    if kind is None:
        raise ValueError("a hint image was given, but this model reads none")
    picture = read_image(source, shape).expand(n, *shape)
    if kind == "lowres":
        return sr_condition(pipe, picture, hint_noise=hint_noise, seed=seed)
    return Condition(image=picture)


def cascade(base: Pipeline, sr: Pipeline, n: int, *, hint_noise: float | None = None, seed: int = 0,
            base_options: dict | None = None, sr_options: dict | None = None,
            **condition: Any) -> tuple[Tensor, Tensor]:
    """(low, high): n base samples and their super-resolution, with the same condition (label,
    labels, prompts); each model's own options (sampler, steps, guidance, ...) apart. The second
    stage draws from a seed derived from `seed`: its noise must not repeat the first stage's."""
    hint_level(sr, hint_noise)  # checked before any sampling, as the shapes are
    data_shape = tuple(base.decode(torch.zeros(1, *base.interface.sample_shape, device=base.device)).shape[1:])
    sr_factor(sr, data_shape)
    low = base.sample(n, seed=seed, **condition, **(base_options or {}))
    high = super_resolve(sr, low, hint_noise=hint_noise, seed=derived_seed(seed, 1), **condition,
                         **(sr_options or {}))
    return low, high
