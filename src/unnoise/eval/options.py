"""What an evaluation is asked for (EvalOptions) and the preamble every job shares (open_job): the
checkpoint opened once as a Pipeline, the sampling settings resolved, the feature network and the
reference statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unnoise.config import RunConfig
from unnoise.eval.reference import REFERENCE_SPLITS, Reference, reference
from unnoise.eval.samples import cfg_scale
from unnoise.features import LoadedFeatures, feature_net_for
from unnoise.pipeline import Pipeline

SAMPLE_METRICS = ("fd", "kid", "pr", "acc", "nn")
LIKELIHOOD_METRICS = ("nll", "vlb")
PATH_METRICS = ("straightness",)  # of the probability-flow paths (unnoise.straightness)
METRICS = SAMPLE_METRICS + LIKELIHOOD_METRICS + PATH_METRICS


@dataclass(frozen=True)
class EvalOptions:
    metrics: tuple[str, ...] = ("fd", "kid", "pr", "acc", "nn")  # any of METRICS
    n: int = 10000  # generated samples for the sample metrics
    sampler: str | None = None  # None: the run's [sample] settings
    steps: int | None = None
    spacing: str | None = None
    guidance: float | None = None
    seed: int = 0
    batch_size: int = 500  # samples generated at once
    nll_n: int = 256  # test images for nll and vlb
    trace: str = "rademacher"  # exact | rademacher | gaussian (nll)
    rtol: float = 1e-5  # ODE tolerances (nll)
    atol: float = 1e-5
    vlb_steps: int | None = None  # T of the bound; None: the schedule's own, else 1000
    path_n: int = 256  # trajectories for straightness
    path_steps: int = 100  # their DDIM steps, uniform in t
    features: str | None = None  # a feature network file; None: the packaged one for the run's data
    classifier: str | None = None  # a noise-aware classifier run for classifier guidance
    classifier_scale: float = 1.0  # its guidance scale
    reference: str | None = None  # the split the sample metrics compare with; None: the held-out one

    @property
    def suffix(self) -> str:
        """What result file names carry for a reference other than the default."""
        return f"-{self.reference}" if self.reference else ""

    def __post_init__(self) -> None:
        if self.reference not in (None, *REFERENCE_SPLITS):
            raise ValueError(f"reference must be one of {', '.join(REFERENCE_SPLITS)}, got {self.reference!r}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"unknown metrics {unknown or '(none given)'}; choose from {', '.join(METRICS)}")
        for name in ("n", "batch_size", "nll_n", "path_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.path_steps < 2:
            raise ValueError(f"path_steps must be at least 2, got {self.path_steps}")
        if any(m in self.metrics for m in ("pr",)) and self.n <= 3:
            raise ValueError(f"precision/recall (k = 3) needs n > 3, got {self.n}")


@dataclass
class Job:
    """A checkpoint opened for one evaluation job, with the settings the options resolve to."""

    pipe: Pipeline  # the checkpoint's EMA weights (and the classifier, where the job uses one)
    opts: EvalOptions
    sampler: str
    steps: int
    spacing: str
    guidance: float | None  # classifier-free scale; None for an unconditional model
    feats: LoadedFeatures | None = None  # None: a job without sample metrics
    ref: Reference | None = None

    @property
    def config(self) -> RunConfig:
        return self.pipe.config

    @property
    def path(self) -> Path:
        """The checkpoint folder: results and cached reference statistics go here."""
        return Path(self.pipe.source)

    def sampling(self, **overrides) -> dict:
        """unnoise.eval.samples.draw's sampling arguments: the resolved settings, with overrides."""
        return {"sampler": self.sampler, "steps": self.steps, "spacing": self.spacing, "guidance": self.guidance,
                "seed": self.opts.seed, "batch_size": self.opts.batch_size, **overrides}


def open_job(checkpoint: str | Path, opts: EvalOptions, device=None, *, classifier: bool = False,
             samples: bool = True, check: Callable[[Pipeline], None] | None = None) -> Job:
    """Open the checkpoint (with opts.classifier when `classifier`), resolve sampler, steps, spacing
    and guidance from the options and the run's [sample] settings, run `check` on the pipeline
    (before any slow work), then with `samples` load the feature network and the reference."""
    pipe = Pipeline.load(checkpoint, device, classifier=opts.classifier if classifier and opts.classifier else None)
    conditional = pipe.interface.conditional
    s = pipe.settings(sampler=opts.sampler, steps=opts.steps, spacing=opts.spacing,
                      guidance=cfg_scale(pipe, opts.guidance))
    job = Job(pipe, opts, s.sampler, s.steps, s.spacing, s.guidance if conditional or opts.guidance is not None else None)
    if check is not None:
        check(pipe)
    if samples:
        job.feats = feature_net_for(pipe.config.data, opts.features, pipe.device)
        job.ref = reference(pipe.config, job.feats, job.path, opts.reference)
    return job
