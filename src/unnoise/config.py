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
Unknown keys are refused with the closest valid key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from unnoise.data import DataConfig
from unnoise.grids import SPACINGS
from unnoise.losses import AutoencoderLossConfig, LossConfig
from unnoise.models import MODEL_PRESETS
from unnoise.samplers import SAMPLERS
from unnoise.text import TextConfig


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: str = "edm"  # a preset of unnoise.schedules (e.g. ddpm, cosine, edm, flow, ddpm-ztsnr)
    parameterization: str = "edm"  # eps | x0 | v | velocity | edm
    sigma_data: float = 0.5  # data std for EDM preconditioning


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
    seed: int = 0  # seeds data order, noise, times and initial weights
    log_every: int = 50  # steps between log lines
    sample_every: int = 0  # steps between sample grids (EMA weights, fixed seed); 0 = at the end only
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 2  # complete checkpoints kept
    max_nonfinite: int = 10  # stop after this many non-finite losses or gradients in a row
    label_dropout: float = 0.0  # probability of replacing a label by the null label (classifier-free guidance)
    objective: str = ""  # what the run optimises (unnoise.objectives.OBJECTIVES); "": the one its network asks for

    def __post_init__(self):
        _at_least(self, "train", steps=1, batch_size=1, log_every=1, max_nonfinite=1, keep_checkpoints=1,
                  warmup_steps=0, sample_every=0, checkpoint_every=0)
        _in_range(self, "train", lr=(0, math.inf, False), weight_decay=(0, math.inf, True),
                  grad_clip=(0, math.inf, True), ema_decay=(0, 1, True), label_dropout=(0, 1, True),
                  max_seconds=(0, math.inf, True))
        if self.ema_decay >= 1 or self.label_dropout >= 1:
            raise ValueError(f"train.ema_decay and train.label_dropout must be < 1, got {self.ema_decay}, "
                             f"{self.label_dropout}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"train.dtype must be float32 or float64, got {self.dtype!r}")


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

    prompts: tuple[str, ...] = ()  # text models: the grid cycles through these; () = the data set's first captions

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sample.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"sample.spacing must be one of {', '.join(SPACINGS)}, got {self.spacing!r}")
        _at_least(self, "sample", steps=1, n=1)
        _in_range(self, "sample", guidance=(-math.inf, math.inf, True), guidance_rescale=(0, 1, True))
        lo_hi = self.guidance_interval
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= 1:
            raise ValueError(f"sample.guidance_interval must be [lo, hi] with 0 <= lo < hi <= 1, got {list(lo_hi)}")


@dataclass(frozen=True)
class LatentConfig:
    autoencoder: str = ""  # an autoencoder run or checkpoint folder: diffuse in its latent space; "" = pixels
    sha256: str = ""  # of its weights, recorded by training: a mismatched autoencoder is refused


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
    out: str = "runs/default"  # run folder: log, pictures, checkpoints
    tree: dict = field(default_factory=dict, compare=False, repr=False)  # the TOML it came from, overrides applied


def _at_least(section: Any, name: str, **minimum: int) -> None:
    """Each field >= its minimum (whole numbers)."""
    for key, low in minimum.items():
        value = getattr(section, key)
        if value < low:
            raise ValueError(f"{name}.{key} must be >= {low}, got {value}")


def _in_range(section: Any, name: str, **bounds: tuple[float, float, bool]) -> None:
    """Each field finite and within (lo, hi] or [lo, hi] (the flag: lo allowed)."""
    for key, (lo, hi, closed) in bounds.items():
        value = getattr(section, key)
        if not math.isfinite(value) or value < lo or (value == lo and not closed) or value > hi:
            what = f"{'[' if closed else '('}{lo:g}, {hi:g}]" if math.isfinite(hi) else f"{'>=' if closed else '>'} {lo:g}"
            raise ValueError(f"{name}.{key} must be a finite number {'in ' if math.isfinite(hi) else ''}{what}, "
                             f"got {value}")


def _check_run(config: RunConfig) -> None:
    """What no single section can check: the sections against each other, and paths that must exist."""
    interface = config.model.interface
    if config.sample.guidance != 1.0 and not interface.conditional:
        raise ValueError(f"sample.guidance = {config.sample.guidance:g} needs a class- or text-conditional model; "
                         "this one is unconditional (set it to 1)")
    if config.train.label_dropout and not interface.conditional:
        raise ValueError(f"train.label_dropout must be 0 for a network that takes no class or text condition (it "
                         f"drops conditions for classifier-free guidance), got {config.train.label_dropout}")


def check_paths(config: RunConfig) -> None:
    """The files a training run reads must exist: checked before any work. (Sampling a finished run
    reads no data; its autoencoder, if any, is checked by unnoise.latent when it is loaded.)"""
    for key, path in (("data.path", config.data.path), ("latent.autoencoder", config.latent.autoencoder)):
        if path and not Path(path).exists():
            raise ValueError(f"{key} = {path!r} does not exist")


def _closest(key: str, valid: list[str]) -> str:
    """A suggestion: a valid key spelled by the initials of `key` (learning_rate -> lr), else the
    most similar by difflib."""
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
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {value!r} fits none of {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ValueError(f"{where}: expected nothing, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = typing.get_args(annotation)[0]
        return tuple(_coerce(v, inner, where) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not (isinstance(value, annotation) and
                                                      (annotation is bool or not isinstance(value, bool))):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: dict, where: str) -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys with the closest valid one."""
    if not isinstance(values, dict):
        raise ValueError(f"[{where}] must be a section of key = value lines, got {values!r:.60}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown key {where}.{key}{_closest(key, list(known))}")
        f = known[key]
        kwargs[key] = _coerce(value, f.type, f"{where}.{key}")
    return cls(**kwargs)


def build_model_config(section: dict) -> Any:
    if not isinstance(section, dict):
        raise ValueError(f"[model] must be a section of key = value lines, got {section!r:.60}")
    section = dict(section)
    preset = section.pop("preset", None)
    if preset not in MODEL_PRESETS:
        raise ValueError(f"[model] preset must be one of {', '.join(MODEL_PRESETS)}, got {preset!r}"
                         + (_closest(str(preset), list(MODEL_PRESETS)) if preset else ""))
    base = MODEL_PRESETS[preset]()
    known = {f.name: f for f in fields(base)}
    coerced = {}
    for key, value in section.items():
        if key not in known:
            raise ValueError(f"unknown key model.{key}{_closest(key, list(known))}")
        coerced[key] = _coerce(value, known[key].type, f"model.{key}")
    return replace(base, **coerced)  # the preset's own values, then the overrides, checked together


def _set(tree: dict, dotted: str, raw: str) -> None:
    """Apply one `--set section.key=value` to the raw TOML tree (value parsed as TOML, else a string)."""
    path = dotted.split(".")
    if not all(path):
        raise ValueError(f"--set needs section.key=value (or out=...), got {dotted!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {part!r} is not a section")
    node[path[-1]] = value


SECTIONS = ("data", "model", "diffusion", "loss", "train", "sample", "text", "latent", "autoencoder", "out")


def load_config(path: str | Path | None, overrides: list[str] = (), tree: dict | None = None) -> RunConfig:
    """Read a TOML file (or a ready tree), apply `key=value` overrides, and validate everything."""
    tree = copy.deepcopy(tree or {})  # overrides must not reach the caller's dict
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        try:
            tree = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML: {err}") from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs key=value, got {item!r}")
        _set(tree, key.strip(), raw.strip())
    for key in tree:
        if key not in SECTIONS:
            raise ValueError(f"unknown section [{key}]{_closest(key, list(SECTIONS))}")
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
        out=_coerce(tree.get("out", "runs/default"), str, "out"),
        tree=tree,
    )
    if not config.out:
        raise ValueError("out must name a run folder, got an empty string")
    _check_run(config)
    return config


def to_dict(config: Any) -> Any:
    """A JSON-ready view of a (nested) config, for reading (runs are rebuilt from `tree`)."""
    if is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "tree"}
    if isinstance(config, tuple):
        return list(config)
    return config
