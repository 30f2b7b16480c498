"""The ranges of a run config's numbers: each number's kind (whole or finite) and allowed values,
per section (RANGES) and per network config (MODEL_RANGES), with the reason for each upper bound,
and the bounds that several model fields make together. unnoise.config checks every section
against these when a config is loaded; each mistake is one ValueError of one line naming the key,
the value and what is allowed.

    check_numbers(train_config, "train")      # every [train] number of its kind and in its range
    whole(1, STEPS_MAX, "why").check("train.steps", 10)
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass
from typing import Any

from unnoise.models import (
    AutoencoderConfig,
    ControlNetConfig,
    DiTConfig,
    EGNNConfig,
    MLPConfig,
    UNetConfig,
    VideoUNetConfig,
    WaveNetConfig,
)

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 60, 60, 6, 4, 3


def show(value: Any) -> str:
    """A value for a one-line message: repr, shortened (long strings, lists, deep nesting); true and
    false as TOML writes them."""
    return str(value).lower() if isinstance(value, bool) else _repr.repr(value)


def toml_key(key: Any) -> str:
    """A TOML key as written: bare if it can be, else quoted (a key may hold newlines), shortened."""
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_-]{1,60}", text) else show(text)


def _plain(n: float) -> str:
    if n == 2**63 - 1:
        return "2^63 - 1"
    return str(n) if isinstance(n, int) else str(int(n)) if n.is_integer() else f"{n:g}"


@dataclass(frozen=True)
class Range:
    """A number's kind and allowed values, lo..hi (each end closed unless open_lo / open_hi).
    int: a whole number (a TOML integer, not 2.0 or true); float: a finite number (integers too)."""

    kind: type
    lo: float = -math.inf
    hi: float = math.inf
    open_lo: bool = False
    open_hi: bool = False
    why: str = ""  # why the upper bound, said when a value is above it

    def text(self) -> str:
        kind = "a whole number" if self.kind is int else "a finite number"
        lo, hi = math.isfinite(self.lo), math.isfinite(self.hi)
        if self.kind is int and lo and hi:
            return f"{kind} in {_plain(self.lo)}..{_plain(self.hi)}"
        if lo and hi:
            return (f"{kind} in {'(' if self.open_lo else '['}{_plain(self.lo)}, {_plain(self.hi)}"
                    f"{')' if self.open_hi else ']'}")
        if lo:
            return f"{kind} {'>' if self.open_lo else '>='} {_plain(self.lo)}"
        if hi:
            return f"{kind} {'<' if self.open_hi else '<='} {_plain(self.hi)}"
        return kind

    def check(self, key: str, value: Any) -> Any:
        """The value (an int made float for a float field), or ValueError naming key, value and range."""
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if self.kind is int and not isinstance(value, int):
            number = False  # 2.5, 1e9 (a float in TOML), true, "3": not a count
        if number and self.kind is float:
            try:
                number = math.isfinite(float(value))  # nan, inf, and integers beyond a float's range
            except OverflowError:
                number = False
        above = number and (value > self.hi or (self.open_hi and value == self.hi))
        below = number and (value < self.lo or (self.open_lo and value == self.lo))
        if not number or above or below:
            why = f" ({self.why})" if above and self.why else ""
            if self.kind is int and isinstance(value, float) and value.is_integer():
                why = " (a float: write a whole number without a decimal point or exponent)"
            raise ValueError(f"{key} must be {self.text()}, got {show(value)}{why}")
        return float(value) if self.kind is float else value


@dataclass(frozen=True)
class Each:
    """A list of numbers, each in `item`, with min_len..max_len entries."""

    item: Range
    min_len: int = 0
    max_len: int = 64

    def check(self, key: str, value: Any) -> tuple:
        if not isinstance(value, list | tuple) or not self.min_len <= len(value) <= self.max_len:
            raise ValueError(f"{key} must be a list of {self.min_len}..{self.max_len} numbers, each "
                             f"{self.item.text()}, got {show(value)}")
        return tuple(self.item.check(f"{key}[{i}]", v) for i, v in enumerate(value))


@dataclass(frozen=True)
class OneOf:
    """A string from a fixed set (for sections whose dataclass lives elsewhere)."""

    names: tuple[str, ...]

    def check(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.names:
            raise ValueError(f"{key} must be one of {', '.join(self.names)}, got {show(value)}")
        return value


def whole(lo: int, hi: float = math.inf, why: str = "") -> Range:
    return Range(int, lo, hi, why=why)


def real(lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False, open_hi: bool = False,
         why: str = "") -> Range:
    return Range(float, lo, hi, open_lo, open_hi, why)


# Upper bounds: each far above anything a run here needs, and below the point where the value alone
# would make a run allocate gigabytes or work for days before its first useful output.
STEPS_MAX = 10**9  # optimiser steps: a billion is years of training anywhere; max_seconds stops by time
BATCH_MAX = 65_536  # 2^16 examples: the first step holds all their activations at once
SAMPLE_STEPS_MAX = 10_000  # ten times DDPM's 1,000 ancestral steps; the sampler allocates its grid up front
SAMPLES_MAX = 10_000  # a 100 x 100 grid; sample.n samples are held in memory and drawn at every sample_every
SIDE_MAX = 4096  # image side or signal length: a 4096^2 image is 16M pixels, and data sets live in memory
CHANNELS_MAX = 1024  # image or latent channels: RGB has 3, SD's latents 4, multispectral stacks tens
WIDTH_MAX = 4096  # a network's widest layer: SD-XL's U-Net peaks at 1,280 channels, DiT-XL at 1,152
DEPTH_MAX = 64  # blocks: DiT-XL has 28, ADM 3 per level
CLASSES_MAX = 100_000  # ImageNet-21k has 21,841; the label embedding is classes x width
TOKENS_MAX = 16_384  # positions in one self-attention (a 128 x 128 map): its scores grow with the square
POINTS_MAX = 10**7  # toy points or signals drawn into memory (signals: num_points x length bounded in DataConfig)
SEED_MAX = 2**63 - 1  # a TOML integer; seeds feed 64-bit generators and NumPy's SeedSequence (>= 0)
MAX_DEPTH = 8  # nesting of a config tree: sections (1) of keys (2) whose lists (3) hold numbers or strings

SIGMA_DATA_MAX = 1e4  # the data's standard deviation: squared in float32 by EDM's preconditioning
_SIGMA_DATA_WHY = "the data's standard deviation; images in [-1, 1] have about 0.5"
_STEPS_WHY = "a billion steps is years of training; stop by time with train.max_seconds"
_SIDE_WHY = f"{SIDE_MAX} px is 16M pixels an image"

RANGES: dict[str, dict[str, Range | Each | OneOf]] = {
    "data": {
        "image_size": whole(1, SIDE_MAX, _SIDE_WHY),
        "channels": whole(1, 3),  # 1 or 3: DataConfig refuses 2
        "max_pixels": whole(1),  # a limit on what is read: large only means no limit
        "num_points": whole(1, POINTS_MAX, "the points or signals are drawn into memory"),
        "noise": real(0, 100, why="the points lie in [-1, 1]: noise beyond 100 leaves nothing of them"),
        "seed": whole(0, SEED_MAX),
        "length": whole(1, SIDE_MAX, "the exact Gaussian-process sampler's Cholesky factor costs length^3"),
        "lengthscale": real(0, open_lo=True),
        "amplitude": real(0, open_lo=True),
        "sample_rate": whole(1000, 192_000, "audio is recorded at 8 to 192 kHz"),
        "clip_length": whole(1, 2**22, "about 4 minutes at 16 kHz, held in memory per clip"),
        "frames": whole(1, 256, "a video's frames attend to each other"),
        "digit_size": whole(1, SIDE_MAX, _SIDE_WHY), "videos_per_digit": whole(1, 100, "videos are held in memory"),
        "max_atoms": whole(1, 29, "QM9's largest molecule has 29 atoms"), "limit": whole(1),
        "ar1": real(-2, 2, why="a stationary AR(2) process has |ar1| < 2"),
        "ar2": real(-1, 1, why="a stationary AR(2) process has |ar2| < 1"),
        "independent_fraction": real(0, 1),
    },
    "diffusion": {"sigma_data": real(0, SIGMA_DATA_MAX, open_lo=True, why=_SIGMA_DATA_WHY),
                  "sigma_min": real(0, 10, why="the consistency boundary is a small noise level; EDM's is 0.002")},
    "loss": {  # LossConfig (unnoise.losses), checked here in config terms
        "weighting": OneOf(("simple", "min-snr", "edm", "truncated-snr")),
        "time_sampling": OneOf(("uniform", "lognormal", "logit-normal")),
        "coupling": OneOf(("independent", "ot")),
        "logit_mean": real(-20, 20, why="the mean of logit t: sigmoid(20) is 1 - 2e-9, the path's noisy end"),
        "logit_std": real(0, 10, open_lo=True, why="the spread of logit t"),
        "hint_noise": real(0, 1, why="a time of the schedule"),
        "p_mean": real(-20, 20, why="the mean of ln sigma: e^20 is 5e8, past any schedule's largest noise"),
        "p_std": real(0, 10, open_lo=True, why="the spread of ln sigma: e^(3 x 10) is past any schedule's noise"),
        "min_snr_gamma": real(0, open_lo=True),
        "sigma_data": real(0, SIGMA_DATA_MAX, open_lo=True, why=_SIGMA_DATA_WHY),
    },
    "train": {
        "steps": whole(1, STEPS_MAX, _STEPS_WHY),
        "max_seconds": real(0),  # 0 = no limit
        "batch_size": whole(1, BATCH_MAX, "the first step would hold the whole batch's activations"),
        "lr": real(0, 1, open_lo=True, why="AdamW moves every weight by about lr a step"),
        "warmup_steps": whole(0, STEPS_MAX, _STEPS_WHY),
        "weight_decay": real(0),
        "grad_clip": real(0),  # 0 = no clipping
        "ema_decay": real(0, 1, open_hi=True),
        "seed": whole(0, SEED_MAX),
        "log_every": whole(1),
        "sample_every": whole(0),  # 0 = at the end only
        "checkpoint_every": whole(0),  # 0 = at the end only
        "keep_checkpoints": whole(1),
        "max_nonfinite": whole(1),
        "label_dropout": real(0, 1, open_hi=True),
    },
    "sample": {
        "steps": whole(1, SAMPLE_STEPS_MAX, "ten times DDPM's 1000 ancestral steps; no sampler here needs more"),
        "n": whole(1, SAMPLES_MAX, "a 100 x 100 grid; samples are held in memory"),
        "seed": whole(0, SEED_MAX),
        "guidance": real(-1000, 1000, why="scales in use are 1 to 20; larger ones overflow the guided prediction"),
        "guidance_rescale": real(0, 1),
    },
    "text": {"max_tokens": whole(3, 512)},
    "distill": {
        "guidance": real(-1000, 1000, why="scales in use are 1 to 20; larger ones overflow the guided prediction"),
        "levels": whole(2, 100_000, "Song et al. use 18 to 1281 levels; each is a point of the discretised ODE"),
        "start_levels": whole(2, 100_000, "Song & Dhariwal start at 11 levels"),
        "levels_max": whole(2, 100_000, "Song & Dhariwal end at 1281 levels"),
        "level_mean": real(-20, 20, why="the mean of ln s~: e^20 is 5e8, past any schedule's largest noise"),
        "level_std": real(0, 10, open_lo=True, why="the spread of ln s~"),
        "target_ema": real(0, 1, open_hi=True),
        "huber_c": real(0),
        "rho": real(0, 100, open_lo=True),
        "teacher_steps": whole(0, 10_000, "the teacher's sampler steps; no sampler here needs more"),
        "pairs": whole(1, 10**7, "the pairs are held in memory"),
    },
    "autoencoder": {  # AutoencoderLossConfig (unnoise.losses)
        "kl_weight": real(0),
        "perceptual_weight": real(0),
        "disc_weight": real(0),
        "disc_start": whole(0, STEPS_MAX, _STEPS_WHY),
        "disc_lr": real(0, 1, open_lo=True, why="AdamW moves every weight by about lr a step"),
        "scale_images": whole(2),  # capped by the data set's size
    },
}

_CLASSES = whole(0, CLASSES_MAX, "the label embedding holds a row per class")
_CHANNELS = whole(1, CHANNELS_MAX, "RGB has 3 channels, Stable Diffusion's latents 4")
_WIDTH = whole(1, WIDTH_MAX, "SD-XL's widest layer has 1280 channels")
_DEPTH = whole(1, DEPTH_MAX, "DiT-XL has 28 blocks")
_SIDE = whole(1, SIDE_MAX, _SIDE_WHY)
_LEVELS = Each(whole(1, 1024), 1, 13)  # 13 levels halve a 4096 side down to 1
_TIME_SCALE = real(0, 1e6, open_lo=True, why="the network embeds sin(time_scale t); the usual scale is 1000")

MODEL_RANGES: dict[type, dict[str, Range | Each | OneOf]] = {
    UNetConfig: {
        "in_channels": _CHANNELS, "out_channels": whole(1, CLASSES_MAX, "a classifier's classes, or channels"),
        "image_size": _SIDE, "base_channels": _WIDTH, "channel_mult": _LEVELS,
        "blocks_per_level": _DEPTH, "attention_factors": Each(whole(1, SIDE_MAX), 0, 13),
        "head_channels": _WIDTH, "dropout": real(0, 1, open_hi=True), "num_classes": _CLASSES,
        "context_dim": whole(0, WIDTH_MAX, "text encoders' widths: MiniLM 384, T5-XXL 4096"),
        "time_scale": _TIME_SCALE, "dims": whole(1, 2), "cond_channels": whole(0, 64),
    },
    DiTConfig: {
        "image_size": _SIDE, "patch_size": _SIDE, "in_channels": _CHANNELS, "out_channels": _CHANNELS,
        "hidden_size": _WIDTH, "depth": _DEPTH, "heads": _WIDTH, "mlp_ratio": real(0, 16, open_lo=True),
        "num_classes": _CLASSES, "context_dim": whole(0, WIDTH_MAX, "text encoders' widths: MiniLM 384, T5-XXL 4096"),
        "time_scale": _TIME_SCALE,
    },
    MLPConfig: {
        "dim": whole(1, 65_536, "the input layer holds dim x hidden weights"), "hidden": _WIDTH, "depth": _DEPTH,
        "num_classes": _CLASSES, "time_scale": _TIME_SCALE,
    },
    EGNNConfig: {
        "max_atoms": whole(1, 1024, "every slot meets every other: its work grows with the square"),
        "features": _CHANNELS, "hidden": _WIDTH, "layers": _DEPTH, "num_classes": _CLASSES,
        "coords_range": real(0, 1e3, open_lo=True), "time_scale": _TIME_SCALE,
    },
    AutoencoderConfig: {
        "in_channels": _CHANNELS, "image_size": _SIDE, "latent_channels": _CHANNELS, "base_channels": _WIDTH,
        "channel_mult": _LEVELS, "blocks_per_level": _DEPTH,
        "disc_channels": whole(1, WIDTH_MAX // 4, "the discriminator's last layer is 4 times as wide"),
    },
}
MODEL_RANGES[ControlNetConfig] = {**MODEL_RANGES[UNetConfig], "hint_channels": _CHANNELS, "hint_width": _WIDTH}
MODEL_RANGES[VideoUNetConfig] = {**MODEL_RANGES[UNetConfig], "frames": whole(1, 256, "frames attend to each other"),
                                 "temporal_head_channels": _WIDTH, "temporal_factors": Each(whole(1, SIDE_MAX), 0, 13)}
MODEL_RANGES[WaveNetConfig] = {
    "length": whole(1, 2**22, "about 4 minutes at 16 kHz"), "channels": _WIDTH, "layers": _DEPTH,
    "cycle": whole(1, 20, "a dilation of 2^19 spans more than any clip"), "hop": whole(1, 4096),
    "num_classes": _CLASSES, "time_scale": _TIME_SCALE,
}


def check_numbers(section: Any, name: str) -> None:
    """Each number of a dataclass `section` (called `name` in a config) of its kind and in its range."""
    for key, spec in RANGES[name].items():
        value = getattr(section, key)
        if value is not None and not isinstance(spec, OneOf):
            spec.check(f"{name}.{key}", value)


def check_model_size(model: Any) -> None:
    """Bounds on what several fields make together: the widest layer and the longest self-attention."""
    if isinstance(model, UNetConfig | AutoencoderConfig):
        widest = model.base_channels * max(model.channel_mult)
        if widest > WIDTH_MAX:
            raise ValueError(f"model.base_channels x max(model.channel_mult) = {widest} must be <= {WIDTH_MAX} "
                             f"(the widest layer; SD-XL's has 1280 channels)")
    attended = []  # (keys, what, positions)
    if isinstance(model, UNetConfig):
        if model.head == "image" and model.out_channels > CHANNELS_MAX:
            raise ValueError(f"model.out_channels must be a whole number in 1..{CHANNELS_MAX} for head = 'image', "
                             f"got {model.out_channels}")
        for f in model.attention_factors:
            attended.append(("model.attention_factors", f"self-attention at factor {f}",
                             (model.image_size // f) ** model.dims))
        attended.append(("model.image_size and model.channel_mult", "the middle self-attention",
                         (model.image_size // model.downsampling) ** model.dims))
    if isinstance(model, AutoencoderConfig) and model.attention:
        attended.append(("model.image_size and model.channel_mult", "the middle self-attention",
                         (model.image_size // model.downsampling) ** 2))
    if isinstance(model, DiTConfig):
        attended.append(("model.image_size and model.patch_size", "self-attention over the patches",
                         (model.image_size // model.patch_size) ** 2))
        if int(model.hidden_size * model.mlp_ratio) < 1:
            raise ValueError(f"model.hidden_size x model.mlp_ratio must be >= 1 (the MLP's width), got "
                             f"{model.hidden_size} x {model.mlp_ratio:g}")
    for keys, what, positions in attended:
        if positions > TOKENS_MAX:
            raise ValueError(f"{keys}: {what} spans {positions} positions, more than {TOKENS_MAX} (its scores grow "
                             f"with the square); attend at a lower resolution")
