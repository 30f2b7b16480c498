"""Run configuration: frozen dataclasses, read from TOML, overridable with `--set section.key=value`.

    [data]      DataConfig (unnoise.data)
    [model]     preset = "<name in MODEL_PRESETS>" plus any field of that preset's config
    [diffusion] schedule, parameterization
    [loss]      LossConfig (unnoise.losses)
    [train]     TrainConfig below
    [sample]    SampleConfig below
    [text]      TextConfig (unnoise.text), for text-conditioned models
    [latent]    LatentConfig below: the autoencoder of a latent diffusion model
    [autoencoder] AutoencoderLossConfig (unnoise.losses), for unnoise train-autoencoder
    [distill]   DistillConfig below: consistency models, progressive distillation, reflow
Unknown keys are refused with the closest valid key. Every number has a kind (a whole number, or a
finite number) and a range (RANGES, MODEL_RANGES below), checked when the config is loaded, `--set`
overrides included; every mistake is one ValueError of one line naming the key, the value and what
is allowed. Paths are checked for existence only when a run starts (check_paths).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import reprlib
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from unnoise.data import DataConfig
from unnoise.grids import SPACINGS
from unnoise.losses import AutoencoderLossConfig, LossConfig
from unnoise.models import (
    MODEL_PRESETS,
    AutoencoderConfig,
    ControlNetConfig,
    DiTConfig,
    EGNNConfig,
    MLPConfig,
    UNetConfig,
    VideoUNetConfig,
    WaveNetConfig,
)
from unnoise.parameterization import PARAMETERIZATIONS
from unnoise.samplers import SAMPLERS
from unnoise.schedules import PRESETS as SCHEDULES
from unnoise.text import TextConfig


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: str = "edm"  # a preset of unnoise.schedules (e.g. ddpm, cosine, edm, flow, ddpm-ztsnr)
    parameterization: str = "edm"  # eps | x0 | v | velocity | edm
    sigma_data: float = 0.5  # data std for EDM preconditioning and consistency models
    sigma_min: float = 0.0  # consistency models: the boundary level s~ where f(x, s~) = x; 0 = the schedule's t_min

    def __post_init__(self):
        base = self.schedule.removesuffix("-ztsnr")
        if base not in SCHEDULES:
            raise ValueError(f"diffusion.schedule must be one of {', '.join(SCHEDULES)} (optionally with the suffix "
                             f"-ztsnr), got {_show(self.schedule)}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"diffusion.parameterization must be one of {', '.join(PARAMETERIZATIONS)}, "
                             f"got {_show(self.parameterization)}")
        check_numbers(self, "diffusion")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10_000  # optimiser steps to train for
    max_seconds: float = 0.0  # stop (and checkpoint) after this much wall-clock time; 0 = no limit
    batch_size: int = 64  # global batch, split across DDP ranks
    lr: float = 1e-3  # peak AdamW learning rate
    warmup_steps: int = 200  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    ema_decay: float = 0.999  # EMA decay after warm-up
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)) early on
    bf16: bool = False  # bfloat16 autocast for the forward pass
    dtype: str = "float32"  # parameter and data precision: float32, or float64 (for exactness tests)
    compile: bool = False  # torch.compile the network
    init: str = ""  # a run or checkpoint folder whose EMA weights start the network (a ControlNet: its frozen base)
    seed: int = 0  # seeds data order, noise, times and initial weights
    log_every: int = 50  # steps between log lines
    sample_every: int = 0  # steps between sample grids (EMA weights, fixed seed); 0 = at the end only
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 2  # complete checkpoints kept
    max_nonfinite: int = 10  # stop after this many non-finite losses or gradients in a row
    label_dropout: float = 0.0  # probability of replacing a label by the null label (classifier-free guidance)
    objective: str = ""  # what the run optimises (unnoise.objectives.OBJECTIVES); "": the one its network asks for

    def __post_init__(self):
        check_numbers(self, "train")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"train.dtype must be float32 or float64, got {_show(self.dtype)}")


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "heun"  # a name in unnoise.samplers.SAMPLERS
    steps: int = 18  # sampler steps
    spacing: str = "karras"  # time-grid spacing
    n: int = 64  # samples in a grid
    seed: int = 0  # per-sample seeds start here
    guidance: float = 1.0  # classifier-free guidance scale for class- or text-conditional models (1 = none)
    guidance_rescale: float = 0.0  # phi of Lin et al. 2024 (eq. 15-17): pull the guided std back; 0 = off
    guidance_interval: tuple[float, ...] = (0.0, 1.0)  # guide only for t in (lo, hi] (Kynkaanniemi et al. 2024)
    # super-resolution: the level s its low-resolution input is noised to (conditioning augmentation,
    # Ho et al. 2022 §4.2); in [0, 1], 0: the input as it is. Measure it: see fashion-sr.toml
    hint_noise: float = 0.0

    prompts: tuple[str, ...] = ()  # text models: the grid cycles through these; () = the data set's first captions

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sample.sampler must be one of {', '.join(SAMPLERS)}, got {_show(self.sampler)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"sample.spacing must be one of {', '.join(SPACINGS)}, got {_show(self.spacing)}")
        check_numbers(self, "sample")
        if not 0 <= self.hint_noise <= 1:
            raise ValueError(f"sample.hint_noise must lie in [0, 1], got {_show(self.hint_noise)}")
        lo_hi = self.guidance_interval
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= 1:
            raise ValueError(f"sample.guidance_interval must be [lo, hi] with 0 <= lo < hi <= 1, "
                             f"got {_show(list(lo_hi))}")


# what [train] objective may name: unnoise.objectives.OBJECTIVES maps each to its class (the objectives
# import this module, so the names live here)
OBJECTIVE_NAMES = ("diffusion", "classifier", "autoencoder", "cd", "ct", "progressive", "reflow")
SOLVERS = ("heun", "dpmpp_2s", "ddim")  # the teacher's one-step ODE solvers (unnoise.objectives.teacher)
DISTANCES = ("pseudo-huber", "l2")


@dataclass(frozen=True)
class DistillConfig:
    """Few-step methods: consistency distillation and training, progressive distillation, reflow
    (unnoise.objectives.consistency, .progressive, .reflow; `unnoise distill` writes this section)."""

    teacher: str = ""  # the teacher run folder (cd, progressive, reflow)
    guidance: float = 1.0  # the teacher's classifier-free guidance scale (a conditional teacher)
    solver: str = "heun"  # cd: the teacher's one-step ODE solver: heun | dpmpp_2s | ddim
    levels: int = 18  # cd: N noise levels (Karras spacing, Song et al. 2023)
    target_ema: float = 0.95  # cd: mu of the target network theta- (eq. 8); ct has none (theta- = stopgrad theta)
    start_levels: int = 11  # ct: N at the start, s0 + 1 (Song & Dhariwal 2023, eq. 11: s0 = 10)
    levels_max: int = 1280  # ct: N doubles on a schedule up to this + 1 (s1 = 1280)
    level_mean: float = -1.1  # ct: the lognormal law of the levels, mean of ln s~ (P_mean, eq. 12)
    level_std: float = 2.0  # ct: its std (P_std)
    distance: str = "pseudo-huber"  # l2 | pseudo-huber: sqrt(|a - b|^2 + c^2) - c
    huber_c: float = 0.0  # the pseudo-Huber c; 0 = 0.00054 sqrt(d) (Song & Dhariwal 2023, §3.3)
    rho: float = 7.0  # the levels' Karras exponent
    teacher_steps: int = 0  # progressive: the teacher's steps (the student takes half); reflow: the steps of the
    #                         sampler that draws the pairs; 0 = the teacher's [sample] steps
    sampler: str = ""  # reflow: the sampler that draws the pairs; "" = the teacher's
    pairs: int = 10_000  # reflow: (noise, sample) pairs drawn from the teacher
    one_step: bool = False  # reflow: train at t = 1 only: distil the flow into one Euler step (Liu et al. 2022, §2.3)

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"distill.solver must be one of {', '.join(SOLVERS)}, got {_show(self.solver)}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distill.distance must be one of {', '.join(DISTANCES)}, got {_show(self.distance)}")
        if self.sampler and self.sampler not in SAMPLERS:
            raise ValueError(f"distill.sampler must be \"\" or one of {', '.join(SAMPLERS)}, got {_show(self.sampler)}")
        if "\0" in self.teacher:
            raise ValueError(f"distill.teacher must be a path, got {_show(self.teacher)} (a NUL character)")
        check_numbers(self, "distill")


@dataclass(frozen=True)
class LatentConfig:
    autoencoder: str = ""  # an autoencoder run or checkpoint folder: diffuse in its latent space; "" = pixels
    sha256: str = ""  # of its weights, recorded by training: a mismatched autoencoder is refused

    def __post_init__(self):
        if "\0" in self.autoencoder:
            raise ValueError(f"latent.autoencoder must be a path, got {_show(self.autoencoder)} (a NUL character)")
        if self.sha256 and not re.fullmatch("[0-9a-f]{64}", self.sha256):
            raise ValueError(f"latent.sha256 must be \"\" or 64 lowercase hex digits (a SHA-256 digest), "
                             f"got {_show(self.sha256)}")


@dataclass(frozen=True)
class RunConfig:
    data: Any  # unnoise.data.DataConfig
    model: Any  # a model config dataclass (from a preset)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    text: TextConfig = field(default_factory=TextConfig)  # read when [model] context_dim > 0
    latent: LatentConfig = field(default_factory=LatentConfig)  # latent diffusion
    autoencoder: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)  # train-autoencoder runs
    distill: DistillConfig = field(default_factory=DistillConfig)  # distillation, consistency training, reflow
    out: str = "runs/default"  # run folder: log, pictures, checkpoints
    tree: dict = field(default_factory=dict, compare=False, repr=False)  # the TOML it came from, overrides applied


# ---- ranges: what every number may be ---------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 60, 60, 6, 4, 3


def _show(value: Any) -> str:
    """A value for a one-line message: repr, shortened (long strings, lists, deep nesting); true and
    false as TOML writes them."""
    return str(value).lower() if isinstance(value, bool) else _repr.repr(value)


def _key(key: Any) -> str:
    """A TOML key as written: bare if it can be, else quoted (a key may hold newlines), shortened."""
    text = str(key)
    return text if re.fullmatch(r"[A-Za-z0-9_-]{1,60}", text) else _show(text)


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
            raise ValueError(f"{key} must be {self.text()}, got {_show(value)}{why}")
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
                             f"{self.item.text()}, got {_show(value)}")
        return tuple(self.item.check(f"{key}[{i}]", v) for i, v in enumerate(value))


@dataclass(frozen=True)
class OneOf:
    """A string from a fixed set (for sections whose dataclass lives elsewhere)."""

    names: tuple[str, ...]

    def check(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.names:
            raise ValueError(f"{key} must be one of {', '.join(self.names)}, got {_show(value)}")
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


def _check_model_size(model: Any) -> None:
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


def _check_run(config: RunConfig) -> None:
    """What no single section can check: the sections against each other, and paths that must exist."""
    interface = config.model.interface
    if config.sample.guidance != 1.0 and not interface.conditional:
        raise ValueError(f"sample.guidance = {config.sample.guidance:g} needs a class- or text-conditional model; "
                         "this one is unconditional (no model.num_classes or model.context_dim): set it to 1")
    if config.train.label_dropout and not interface.conditional:
        raise ValueError(f"train.label_dropout must be 0 for a network that takes no class or text condition (it "
                         f"drops conditions for classifier-free guidance), got {config.train.label_dropout}")
    if config.train.objective and config.train.objective not in OBJECTIVE_NAMES:
        raise ValueError(f"train.objective must be \"\" (the network's own) or one of {', '.join(OBJECTIVE_NAMES)}, "
                         f"got {_show(config.train.objective)}")
    if not config.out.strip() or any(ord(c) < 32 for c in config.out):
        raise ValueError(f"out must name a run folder (no control characters), got {_show(config.out)}")


def check_paths(config: RunConfig) -> None:
    """The files a training run reads must exist: checked before any work. (Sampling a finished run
    reads no data; its autoencoder, if any, is checked by unnoise.latent when it is loaded.)"""
    for key, path in (("data.path", config.data.path), ("latent.autoencoder", config.latent.autoencoder),
                      ("train.init", config.train.init)):
        if path and not Path(path).exists():
            raise ValueError(f"{key} = {path!r} does not exist")


def _closest(key: str, valid: list[str]) -> str:
    """A suggestion: a valid key spelled by the initials of `key` (learning_rate -> lr), else the
    most similar by difflib."""
    key = str(key)[:100]
    initials = "".join(word[:1] for word in key.split("_"))
    match = [v for v in valid if v == initials] or difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert a TOML value to a field's annotated type (int, float, bool, str, tuples)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | vars(types) | {"Any": Any})  # field annotations are strings
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        for option in options:
            try:
                return _coerce(value, option, where)
            except ValueError:
                continue
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
        raise ValueError(f"{where}: expected {names}, got {_show(value)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ValueError(f"{where}: expected nothing, got {_show(value)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {_show(value)}")
        inner = typing.get_args(annotation)[0]
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return real().check(where, value)  # a finite float (an integer too large for one is refused)
    if annotation in (int, float, str, bool) and not (isinstance(value, annotation) and
                                                      (annotation is bool or not isinstance(value, bool))):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {_show(value)}")
    return value


def _section(values: Any, where: str) -> dict:
    """A TOML table, or a one-line ValueError saying what it is instead."""
    if isinstance(values, dict):
        return values
    if isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
        raise ValueError(f"[{where}] must be one section of key = value lines, got an array of {len(values)} "
                         f"tables ([[{where}]]); write it once, as [{where}]")
    raise ValueError(f"[{where}] must be a section of key = value lines, got {_show(values)}")


def _convert(values: dict, known: dict, ranges: dict, where: str) -> dict:
    """Each value of a section checked against its range (numbers, sets) or field type, by key."""
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown key {where}.{_key(key)}{_closest(key, list(known))}")
        name = f"{where}.{key}"
        kwargs[key] = ranges[key].check(name, value) if key in ranges else _coerce(value, known[key].type, name)
    return kwargs


def from_dict(cls: type, values: dict, where: str) -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys with the closest valid one."""
    known = {f.name: f for f in fields(cls)}
    return cls(**_convert(_section(values, where), known, RANGES.get(where, {}), where))


def build_model_config(section: dict) -> Any:
    section = dict(_section(section, "model"))
    preset = section.pop("preset", None)
    if not isinstance(preset, str) or preset not in MODEL_PRESETS:
        raise ValueError(f"[model] preset must be one of {', '.join(MODEL_PRESETS)}, got {_show(preset)}"
                         + (_closest(preset, list(MODEL_PRESETS)) if isinstance(preset, str) and preset else ""))
    base = MODEL_PRESETS[preset]()
    known = {f.name: f for f in fields(base)}
    coerced = _convert(section, known, MODEL_RANGES.get(type(base), {}), "model")
    model = replace(base, **coerced)  # the preset's own values, then the overrides, checked together
    _check_model_size(model)
    return model


def _parse_value(raw: str, dotted: str) -> Any:
    """A `--set` value: a TOML value (3, 1e-4, true, "x", [1, 2]), else the text itself."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    except RecursionError:
        raise ValueError(f"--set {dotted}: the value is nested too deeply") from None
    if set(parsed) != {"v"}:
        raise ValueError(f"--set {dotted}: the value must be one TOML value on one line, got {_show(raw)}")
    return parsed["v"]


def _set(tree: dict, dotted: str, raw: str) -> None:
    """Apply one `--set section.key=value` to the raw TOML tree (value parsed as TOML, else a string)."""
    path = dotted.split(".")
    if not all(path):
        raise ValueError(f"--set needs section.key=value (or out=...), got {_show(dotted)}")
    value = _parse_value(raw, dotted)
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {part!r} is not a section")
    node[path[-1]] = value


SECTIONS = ("data", "model", "diffusion", "loss", "train", "sample", "text", "latent", "autoencoder", "distill",
            "out")


def _check_depth(tree: dict) -> None:
    """No value nested deeper than MAX_DEPTH (walked without recursion: copying, printing and
    checking a deeper tree would exhaust Python's stack)."""
    stack = [(tree, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{where[:80]}: nested more than {MAX_DEPTH} levels deep; a config is sections of "
                             "key = value lines")
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{_key(k)}" if where else _key(k), depth + 1) for k, v in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))


def read_toml(path: str | Path) -> dict:
    """A TOML file's tree, or one ValueError naming the file (and the line, for a syntax error)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder, not a TOML file")
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {err.start}): not a TOML file") from None
    except OSError as err:
        raise ValueError(f"config file {path} cannot be read: {err.strerror or err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    except RecursionError:
        raise ValueError(f"{path}: arrays or inline tables nested too deeply") from None


def load_config(path: str | Path | None, overrides: list[str] = (), tree: dict | None = None) -> RunConfig:
    """Read a TOML file (or a ready tree), apply `key=value` overrides, and validate everything."""
    if path is not None:
        tree = read_toml(path)
    elif tree is not None and not isinstance(tree, dict):
        raise ValueError(f"a config tree must be a dict of sections, got {_show(tree)}")
    _check_depth(tree or {})
    tree = copy.deepcopy(tree or {})  # overrides must not reach the caller's dict
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs key=value, got {_show(item)}")
        _set(tree, key.strip(), raw.strip())
    _check_depth(tree)
    for key in tree:
        if key not in SECTIONS:
            raise ValueError(f"unknown section [{_key(key)}]{_closest(key, list(SECTIONS))}")
        if key != "out":
            _section(tree[key], key)
    if "model" not in tree or "data" not in tree:
        raise ValueError("a config needs a [data] and a [model] section")
    config = RunConfig(
        data=from_dict(DataConfig, tree["data"], "data"),
        model=build_model_config(tree["model"]),
        diffusion=from_dict(DiffusionConfig, tree.get("diffusion", {}), "diffusion"),
        loss=from_dict(LossConfig, tree.get("loss", {}), "loss"),
        train=from_dict(TrainConfig, tree.get("train", {}), "train"),
        sample=from_dict(SampleConfig, tree.get("sample", {}), "sample"),
        text=from_dict(TextConfig, tree.get("text", {}), "text"),
        latent=from_dict(LatentConfig, tree.get("latent", {}), "latent"),
        autoencoder=from_dict(AutoencoderLossConfig, tree.get("autoencoder", {}), "autoencoder"),
        distill=from_dict(DistillConfig, tree.get("distill", {}), "distill"),
        out=_coerce(tree.get("out", "runs/default"), str, "out"),
        tree=tree,
    )
    _check_run(config)
    return config


def to_dict(config: Any) -> Any:
    """A JSON-ready view of a (nested) config, for reading (runs are rebuilt from `tree`)."""
    if is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "tree"}
    if isinstance(config, tuple):
        return list(config)
    return config
