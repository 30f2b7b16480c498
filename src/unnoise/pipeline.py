"""The one way to sample a trained model: load once, sample many.

    pipe = Pipeline.load("runs/demo")                               # network (EMA), schedule, data space, ...
    x = pipe.sample(8, label=3, sampler="dpmpp_2m", steps=10)       # (8, *data shape), in data space
    x = pipe.sample(4, prompts=["a boot"], guidance=4, seed=1)      # a text model
    x = pipe.sample(4, x=x_t, t_start=0.5)                          # start from a given x_t at t = 0.5

Everything a run needs to sample is resolved once in `load`: the config, the network with its EMA
weights, schedule and parameterisation (as the denoiser samplers see), the data space (pixels, or
an autoencoder's latents, decoded on the way out), the text encoder and an optional noise-aware
classifier. `sample` then composes the guidance wrappers around the denoiser and calls a sampler
(unnoise.samplers) batch by batch. Sample i draws its noise from its own generator, seeded by
(seed, i): the same seed gives the same sample i whatever the batch size. Every consumer goes
through here: `unnoise sample`, `unnoise eval`, the grids written during training, scripts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from unnoise.checkpoint import load_checkpoint
from unnoise.classifier import NoisyClassifier, load_classifier
from unnoise.conditioning import Condition, null_labels
from unnoise.config import RunConfig, load_config
from unnoise.data import modality_of
from unnoise.grids import time_grid
from unnoise.guidance import SAME, ClassifierFreeGuidance, ClassifierGuidance
from unnoise.latent import LatentSpace, PixelSpace, space_for
from unnoise.models import build_model
from unnoise.models.interface import ModelInterface
from unnoise.noise import per_sample_generators, randn_like
from unnoise.parameterization import NetworkDenoiser, get_parameterization
from unnoise.samplers import Callback, StepInfo, get_sampler
from unnoise.schedules import Schedule, get_schedule
from unnoise.text import CaptionBank, load_text_encoder, prompt_bank

SAMPLE_VALUES_PER_BATCH = 2**17  # the default batch holds about this many sample values (bounded memory)


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


@dataclass
class Pipeline:
    config: RunConfig  # the run's configuration
    denoiser: NetworkDenoiser  # the network (EMA weights) as samplers see it: denoise(x_t, t, cond) -> x0_hat
    space: PixelSpace | LatentSpace  # what the network diffuses in; decode() maps it to data space
    device: torch.device
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
        config = load_config(None, tree=ckpt.config["tree"])
        return cls.from_weights(config, ckpt.ema, device, source=str(ckpt.path), step=ckpt.step, classifier=classifier)

    @classmethod
    def from_weights(cls, config: RunConfig, weights: dict[str, Tensor], device: str | torch.device | None = None, *,
                     source: str = "", step: int = 0, classifier: str | Path | None = None) -> Pipeline:
        """A pipeline over weights in memory (what training writes its sample grids with)."""
        if config.model.interface.output != "denoiser":
            raise ValueError(f"{source or config.out} holds a {config.model.interface.output} network, not a "
                             "diffusion model" + (": use it with --classifier" if
                                                  config.model.interface.output == "logits" else ""))
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        space = space_for(config, device)  # checked before any weights are placed
        net = build_model(config.model)
        net.load_state_dict(weights)
        net.to(device).eval().requires_grad_(False)
        d = config.diffusion
        denoiser = NetworkDenoiser(net, get_parameterization(d.parameterization, d.sigma_data), get_schedule(d.schedule))
        pipe = cls(config, denoiser, space, device, source, step)
        if classifier is not None:
            pipe.classifier = _checked_classifier(pipe, load_classifier(classifier, device))
        return pipe

    # ---- what it is ---------------------------------------------------------------------------

    @property
    def interface(self) -> ModelInterface:
        return self.config.model.interface

    @property
    def schedule(self) -> Schedule:
        return self.denoiser.schedule

    @property
    def modality(self) -> str:
        """What a sample is (unnoise.modality): "image", "points" or "signal"."""
        return modality_of(self.config.data)

    @property
    def classes(self) -> int:
        """Classes a sample can be asked for: the model's, or the classifier's."""
        return self.classifier.net.config.out_channels if self.classifier else self.interface.num_classes

    def settings(self, **overrides: Any) -> Settings:
        """The run's [sample] settings with `overrides` (None values keep the run's)."""
        sc = self.config.sample
        base = Settings(sc.sampler, sc.steps, sc.spacing, sc.guidance, sc.guidance_rescale,
                        tuple(sc.guidance_interval), sc.seed)
        known = {f.name for f in fields(Settings)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}; known: {', '.join(sorted(known))}")
        settings = replace(base, **{k: v for k, v in overrides.items() if v is not None})
        _validate(settings, self.interface, self.classifier is not None)
        return settings

    # ---- the data space -----------------------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Data (n, *data shape) into the space the network diffuses in."""
        return self.space.encode(x.to(self.device))

    def decode(self, z: Tensor) -> Tensor:
        return self.space.decode(z)

    def add_noise(self, x0: Tensor, t: float, seed: int = 0, first: int = 0) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps ~ q(x_t | x0), eps of sample i from the generator of (seed, first + i)."""
        eps = randn_like(x0, per_sample_generators(seed, len(x0), start=first))
        return self.schedule.alpha(t).item() * x0 + self.schedule.sigma(t).item() * eps

    # ---- sampling -----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, label: int | None = None, labels: Tensor | None = None,
               prompts: list[str] | tuple[str, ...] | None = None, sampler: str | None = None,
               steps: int | None = None, spacing: str | None = None, guidance: float | None = None,
               guidance_rescale: float | None = None, guidance_interval: tuple[float, float] | None = None,
               classifier_scale: float | None = None, seed: int | None = None, options: dict | None = None,
               x: Tensor | None = None, t_start: float | None = None, batch_size: int | None = None,
               callback: Callback | None = None, progress: bool | None = None, first: int = 0,
               wrap: Callable | None = None) -> Tensor:
        """n samples (n, *data shape) in data space, on the CPU.

        label: one class for every sample; labels: (n,) one per sample; neither on a class-conditional
        model (or with a classifier): sample i shows class (first + i) mod classes. prompts: a text
        model's prompts, sample i uses prompt (first + i) mod len(prompts) ("" is unconditional; None:
        the run's [sample] prompts). sampler, steps, spacing, guidance (classifier-free scale),
        guidance_rescale, guidance_interval, classifier_scale, seed, options (the sampler's own): None
        keeps the run's [sample] setting. x: a start x_{t_start} (n, *model shape) in the space the
        network diffuses in (see encode, add_noise); t_start: its time (needs x). batch_size: samples
        per batch (None: about SAMPLE_VALUES_PER_BATCH values). callback: sees every step of every
        batch (unnoise.samplers.StepInfo) and may replace x. progress: a bar (None: on a terminal).
        first: sample indices start here (seeds, classes and prompts follow the index). wrap(denoise):
        wraps the final denoiser of each batch (e.g. to count calls).
        """
        s = self.settings(sampler=sampler, steps=steps, spacing=spacing, guidance=guidance,
                          guidance_rescale=guidance_rescale, guidance_interval=guidance_interval,
                          classifier_scale=classifier_scale, seed=seed, options=options)
        plan = self._plan(n, label, labels, prompts, x, t_start, batch_size, s)
        times = time_grid(self.schedule, s.steps, s.spacing, t_max=plan.t_start)
        out = []
        with tqdm(total=n, desc=f"sampling ({s.sampler}, {s.steps} steps)", unit="sample", leave=False,
                  disable=(not progress) if progress is not None else None) as bar:
            for lo in range(0, n, plan.batch_size):
                hi = min(n, lo + plan.batch_size)
                out.append(self._batch(plan, s, times, lo, hi, first, callback, wrap, bar).cpu())
                bar.update(hi - lo)
        return torch.cat(out)

    def _plan(self, n, label, labels, prompts, x, t_start, batch_size, s: Settings) -> _Plan:
        """Check the request whole, before any sampling work."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        shape = self.interface.sample_shape
        if (x is None) != (t_start is None):
            raise ValueError("x and t_start go together: x is the state x_t at time t_start")
        if x is not None:
            if tuple(x.shape) != (n, *shape):
                raise ValueError(f"x must have shape {(n, *shape)} (n samples in the network's space), "
                                 f"got {tuple(x.shape)}")
            if not 0 < t_start <= 1:
                raise ValueError(f"t_start must lie in (0, 1], got {t_start}")
        labels = self._labels(n, label, labels)
        prompts = self._prompts(prompts)
        default = max(1, SAMPLE_VALUES_PER_BATCH // math.prod(shape))
        return _Plan(batch_size or min(n, default), labels, prompts, x, 1.0 if t_start is None else float(t_start))

    def _labels(self, n: int, label: int | None, labels: Tensor | None) -> Tensor | None:
        """(n,) class labels asked for, or None (the class grid, or a model without classes)."""
        if label is not None and labels is not None:
            raise ValueError("give label (one class for all) or labels (one per sample), not both")
        if label is None and labels is None:
            return None
        if not self.classes:
            text = " (it is text-conditioned: give prompts)" if self.interface.text else ""
            raise ValueError(f"a label was given, but this model takes no class labels{text}")
        labels = torch.full((n,), label) if label is not None else torch.as_tensor(labels).long().flatten()
        if labels.shape != (n,) or int(labels.min()) < 0 or int(labels.max()) >= self.classes:
            raise ValueError(f"labels must be {n} classes in 0..{self.classes - 1}, got {labels.tolist()[:8]}")
        return labels

    def _prompts(self, prompts) -> tuple[str, ...] | None:
        if not self.interface.text:
            if prompts:
                raise ValueError("prompts given, but this model has no text conditioning")
            return None
        prompts = tuple(prompts if prompts is not None else self.config.sample.prompts)
        if not prompts:
            raise ValueError("a text-conditioned model needs prompts: pass prompts (--prompt), or set [sample] prompts")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be strings, got {prompts!r}")
        return prompts

    def _bank(self, prompts: tuple[str, ...]) -> CaptionBank:
        """["", *prompts] encoded once per pipeline (a second sample call pays nothing for it)."""
        if prompts not in self._banks:
            encoder = load_text_encoder(self.config.text)
            self._banks[prompts] = prompt_bank(encoder, list(prompts)).to(self.device)
        return self._banks[prompts]

    def _conditions(self, plan: _Plan, lo: int, hi: int, first: int) -> tuple[Condition | None, Condition | None]:
        """The condition of samples lo..hi - 1 and the null condition (one row)."""
        index = torch.arange(first + lo, first + hi)
        labels = plan.labels[lo:hi] if plan.labels is not None else (index % self.classes if self.classes else None)
        labels = labels.to(self.device) if labels is not None else None
        classes = self.interface.num_classes
        null_label = null_labels(classes, 1, self.device) if classes else None
        if plan.prompts is not None:
            bank = self._bank(plan.prompts)
            model_labels = labels if classes else None
            if classes and model_labels is None:
                model_labels = null_labels(classes, hi - lo, self.device)
            cond = bank.cond(1 + index % len(plan.prompts), labels=model_labels)
            return cond, bank.cond(torch.zeros(1, dtype=torch.long), labels=null_label)
        cond = Condition(labels=labels) if labels is not None else None
        return cond, (Condition(labels=null_label) if classes else None)

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

    def _batch(self, plan: _Plan, s: Settings, times: Tensor, lo: int, hi: int, first: int,
               callback: Callback | None, wrap: Callable | None, bar) -> Tensor:
        cond, null = self._conditions(plan, lo, hi, first)
        gens = per_sample_generators(s.seed, hi - lo, start=first + lo)  # sample i: its own generator
        if plan.x is None:
            sigma = self.schedule.sigma(plan.t_start).item()
            shape = self.interface.sample_shape
            x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device) * sigma  # x_T ~ N(0, sigma^2 I)
        else:
            x = plan.x[lo:hi].to(self.device)

        def step(info: StepInfo) -> Tensor | None:
            bar.set_postfix_str(f"step {info.i + 1}/{len(times) - 1}", refresh=False)
            return callback(info) if callback is not None else None

        x0 = get_sampler(s.sampler)(self._denoiser(s, null, wrap), self.schedule, x, times, cond=cond,
                                    generator=gens, callback=step, **s.options)
        return self.space.decode(x0)


@dataclass(frozen=True)
class _Plan:
    """A checked sampling request."""

    batch_size: int
    labels: Tensor | None  # (n,) or None
    prompts: tuple[str, ...] | None
    x: Tensor | None  # (n, *model shape) start, or None: x_T drawn from the seeds
    t_start: float


def _validate(s: Settings, interface: ModelInterface, classifier: bool) -> None:
    get_sampler(s.sampler)  # names the samplers when unknown
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
    classes, model_classes = classifier.net.config.out_channels, pipe.interface.num_classes
    if model_classes and model_classes != classes:
        raise ValueError(f"the classifier has {classes} classes, the model {model_classes}")
    return classifier
