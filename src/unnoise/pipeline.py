"""The one way to sample a trained model: load once, sample many.

    pipe = Pipeline.load("runs/demo")                               # network (EMA), schedule, data space, ...
    x = pipe.sample(8, label=3, sampler="dpmpp_2m", steps=10)       # (8, *data shape), in data space
    x = pipe.sample(4, prompts=["a boot"], guidance=4, seed=1)      # a text model
    x = pipe.sample(4, x=x_t, t_start=0.5)                          # start from a given x_t at t = 0.5

Everything a run needs to sample is resolved once in `load`: the config, the network with its EMA
weights, schedule and parameterisation (as the denoiser samplers see), the data space (pixels, an
autoencoder's latents decoded on the way out, or a point set's zero-centre subspace, which every
sampler state is projected onto and which draws a sample's atom count) and an optional noise-aware
classifier; a text model's prompts are encoded on first use and kept. `sample` then composes the
guidance wrappers around the denoiser and calls a sampler (unnoise.samplers) batch by batch. Sample i draws its noise from its own generator, seeded by
(seed, i): the same seed gives the same sample i whatever the batch size. Every consumer goes
through here: `unnoise sample`, `unnoise eval`, the grids written during training, scripts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from unnoise.centred import CentredSpace
from unnoise.checkpoint import load_checkpoint, run_config
from unnoise.classifier import NoisyClassifier, load_classifier
from unnoise.conditioning import Condition, null_labels
from unnoise.config import RunConfig, SampleConfig
from unnoise.data import modality_of, rendering_of
from unnoise.device import resolve_device
from unnoise.grids import time_grid
from unnoise.guidance import SAME, ClassifierFreeGuidance, ClassifierGuidance
from unnoise.latent import LatentSpace, PixelSpace, space_for
from unnoise.models import build_model
from unnoise.models.interface import ModelInterface
from unnoise.noise import per_sample_generators, randn_like
from unnoise.parameterization import NetworkDenoiser, Parameterization, parameterization_of
from unnoise.samplers import StepInfo, get_sampler
from unnoise.samplers.steps import path_grid
from unnoise.schedules import Schedule, get_schedule
from unnoise.text import CaptionBank, load_text_encoder, prompt_bank

SAMPLE_VALUES_PER_BATCH = 2**17  # the default batch holds about this many sample values (bounded memory)
NOISING_STREAM = 1  # add_noise's generators: apart from the samplers' (stream 0) for the same seed
PROMPT_BANKS = 16  # encoded prompt sets kept per pipeline (a server sees many)


@dataclass(frozen=True)
class Settings:
    """How to sample: the run's [sample] section, with what a caller overrides."""

    sampler: str  # a name in unnoise.samplers.SAMPLERS
    steps: int  # sampler steps
    spacing: str  # time-grid spacing (unnoise.grids)
    guidance: float  # classifier-free guidance scale (1: none)
    guidance_rescale: float  # phi of Lin et al. 2024
    guidance_interval: tuple[float, float]  # guide only for t in (lo, hi]
    seed: int  # sample i draws from the generator of (seed, i)
    classifier_scale: float = 1.0  # classifier guidance scale, with a classifier
    options: dict = field(default_factory=dict)  # the sampler's own options (eta, churn, rtol, ...)


def settings_of(sc: SampleConfig) -> Settings:
    """The settings of a run's [sample] section."""
    return Settings(sc.sampler, sc.steps, sc.spacing, sc.guidance, sc.guidance_rescale, tuple(sc.guidance_interval),
                    sc.seed)


DEFAULT_SETTINGS = settings_of(SampleConfig())  # a network from elsewhere, unless told otherwise


@dataclass
class Pipeline:
    denoiser: NetworkDenoiser  # the network as samplers see it: denoise(x_t, t, cond) -> x0_hat
    interface: ModelInterface  # what the network takes: sample shape, classes, text, hints
    defaults: Settings  # how to sample when a call says nothing (a run's [sample] section)
    device: torch.device
    space: PixelSpace | LatentSpace | CentredSpace = field(default_factory=PixelSpace)  # decode() maps to data
    modality: str = "image"  # what a sample is (unnoise.modality): "image", "points", "signal", "audio", ...
    rendering: dict = field(default_factory=dict)  # what its writer needs besides x (a sample rate, elements)
    config: RunConfig | None = None  # the run it came from (None: a network from elsewhere)
    source: str = ""  # the checkpoint it came from
    step: int = 0  # its training step
    classifier: NoisyClassifier | None = None  # for classifier guidance
    _banks: dict = field(default_factory=dict, repr=False)  # prompts -> encoded CaptionBank

    # ---- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, run: str | Path, device: str | torch.device | None = None,
             classifier: str | Path | None = None) -> Pipeline:
        """A run folder or checkpoint folder (its EMA weights); `classifier`: a noise-aware classifier run."""
        ckpt = load_checkpoint(run, with_state=False)
        config = run_config(ckpt)
        return cls.from_weights(config, ckpt.ema, device, source=str(ckpt.path), step=ckpt.step, classifier=classifier)

    @classmethod
    def from_weights(cls, config: RunConfig, weights: dict[str, Tensor], device: str | torch.device | None = None, *,
                     source: str = "", step: int = 0, classifier: str | Path | None = None) -> Pipeline:
        """A pipeline over weights in memory (what training writes its sample grids with)."""
        if config.model.interface.output != "denoiser":
            raise ValueError(f"{source or config.out} holds a {config.model.interface.output} network, not a "
                             "diffusion model" + (": use it with --classifier" if
                                                  config.model.interface.output == "logits" else ""))
        device = resolve_device(device)
        space = space_for(config, device)  # checked before any weights are placed
        net = build_model(config.model)
        net.load_state_dict(weights)
        d = config.diffusion
        schedule = get_schedule(d.schedule)
        pipe = cls.from_network(net, parameterization_of(d, schedule), schedule,
                                config.model.interface, device, defaults=settings_of(config.sample), space=space,
                                modality=modality_of(config.data), rendering=rendering_of(config.data), config=config,
                                source=source, step=step)
        if classifier is not None:
            pipe.classifier = _checked_classifier(pipe, load_classifier(classifier, device))
        return pipe

    @classmethod
    def from_network(cls, net: torch.nn.Module, parameterization: Parameterization, schedule: Schedule,
                     interface: ModelInterface, device: str | torch.device | None = None, *,
                     defaults: Settings | None = None, **fields_: Any) -> Pipeline:
        """A pipeline over any network net(x_t, t, cond) that predicts `parameterization`'s target on
        `schedule` (e.g. a peer's model through unnoise.from_diffusers); it is moved to `device` and
        frozen. defaults: how to sample (None: DEFAULT_SETTINGS); fields_: the other fields."""
        if interface.output != "denoiser":
            raise ValueError(f"a pipeline samples a denoiser network, not one with output {interface.output!r}")
        device = resolve_device(device)
        net.to(device).eval().requires_grad_(False)
        defaults = defaults or DEFAULT_SETTINGS
        _validate(defaults, interface)
        return cls(NetworkDenoiser(net, parameterization, schedule), interface, defaults, device, **fields_)

    # ---- what it is ---------------------------------------------------------------------------

    @property
    def schedule(self) -> Schedule:
        return self.denoiser.schedule

    @property
    def classes(self) -> int:
        """Classes a sample can be asked for: the model's, or the classifier's."""
        return self.classifier.classes if self.classifier else self.interface.num_classes

    def settings(self, **overrides: Any) -> Settings:
        """The default settings with `overrides` (None values keep the default)."""
        known = {f.name for f in fields(Settings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}; known: {', '.join(sorted(known))}")
        settings = replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        _validate(settings, self.interface)
        return settings

    # ---- the data space -----------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Data (n, *data shape) into the space the network diffuses in."""
        return self.space.encode(x.to(self.device))

    def decode(self, z: Tensor) -> Tensor:
        return self.space.decode(z)

    def add_noise(self, x0: Tensor, t: float, seed: int = 0, first: int = 0) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps ~ q(x_t | x0); eps of sample i from its own generator of
        (seed, first + i), a stream apart from the one `sample` draws from with the same seed."""
        eps = randn_like(x0, per_sample_generators(seed, len(x0), start=first, stream=NOISING_STREAM))
        return self.schedule.noised(x0, t, eps)

    # ---- sampling -----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, label: int | None = None, labels: Tensor | None = None,
               prompts: list[str] | tuple[str, ...] | None = None, cond: Condition | None = None,
               sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
               guidance: float | None = None, guidance_rescale: float | None = None,
               guidance_interval: tuple[float, float] | None = None, classifier_scale: float | None = None,
               seed: int | None = None, options: dict | None = None, x: Tensor | None = None,
               t_start: float | None = None, times: Tensor | None = None, batch_size: int | None = None,
               callback: Callable[[BatchStep], Tensor | None] | None = None, progress: bool | None = None,
               first: int = 0, wrap: Callable | None = None, decode: bool = True) -> Tensor:
        """n samples (n, *data shape) in data space, on the CPU.

        label: one class for every sample; labels: (n,) one per sample; neither on a class-conditional
        model (or with a classifier): sample i shows class (first + i) mod classes. prompts: a text
        model's prompts, sample i uses prompt (first + i) mod len(prompts) ("" is unconditional; None:
        the run's [sample] prompts). cond: any further condition of n rows (e.g. an image condition),
        kept in both branches of guidance. sampler, steps, spacing, guidance (classifier-free scale),
        guidance_rescale, guidance_interval, classifier_scale, seed, options (the sampler's own): None
        keeps the run's [sample] setting. x: a start x_{t_start} (n, *model shape) in the space the
        network diffuses in (see encode, add_noise); t_start: its time (needs x); times: an explicit
        decreasing grid instead of steps and spacing (its first time is t_start), ending at 0, or above
        0 for part of a path (with decode=False: the state x at times[-1] is returned).
        batch_size: samples per batch (None: about SAMPLE_VALUES_PER_BATCH values). callback: sees
        every step of every batch (a BatchStep) and may return a replacement x. progress: a bar (None:
        on a terminal). first: sample indices start here (seeds, classes and prompts follow the
        index). wrap(denoise): wraps the final denoiser of each batch (e.g. to count calls).
        decode: False returns the samples in the space the network diffuses in (a latent model's
        latents, undecoded; e.g. to train on them).
        """
        s = self.settings(sampler=sampler, steps=steps, spacing=spacing, guidance=guidance,
                          guidance_rescale=guidance_rescale, guidance_interval=guidance_interval,
                          classifier_scale=classifier_scale, seed=seed, options=options)
        if times is not None and t_start is None:
            t_start = float(torch.as_tensor(times).flatten()[0])
        cond = self.space.complete(cond, n, s.seed, first)  # e.g. a molecule's atom count, drawn per sample
        plan = self._plan(n, label, labels, prompts, cond, x, t_start, batch_size, first)
        grid = self._grid(s, t_start, times)
        if decode and grid[-1] > 0:
            raise ValueError(f"times ends at t = {grid[-1].item():g} > 0, where x is still noisy: pass decode=False "
                             "for the state there")
        out = []
        with tqdm(total=n, desc=f"sampling ({s.sampler}, {len(grid) - 1} steps)", unit="sample", leave=False,
                  disable=(not progress) if progress is not None else None) as bar:
            for lo in range(0, n, plan.batch_size):
                hi = min(n, lo + plan.batch_size)
                x0 = self._batch(plan, s, grid, range(first + lo, first + hi), lo, callback, wrap, bar)
                out.append((self.space.decode(x0) if decode else x0).cpu())
                bar.update(hi - lo)
        return torch.cat(out)

    def conditioned(self, n: int, *, label: int | None = None, labels: Tensor | None = None,
                    prompts: list[str] | tuple[str, ...] | None = None, cond: Condition | None = None,
                    guidance: float | None = None, guidance_rescale: float | None = None,
                    guidance_interval: tuple[float, float] | None = None,
                    first: int = 0) -> tuple[Callable, Condition | None]:
        """(denoise, cond): the denoiser as `sample` composes it (guidance included) and the condition
        of its n samples, for algorithms that call the denoiser themselves (e.g. inversion). The
        arguments mean what they mean to `sample`."""
        s = self.settings(guidance=guidance, guidance_rescale=guidance_rescale, guidance_interval=guidance_interval)
        cond = self.space.complete(cond, n, s.seed, first)
        plan = self._plan(n, label, labels, prompts, cond, None, None, None, first)
        condition, null = self._conditions(plan, 0, range(first, first + n))
        return self._denoiser(s, null, None), condition

    def _grid(self, s: Settings, t_start: float | None, times: Tensor | None) -> Tensor:
        """The time grid: the one given, or steps and spacing from t_start (1 by default), checked to
        start exactly at t_start (index spacings of discrete schedules round it to their grid)."""
        if times is not None:
            grid = torch.as_tensor(times, dtype=torch.float64).flatten()
            path_grid(self.schedule, grid)  # strictly decreasing, in [0, 1]
            if t_start is not None and abs(grid[0].item() - t_start) > 1e-12:
                raise ValueError(f"times starts at {grid[0].item():g}, t_start is {t_start:g}: give one of them")
            return grid
        t_max = 1.0 if t_start is None else float(t_start)
        if not self.schedule.t_min < t_max <= 1:
            raise ValueError(f"t_start must lie in ({self.schedule.t_min:g}, 1], got {t_start}")
        grid = time_grid(self.schedule, s.steps, s.spacing, t_max=t_max)
        if abs(grid[0].item() - t_max) > 1e-12:
            raise ValueError(f"the {s.spacing!r} grid of {s.steps} steps on schedule {self.schedule.name!r} starts at "
                             f"t = {grid[0].item():g}, not at t_start = {t_max:g}: use the karras or logsnr spacing, "
                             "or pass times")
        return grid

    def _plan(self, n, label, labels, prompts, cond, x, t_start, batch_size, first) -> _Plan:
        """Check the request whole, before any sampling work."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        shape = self.interface.sample_shape
        if x is not None and t_start is None:
            raise ValueError("x needs t_start (or times): x is the state x_t at time t_start")
        if x is not None and tuple(x.shape) != (n, *shape):
            raise ValueError(f"x must have shape {(n, *shape)} (n samples in the network's space), got {tuple(x.shape)}")
        if x is None and t_start is not None and t_start < 1:
            raise ValueError(f"t_start = {t_start} needs x: below t = 1 the start is not pure noise")
        if cond is not None and (not isinstance(cond, Condition) or len(cond) != n):
            raise ValueError(f"cond must be a Condition of n = {n} rows, got {type(cond).__name__} of "
                             f"{len(cond) if isinstance(cond, Condition) else '?'} rows")
        hint = self.interface.hint_channels
        if hint and (cond is None or cond.image is None or tuple(cond.image.shape[1:]) != (hint, *shape[1:])):
            raise ValueError(f"this model reads a hint image of {hint} channel(s) at {'x'.join(map(str, shape[1:]))}: "
                             "pass cond=Condition(image=...) (unnoise sample --hint)")
        default = max(1, SAMPLE_VALUES_PER_BATCH // math.prod(shape))
        return _Plan(batch_size or min(n, default), self._labels(n, label, labels, first), self._prompts(prompts),
                     cond, x)

    def per_sample(self, n: int, *, label: int | None = None, labels: Tensor | None = None,
                   prompts: list[str] | tuple[str, ...] | None = None,
                   first: int = 0) -> tuple[Tensor | None, list[str] | None]:
        """Each sample's class label (n,) and prompt (n) as `sample` with these arguments uses them;
        None where the model takes no labels (or none were asked of a text model) or no prompts."""
        chosen, prompts = self._labels(n, label, labels, first), self._prompts(prompts)
        return chosen, None if prompts is None else [prompts[(first + i) % len(prompts)] for i in range(n)]

    def _labels(self, n: int, label: int | None, labels: Tensor | None, first: int) -> Tensor | None:
        """(n,) class labels: those asked for; else on a class-conditional model (or with a classifier)
        the class grid, sample i showing class (first + i) mod classes; else None."""
        if label is not None and labels is not None:
            raise ValueError("give label (one class for all) or labels (one per sample), not both")
        if label is None and labels is None:
            return torch.arange(first, first + n) % self.classes if self.classes and not self.interface.text else None
        if not self.classes:
            text = " (it is text-conditioned: give prompts)" if self.interface.text else ""
            raise ValueError(f"a label was given, but this model takes no class labels{text}")
        if label is not None and not (isinstance(label, int) and 0 <= label < self.classes):
            raise ValueError(f"label must be a class in 0..{self.classes - 1} for this model, got {label!r}")
        labels = torch.full((n,), label) if label is not None else torch.as_tensor(labels).long().flatten()
        if labels.shape != (n,) or int(labels.min()) < 0 or int(labels.max()) >= self.classes:
            raise ValueError(f"labels must be {n} classes in 0..{self.classes - 1}, got {labels.tolist()[:8]}")
        return labels

    def _prompts(self, prompts) -> tuple[str, ...] | None:
        if not self.interface.text:
            if prompts:
                raise ValueError("prompts given, but this model has no text conditioning")
            return None
        if self.config is None:
            raise ValueError("a text-conditioned network samples through its run (Pipeline.load), which names "
                             "its text encoder")
        prompts = tuple(prompts if prompts is not None else self.config.sample.prompts)
        if not prompts:
            raise ValueError("a text-conditioned model needs prompts: pass prompts (--prompt), or set [sample] prompts")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be strings, got {prompts!r}")
        return prompts

    def _bank(self, prompts: tuple[str, ...]) -> CaptionBank:
        """["", *prompts] encoded once (a second sample call with the same prompts pays nothing for
        them); the PROMPT_BANKS most recently used sets are kept."""
        bank = self._banks.pop(prompts, None)
        if bank is None:
            bank = prompt_bank(load_text_encoder(self.config.text), list(prompts)).to(self.device)
        self._banks[prompts] = bank  # now the most recent
        while len(self._banks) > PROMPT_BANKS:
            del self._banks[next(iter(self._banks))]
        return bank

    def _conditions(self, plan: _Plan, lo: int, rows: range) -> tuple[Condition | None, Condition | None]:
        """The condition of one batch (samples `rows`, from row lo of the request) and the null
        condition, one row: the null label and the empty prompt where the model takes them; a
        further condition given by the caller (e.g. an image) is kept in both."""
        index = torch.arange(rows.start, rows.stop)
        labels = plan.labels[lo:lo + len(rows)].to(self.device) if plan.labels is not None else None
        classes = self.interface.num_classes
        null_label = null_labels(classes, 1, self.device) if classes else None
        if plan.prompts is not None:
            bank = self._bank(plan.prompts)
            if classes and labels is None:  # a text model that also takes classes: none asked for
                labels = null_labels(classes, len(rows), self.device)
            cond = bank.cond(1 + index % len(plan.prompts), labels=labels if classes else None)
            null = bank.cond(torch.zeros(1, dtype=torch.long), labels=null_label)
        else:
            cond = Condition(labels=labels) if labels is not None else None
            null = Condition(labels=null_label) if classes else None
        if plan.cond is not None:
            extra = plan.cond[lo:lo + len(rows)].to(self.device)
            cond = _merge(cond, extra)
            null = _merge(null.expand(len(rows)) if null is not None else None, extra)
        return cond, null

    def _denoiser(self, s: Settings, null: Condition | None, wrap: Callable | None):
        """The denoiser with guidance composed around it."""
        denoise = self.denoiser
        if self.interface.conditional and s.guidance != 1.0:
            denoise = ClassifierFreeGuidance(denoise, s.guidance, null, rescale=s.guidance_rescale,
                                             interval=s.guidance_interval)
        if self.classifier is not None:
            model_cond = SAME if self.interface.num_classes else None
            denoise = ClassifierGuidance(denoise, self.classifier, self.schedule, s.classifier_scale, model_cond)
        return wrap(denoise) if wrap is not None else denoise

    def _batch(self, plan: _Plan, s: Settings, times: Tensor, rows: range, lo: int,
               callback: Callable | None, wrap: Callable | None, bar) -> Tensor:
        """Samples `rows` (from row lo of the request), in the space the network diffuses in."""
        cond, null = self._conditions(plan, lo, rows)
        gens = per_sample_generators(s.seed, len(rows), start=rows.start)  # sample i: its own generator
        dtype = next(self.denoiser.net.parameters()).dtype
        if plan.x is None:
            sigma = self.schedule.sigma(times[0].item()).item()
            shape = self.interface.sample_shape
            x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device, dtype) * sigma  # x_T
        else:
            x = plan.x[lo:lo + len(rows)].to(self.device, dtype)
        project = self.space.project if self.space.constrained else None  # a subspace: every state stays in it
        if project is not None:
            x = project(x, cond)

        def step(info: StepInfo) -> Tensor | None:
            bar.set_postfix_str(f"step {info.i + 1}/{len(times) - 1}", refresh=False)
            replaced = callback(BatchStep(info, rows, gens)) if callback is not None else None
            if project is None:
                return replaced
            return project(info.x if replaced is None else replaced, cond)  # == noise drawn in the subspace

        sampler = get_sampler(s.sampler)
        return sampler(self._denoiser(s, null, wrap), self.schedule, x, times, cond=cond, generator=gens,
                       callback=step, **{**self._model_options(sampler), **s.options})

    def _model_options(self, sampler: Callable) -> dict:
        """What the parameterisation tells samplers about the model (a consistency model: its
        boundary sigma_min), for the samplers that take it; the caller's options override these."""
        offered = getattr(self.denoiser.parameterization, "sampler_options", {})
        return {k: v for k, v in offered.items() if k in inspect.signature(sampler).parameters}


@dataclass(frozen=True)
class BatchStep:
    """What a pipeline callback sees after each sampler step of each batch."""

    step: StepInfo  # the sampler's step: i, t, t_next, the state x at t_next, x0_hat at t
    rows: range  # the sample indices of this batch (first + lo .. first + hi - 1)
    generators: list[torch.Generator]  # their per-sample generators (the sampler's own stream)


@dataclass(frozen=True)
class _Plan:
    """A checked sampling request."""

    batch_size: int
    labels: Tensor | None  # (n,) each sample's class, or None
    prompts: tuple[str, ...] | None
    cond: Condition | None  # (n rows) a further condition, or None
    x: Tensor | None  # (n, *model shape) start, or None: x_T drawn from the seeds


def _merge(a: Condition | None, b: Condition) -> Condition:
    """The fields of a and b together (a field given by both is refused)."""
    if a is None:
        return b
    both = [f.name for f in fields(Condition) if getattr(a, f.name) is not None and getattr(b, f.name) is not None]
    if both:
        raise ValueError(f"cond sets {both}, which label, labels or prompts already set")
    return replace(a, **{f.name: getattr(b, f.name) for f in fields(Condition) if getattr(b, f.name) is not None})


def _validate(s: Settings, interface: ModelInterface) -> None:
    params = inspect.signature(get_sampler(s.sampler)).parameters  # get_sampler names the samplers when unknown
    known = sorted(k for k, v in params.items() if v.kind is v.KEYWORD_ONLY and k not in ("cond", "generator", "callback"))
    unknown = sorted(set(s.options) - set(known))
    if unknown:
        raise ValueError(f"{s.sampler} takes no option {', '.join(unknown)}; its options: {', '.join(known) or 'none'}")
    if not isinstance(s.steps, int) or s.steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {s.steps!r}")
    for name in ("guidance", "guidance_rescale", "classifier_scale"):
        value = getattr(s, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if s.guidance != 1.0 and not interface.conditional:
        raise ValueError(f"guidance {s.guidance:g} needs a conditional model; this one is unconditional "
                         "(classifier guidance: give a classifier)")
    if s.classifier_scale < 0:
        raise ValueError(f"classifier_scale must be >= 0, got {s.classifier_scale}")


def _checked_classifier(pipe: Pipeline, classifier: NoisyClassifier) -> NoisyClassifier:
    """A classifier that can guide this model: same schedule, same classes, pixels."""
    if isinstance(pipe.space, LatentSpace):
        raise ValueError("classifier guidance of a latent model needs a classifier of its latents; "
                         "unnoise's classifiers read pixels")
    if pipe.interface.text:
        raise ValueError("classifier guidance needs class labels; this model is text-conditioned")
    if classifier.schedule.name != pipe.schedule.name:
        raise ValueError(f"the classifier was trained on schedule {classifier.schedule.name!r}, the model on "
                         f"{pipe.schedule.name!r}: their times mean different noise levels")
    classes, model_classes = classifier.classes, pipe.interface.num_classes
    if model_classes and model_classes != classes:
        raise ValueError(f"the classifier has {classes} classes, the model {model_classes}")
    return classifier
