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
finite number) and a range (unnoise.config_ranges), checked when the config is loaded, `--set`
overrides included; every mistake is one ValueError of one line naming the key, the value and what
is allowed. Paths are checked for existence only when a run starts (check_paths).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from unnoise.config_ranges import MAX_DEPTH, MODEL_RANGES, RANGES, check_model_size, check_numbers, real, show, toml_key
from unnoise.data import DataConfig
from unnoise.grids import SPACINGS
from unnoise.losses import AutoencoderLossConfig, LossConfig
from unnoise.models import (
    MODEL_PRESETS,
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
                             f"-ztsnr), got {show(self.schedule)}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"diffusion.parameterization must be one of {', '.join(PARAMETERIZATIONS)}, "
                             f"got {show(self.parameterization)}")
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
            raise ValueError(f"train.dtype must be float32 or float64, got {show(self.dtype)}")


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
            raise ValueError(f"sample.sampler must be one of {', '.join(SAMPLERS)}, got {show(self.sampler)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"sample.spacing must be one of {', '.join(SPACINGS)}, got {show(self.spacing)}")
        check_numbers(self, "sample")
        if not 0 <= self.hint_noise <= 1:
            raise ValueError(f"sample.hint_noise must lie in [0, 1], got {show(self.hint_noise)}")
        lo_hi = self.guidance_interval
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= 1:
            raise ValueError(f"sample.guidance_interval must be [lo, hi] with 0 <= lo < hi <= 1, "
                             f"got {show(list(lo_hi))}")


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
            raise ValueError(f"distill.solver must be one of {', '.join(SOLVERS)}, got {show(self.solver)}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distill.distance must be one of {', '.join(DISTANCES)}, got {show(self.distance)}")
        if self.sampler and self.sampler not in SAMPLERS:
            raise ValueError(f"distill.sampler must be \"\" or one of {', '.join(SAMPLERS)}, got {show(self.sampler)}")
        if "\0" in self.teacher:
            raise ValueError(f"distill.teacher must be a path, got {show(self.teacher)} (a NUL character)")
        check_numbers(self, "distill")


@dataclass(frozen=True)
class LatentConfig:
    autoencoder: str = ""  # an autoencoder run or checkpoint folder: diffuse in its latent space; "" = pixels
    sha256: str = ""  # of its weights, recorded by training: a mismatched autoencoder is refused

    def __post_init__(self):
        if "\0" in self.autoencoder:
            raise ValueError(f"latent.autoencoder must be a path, got {show(self.autoencoder)} (a NUL character)")
        if self.sha256 and not re.fullmatch("[0-9a-f]{64}", self.sha256):
            raise ValueError(f"latent.sha256 must be \"\" or 64 lowercase hex digits (a SHA-256 digest), "
                             f"got {show(self.sha256)}")


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
                         f"got {show(config.train.objective)}")
    if not config.out.strip() or any(ord(c) < 32 for c in config.out):
        raise ValueError(f"out must name a run folder (no control characters), got {show(config.out)}")


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
        raise ValueError(f"{where}: expected {names}, got {show(value)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ValueError(f"{where}: expected nothing, got {show(value)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {show(value)}")
        inner = typing.get_args(annotation)[0]
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return real().check(where, value)  # a finite float (an integer too large for one is refused)
    if annotation in (int, float, str, bool) and not (isinstance(value, annotation) and
                                                      (annotation is bool or not isinstance(value, bool))):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {show(value)}")
    return value


def _section(values: Any, where: str) -> dict:
    """A TOML table, or a one-line ValueError saying what it is instead."""
    if isinstance(values, dict):
        return values
    if isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
        raise ValueError(f"[{where}] must be one section of key = value lines, got an array of {len(values)} "
                         f"tables ([[{where}]]); write it once, as [{where}]")
    raise ValueError(f"[{where}] must be a section of key = value lines, got {show(values)}")


def _convert(values: dict, known: dict, ranges: dict, where: str) -> dict:
    """Each value of a section checked against its range (numbers, sets) or field type, by key."""
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown key {where}.{toml_key(key)}{_closest(key, list(known))}")
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
        raise ValueError(f"[model] preset must be one of {', '.join(MODEL_PRESETS)}, got {show(preset)}"
                         + (_closest(preset, list(MODEL_PRESETS)) if isinstance(preset, str) and preset else ""))
    base = MODEL_PRESETS[preset]()
    known = {f.name: f for f in fields(base)}
    coerced = _convert(section, known, MODEL_RANGES.get(type(base), {}), "model")
    model = replace(base, **coerced)  # the preset's own values, then the overrides, checked together
    check_model_size(model)
    return model


def pin_model(tree: dict, resolved: Any) -> dict:
    """A checkpoint's tree with its model pinned to the fields it was built with. A run names a preset,
    and a preset's values may change in a later version (wavenet_digits gained its masked path); the
    run's resolved fields (config.json's "resolved") replace them, and a field the model's class gained
    since takes the class default, which is by rule the behaviour from before the field existed."""
    model = tree.get("model")
    built = resolved.get("model") if isinstance(resolved, dict) else None
    if not isinstance(model, dict) or not isinstance(built, dict) or model.get("preset") not in MODEL_PRESETS:
        return tree  # nothing to pin: build_model_config names what is wrong
    pinned = {}
    for f in fields(type(MODEL_PRESETS[model["preset"]]())):
        if f.name in built:
            pinned[f.name] = built[f.name]
        elif f.default is not dataclasses.MISSING:
            pinned[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            pinned[f.name] = f.default_factory()
    return {**tree, "model": {"preset": model["preset"], **pinned}}


def _parse_value(raw: str, dotted: str) -> Any:
    """A `--set` value: a TOML value (3, 1e-4, true, "x", [1, 2]), else the text itself."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    except RecursionError:
        raise ValueError(f"--set {dotted}: the value is nested too deeply") from None
    if set(parsed) != {"v"}:
        raise ValueError(f"--set {dotted}: the value must be one TOML value on one line, got {show(raw)}")
    return parsed["v"]


def _set(tree: dict, dotted: str, raw: str) -> None:
    """Apply one `--set section.key=value` to the raw TOML tree (value parsed as TOML, else a string)."""
    path = dotted.split(".")
    if not all(path):
        raise ValueError(f"--set needs section.key=value (or out=...), got {show(dotted)}")
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
            stack.extend((v, f"{where}.{toml_key(k)}" if where else toml_key(k), depth + 1) for k, v in node.items())
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
        raise ValueError(f"a config tree must be a dict of sections, got {show(tree)}")
    _check_depth(tree or {})
    tree = copy.deepcopy(tree or {})  # overrides must not reach the caller's dict
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs key=value, got {show(item)}")
        _set(tree, key.strip(), raw.strip())
    _check_depth(tree)
    for key in tree:
        if key not in SECTIONS:
            raise ValueError(f"unknown section [{toml_key(key)}]{_closest(key, list(SECTIONS))}")
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
