"""A diffusers `UNet2DModel` and its scheduler as an unnoise `Pipeline`.

    import torch
    from diffusers import DDIMScheduler, UNet2DModel
    import unnoise
    from unnoise.diffusers_adapter import diffusers_start, diffusers_times

    unet = UNet2DModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = DDIMScheduler(clip_sample=False)  # or DDIMScheduler.from_pretrained(repo, subfolder="scheduler")
    pipe = unnoise.from_diffusers(unet, scheduler, device="cpu")
    x = pipe.sample(4, steps=25, progress=False)  # unnoise's ddim on its own grid; any sampler, any steps

    times = diffusers_times(scheduler, 25)  # the grid of scheduler.set_timesteps(25), as unnoise times
    noise = torch.randn(4, 3, 8, 8)  # the unit-normal noise a diffusers loop would draw
    x = pipe.sample(4, x=diffusers_start(scheduler, noise, times), times=times, progress=False)
    # x is what diffusers' own loop (x = noise * init_noise_sigma; model -> step over timesteps) returns

How the two conventions meet (diffusers 0.42.1, read from its source):

    time        diffusers' timestep k in [0, T) is our t = (k + 1) / T; its alphas_cumprod[k] is
                alpha(t)^2 (`schedules.from_alphas_cumprod`), and t = 0 is the clean data.
    timestep    DDIM, DDPM, DPM-Solver and UniPC hand the network whole int64 timesteps (rounding
                the ones Karras and Lu spacings give, while stepping with the exact sigma); Euler,
                Euler-ancestral and Heun hand float32 ones, fractional for e.g. 25 linspace steps,
                where their sigma is interpolated linearly in sigma between indices, not in log
                sigma as our schedule is (`TimestepMap`).
    state       Euler, Euler-ancestral and Heun keep x~ = x / alpha and feed the network
                `scale_model_input(x~) = x`; their x_T is noise * init_noise_sigma, which is
                sigma~(t0) for linspace and trailing spacing and sqrt(sigma~(t0)^2 + 1) otherwise, so
                ours is alpha(t0) times it (`diffusers_start`). The other schedulers keep x itself.
    grid        `set_timesteps(N)` grids are not always one of our spacings (DPM-Solver's and UniPC's
                linspace keep N of N + 1 points; Euler's linspace is fractional): `diffusers_times`
                gives the exact grid; `Pipeline.sample(times=...)` samples on it.

`from_diffusers` refuses, in one line, what our samplers do not reproduce (clip_sample, thresholding,
other DPM-Solver algorithms or orders, a final sigma other than zero, class- or text-conditional
UNets, ...). `diffusers_times` refuses a DDIM grid whose step k -> k - T // N does not land on its
next timestep. diffusers is needed only to build the objects passed in; this module never imports it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from unnoise.grids import SPACINGS, time_grid
from unnoise.models.interface import ModelInterface
from unnoise.parameterization import EpsPrediction, Parameterization, VPrediction, X0Prediction
from unnoise.pipeline import DEFAULT_SETTINGS, Pipeline, Settings
from unnoise.schedules import Schedule, from_alphas_cumprod

__all__ = ["from_diffusers", "diffusers_times", "diffusers_start", "timestep_map", "TimestepMap", "DiffusersUNet"]

DEFAULT_STEPS = 50  # diffusers pipelines' usual num_inference_steps, when the scheduler has none set

PREDICTIONS: dict[str, Callable[[], Parameterization]] = {
    "epsilon": EpsPrediction,
    "v_prediction": VPrediction,
    "sample": X0Prediction,
}

# Options every scheduler must have as listed, where its config has them: each changes the arithmetic
# of a step in a way no unnoise sampler reproduces, or gives a grid that does not end at t = 0.
COMMON_REQUIREMENTS: dict[str, tuple] = {
    "prediction_type": tuple(PREDICTIONS),
    "clip_sample": (False,),  # clamps x0_hat to [-clip_sample_range, clip_sample_range] in every step
    "thresholding": (False,),  # dynamic thresholding of x0_hat (Saharia et al. 2022)
    "final_sigmas_type": ("zero",),  # "sigma_min" stops at t = 1/T instead of the data
    "interpolation_type": ("linear",),  # "log_linear" pairs sigmas with timesteps they do not belong to
    "timestep_type": ("discrete",),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_flow_sigmas": (False,),
    "use_dynamic_shifting": (False,),
}


@dataclass(frozen=True)
class SchedulerSpec:
    """What a diffusers scheduler class is in unnoise's terms."""

    sampler: str  # the unnoise sampler that takes the same steps
    ve_view: bool = False  # keeps x~ = x / alpha and stores float32 timesteps (Euler, Heun)
    interleaved: bool = False  # Heun stores every inner timestep and sigma twice
    requires: dict[str, tuple] = field(default_factory=dict)  # config key -> values we reproduce
    options: Callable[[Any], dict] = lambda config: {}  # the sampler's options from the config

    @property
    def whole_timesteps(self) -> bool:
        return not self.ve_view


SCHEDULERS: dict[str, SchedulerSpec] = {
    "DDIMScheduler": SchedulerSpec("ddim", requires={"set_alpha_to_one": (True,)}),  # False stops at t = 1/T
    "DDPMScheduler": SchedulerSpec(
        "ddpm", requires={"variance_type": ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")},
        options=lambda c: {"variance": "large" if "large" in c.variance_type else "small"}),
    "EulerDiscreteScheduler": SchedulerSpec("euler", ve_view=True),
    "EulerAncestralDiscreteScheduler": SchedulerSpec("euler_ancestral", ve_view=True),
    "HeunDiscreteScheduler": SchedulerSpec("heun", ve_view=True, interleaved=True),
    "DPMSolverMultistepScheduler": SchedulerSpec(
        "dpmpp_2m", requires={"algorithm_type": ("dpmsolver++",), "solver_order": (2,),
                              "solver_type": ("midpoint",), "variance_type": (None,)}),
    "UniPCMultistepScheduler": SchedulerSpec(
        "unipc", requires={"solver_type": ("bh2",), "predict_x0": (True,), "solver_order": (1, 2, 3),
                           "disable_corrector": ([], ()), "solver_p": (None,)},
        options=lambda c: {"order": c.solver_order, "lower_order_final": c.lower_order_final}),
}


def _scheduler_spec(scheduler: Any) -> SchedulerSpec:
    """The spec of `scheduler`'s class; ValueError (one line) if the class or its config is not one
    we reproduce."""
    name = type(scheduler).__name__
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name} is not supported; supported: {', '.join(SCHEDULERS)}")
    spec = SCHEDULERS[name]
    config = scheduler.config
    for key, allowed in {**COMMON_REQUIREMENTS, **spec.requires}.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"{name} with {key}={config[key]!r} is not supported by unnoise's {spec.sampler}; "
                             f"supported: {' or '.join(f'{key}={v!r}' for v in allowed)}")
    return spec


def _schedule(scheduler: Any) -> Schedule:
    return from_alphas_cumprod(scheduler.alphas_cumprod, name="diffusers")


def _sigma_primary(config: Any) -> bool:
    """Whether set_timesteps derives timesteps from sigmas (Karras, Lu) rather than sigmas from timesteps."""
    return bool(config.get("use_karras_sigmas") or config.get("use_lu_lambdas"))


def _spacing(config: Any) -> str:
    """Our spacing of the same name as the scheduler's (it may still place its points elsewhere)."""
    if config.get("use_karras_sigmas"):
        return "karras"
    return "logsnr" if config.get("use_lu_lambdas") else config.get("timestep_spacing", "leading")


# ---- timesteps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimestepMap:
    """Our time t <-> the timestep k a diffusers scheduler hands its network at the same noise level.

    k = t T - 1 where the scheduler interpolates log sigma between indices (as our schedule does) or k
    is whole. Euler and Heun interpolate sigma itself linearly at fractional k (np.interp over the
    sigma table), so there (`linear_sigma`) k is read off the noise level sigma~(t) instead.
    """

    schedule: Schedule  # from the scheduler's alphas_cumprod
    whole: bool  # int64 whole timesteps (DDIM, DDPM, DPM-Solver, UniPC), else float32 (Euler, Heun)
    linear_sigma: bool = False

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @cached_property
    def _sigmas(self) -> Tensor:
        """sigma~ at timesteps 0..T-1, increasing (T,) float64."""
        T = self.num_timesteps
        return self.schedule.sigma_tilde(torch.arange(1, T + 1, dtype=torch.float64) / T)

    def timestep(self, t: Tensor) -> Tensor:
        """Our times t (B,) -> the timesteps (B,) the scheduler hands the network, on t's device:
        int64 (whole), or float32, made whole where t T - 1 is whole to within t's precision."""
        T = self.num_timesteps
        k = self._k(t.detach().to("cpu", torch.float64)).clamp(0, T - 1)
        whole = k.round()
        if self.whole:
            return whole.long().to(t.device)
        # float32 times carry k only to ~T * eps; diffusers' whole timesteps must reach the network whole.
        near = (k - whole).abs() <= 8 * T * torch.finfo(t.dtype).eps
        return torch.where(near, whole, k).float().to(t.device)

    def time(self, k: Tensor) -> Tensor:
        """Timesteps k (float) -> our times t, float64; exactly (k + 1) / T where k is whole."""
        k = torch.as_tensor(k, dtype=torch.float64)
        t = (k + 1) / self.num_timesteps
        if not self.linear_sigma:
            return t
        j = k.floor().clamp(0, self.num_timesteps - 2).long()
        table = self._sigmas
        sigma = table[j] + (k - j) * (table[j + 1] - table[j])
        return torch.where(k == k.round(), t, self.schedule.t_from_sigma_tilde(sigma))

    def _k(self, t: Tensor) -> Tensor:
        if not self.linear_sigma:
            return t * self.num_timesteps - 1
        table = self._sigmas
        sigma = self.schedule.sigma_tilde(t)
        j = (torch.searchsorted(table, sigma, right=True) - 1).clamp(0, self.num_timesteps - 2)
        return j + (sigma - table[j]) / (table[j + 1] - table[j])


def timestep_map(scheduler: Any) -> TimestepMap:
    """How `scheduler` (a supported diffusers scheduler) hands its network the timestep."""
    spec = _scheduler_spec(scheduler)
    return TimestepMap(_schedule(scheduler), spec.whole_timesteps,
                       linear_sigma=spec.ve_view and not _sigma_primary(scheduler.config))


class DiffusersUNet(torch.nn.Module):
    """A diffusers UNet2DModel called as unnoise calls a network: net(x_t, t, cond) -> its `.sample`,
    with t handed over as the scheduler's timestep."""

    def __init__(self, unet: torch.nn.Module, timesteps: TimestepMap):
        super().__init__()
        self.unet, self.timesteps = unet, timesteps

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if cond is not None:
            raise ValueError("this UNet2DModel is unconditional; it takes no condition")
        return self.unet(x, self.timesteps.timestep(t)).sample


# ---- the pipeline ---------------------------------------------------------------------------------


def _sample_shape(unet: torch.nn.Module, spec: SchedulerSpec) -> tuple[int, int, int]:
    """(C, H, W) of an unconditional UNet2DModel; ValueError (one line) for what we cannot drive."""
    name = type(unet).__name__
    if "UNet2DModel" not in {c.__name__ for c in type(unet).__mro__}:
        raise ValueError(f"from_diffusers supports an unconditional diffusers UNet2DModel, not {name} "
                         "(text- and class-conditional UNets are not supported)")
    c = unet.config
    if c.num_class_embeds is not None or c.class_embed_type is not None:
        raise ValueError(f"class-conditional UNet2DModel (num_class_embeds={c.num_class_embeds}, class_embed_type="
                         f"{c.class_embed_type!r}) is not supported; supported: unconditional UNet2DModel")
    if c.time_embedding_type != "positional" and not (c.time_embedding_type == "learned" and spec.whole_timesteps):
        raise ValueError(f"UNet2DModel with time_embedding_type={c.time_embedding_type!r} is not supported with "
                         f"{spec.sampler}; supported: 'positional' (and 'learned' with whole-timestep schedulers)")
    if c.out_channels != c.in_channels:
        raise ValueError(f"UNet2DModel with out_channels={c.out_channels} != in_channels={c.in_channels} (a learned "
                         "variance) is not supported; supported: out_channels == in_channels")
    size = c.sample_size
    if isinstance(size, int):
        return (c.in_channels, size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return (c.in_channels, int(size[0]), int(size[1]))
    raise ValueError(f"UNet2DModel sample_size={size!r} gives no sample shape; supported: an int or (H, W)")


def _settings(scheduler: Any, spec: SchedulerSpec) -> Settings:
    """Default sampling settings from the scheduler. A "leading" grid starts below t = 1, where a
    pipeline's spacing setting cannot start, so it defaults to "trailing" (exact grid: diffusers_times)."""
    spacing = _spacing(scheduler.config)
    return replace(DEFAULT_SETTINGS, sampler=spec.sampler, steps=scheduler.num_inference_steps or DEFAULT_STEPS,
                   spacing="trailing" if spacing == "leading" else spacing, options=spec.options(scheduler.config))


def from_diffusers(unet: torch.nn.Module, scheduler: Any, *, device: str | torch.device | None = None) -> Pipeline:
    """A Pipeline over a diffusers UNet2DModel trained with `scheduler`'s noise schedule.

    Schedule: the scheduler's alphas_cumprod; parameterisation: its prediction_type (epsilon,
    v_prediction, sample); defaults: the unnoise sampler of its class (DDIM ddim, EulerDiscrete euler,
    EulerAncestralDiscrete euler_ancestral, HeunDiscrete heun, DPMSolverMultistep dpmsolver++ order 2
    dpmpp_2m, UniPCMultistep unipc, DDPM ddpm), its spacing and its num_inference_steps (else 50).
    device: where to sample (None: where the unet is); the unet is moved there and frozen. Works in
    the unet's dtype (float32 or float64). ValueError (one line) for what unnoise does not reproduce.
    """
    spec = _scheduler_spec(scheduler)
    shape = _sample_shape(unet, spec)
    timesteps = timestep_map(scheduler)
    parameterization = PREDICTIONS[scheduler.config.prediction_type]()
    if device is None:
        device = next(unet.parameters()).device
    return Pipeline.from_network(DiffusersUNet(unet, timesteps), parameterization, timesteps.schedule,
                                 ModelInterface(shape), device, defaults=_settings(scheduler, spec), modality="image",
                                 source=f"diffusers {type(unet).__name__} + {type(scheduler).__name__}")


# ---- the scheduler's own grid and start -----------------------------------------------------------


@dataclass(frozen=True)
class _StoredGrid:
    """What set_timesteps(N) left in a scheduler, one entry per grid point (Heun's doubles removed)."""

    timesteps: Tensor  # (N,) float64, the values the network is handed
    sigmas: Tensor | None  # (N,) float64 sigma~ the steps use (without the final 0); None: DDIM, DDPM
    stride: int  # DDIM's step k -> k - T // N


def _stored_grid(scheduler: Any, spec: SchedulerSpec) -> _StoredGrid:
    k = scheduler.timesteps.to("cpu", torch.float64)
    sigmas = getattr(scheduler, "sigmas", None)
    sigmas = None if sigmas is None else torch.as_tensor(sigmas).to("cpu", torch.float64)
    if spec.interleaved:  # [k0, k1, k1, k2, k2, ...] and [s0, s1, s1, ..., 0]
        k, sigmas = torch.cat([k[:1], k[1::2]]), torch.cat([sigmas[:1], sigmas[1::2]])
    if sigmas is not None:
        sigmas = sigmas[:-1]  # the final 0 is our t = 0
    return _StoredGrid(k, sigmas, len(scheduler.alphas_cumprod) // scheduler.num_inference_steps)


def _check_ddim_stride(grid: _StoredGrid) -> None:
    """DDIMScheduler.step uses prev_timestep = k - T // N: a time grid reproduces it only where that
    is the next timestep, and negative (alpha = 1, the data) after the last one."""
    k = grid.timesteps.long().tolist()
    targets = k[1:] + [-1]  # the next timestep; after the last, any negative one
    for here, there in zip(k, targets):
        if here - grid.stride != there and not (there < 0 and here - grid.stride < 0):
            following = f"timestep {there}" if there >= 0 else "point, the data"
            raise ValueError(f"DDIMScheduler steps from timestep {here} to {here - grid.stride}, not to its next "
                             f"{following}: no time grid reproduces it; "
                             "supported: timestep_spacing 'leading', or 'trailing' with steps dividing "
                             "num_train_timesteps")


def _reproduces(times: Tensor, tmap: TimestepMap, grid: _StoredGrid) -> bool:
    """Whether sampling on `times` calls the network with the scheduler's timesteps and steps between
    its sigmas (to its float32 storage)."""
    if len(times) != len(grid.timesteps) + 1:
        return False
    k = tmap.timestep(times[:-1]).double()
    if tmap.whole and not torch.equal(k, grid.timesteps):
        return False
    if (k - grid.timesteps).abs().max() > 1e-3:  # float32 k from float32 sigmas: ~1e-5 off; another grid: >= 0.1
        return False
    if grid.sigmas is None:
        return True
    sigma = tmap.schedule.sigma_tilde(times[:-1])
    return bool(((sigma - grid.sigmas).abs() <= 1e-5 * grid.sigmas).all())


def _candidates(scheduler: Any, tmap: TimestepMap, grid: _StoredGrid):
    """Grids that may reproduce the scheduler's, best first: our spacing of the same name (exact in
    float64 where it coincides), then the stored sigmas (Karras, Lu) or timesteps converted."""
    spacing, steps = _spacing(scheduler.config), len(grid.timesteps)
    if spacing in SPACINGS:
        try:
            yield time_grid(tmap.schedule, steps, spacing, offset=scheduler.config.get("steps_offset", 0))
        except ValueError:  # e.g. more steps than our index spacings allow
            pass
    if grid.sigmas is not None and _sigma_primary(scheduler.config):
        t = tmap.schedule.t_from_sigma_tilde(grid.sigmas)
    else:
        t = tmap.time(grid.timesteps)
    yield torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def diffusers_times(scheduler: Any, steps: int | None = None) -> Tensor:
    """Our time grid (steps + 1,) float64, ending at 0, for the scheduler's `set_timesteps(steps)`
    (run on a copy; steps=None: the grid the scheduler already holds). Sampling on it with the same
    sampler (Pipeline.sample(times=...)) takes the steps diffusers' loop takes. ValueError (one line)
    where no grid does (DDIM whose stride T // N is not its grid's)."""
    spec = _scheduler_spec(scheduler)
    if steps is not None:
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(steps)
    elif scheduler.num_inference_steps is None:
        raise ValueError("the scheduler holds no grid yet: pass steps, or call scheduler.set_timesteps(steps) first")
    tmap, grid = timestep_map(scheduler), _stored_grid(scheduler, spec)
    if spec.sampler == "ddim":
        _check_ddim_stride(grid)
    for times in _candidates(scheduler, tmap, grid):
        if _reproduces(times, tmap, grid):
            return times
    raise ValueError(f"no time grid reproduces {type(scheduler).__name__}'s timesteps "
                     f"{grid.timesteps.tolist()[:4]}...; supported: the spacings of unnoise.grids")


def diffusers_start(scheduler: Any, noise: Tensor, times: Tensor) -> Tensor:
    """The x at times[0] a diffusers loop starts from, given its unit-normal `noise` (B, C, H, W):
    noise * init_noise_sigma, times alpha(t0) for the schedulers that keep x~ = x / alpha (Euler,
    Euler-ancestral, Heun), whose init_noise_sigma is sigma~(t0) for linspace and trailing spacing and
    sqrt(sigma~(t0)^2 + 1) otherwise (computed here in float64 rather than read in float32)."""
    spec = _scheduler_spec(scheduler)
    if not spec.ve_view:
        return noise * float(scheduler.init_noise_sigma)  # 1: these schedulers keep x itself
    schedule = _schedule(scheduler)
    t0 = float(torch.as_tensor(times).flatten()[0])
    sigma_tilde = schedule.sigma_tilde(t0).item()
    scale = sigma_tilde if scheduler.config.timestep_spacing in ("linspace", "trailing") else math.hypot(sigma_tilde, 1)
    return noise * (scale * schedule.alpha(t0).item())
