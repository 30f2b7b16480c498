"""unnoise.from_diffusers: a real diffusers UNet2DModel sampled through unnoise's Pipeline against
diffusers' own loop.

The loop of diffusers' pipelines, `x = noise * init_noise_sigma; for k in timesteps: x = step(
unet(scale_model_input(x, k), k).sample, k, x).prev_sample`, and `pipe.sample(x=diffusers_start(...),
times=diffusers_times(...))` must return the same samples, to 1e-5 in |ours - theirs| / |theirs|,
for DDIM, Euler, Heun and DPM-Solver++ 2M at 10 and 25 steps on each scheduler's default spacing
(Euler's and Heun's 25 linspace steps have fractional timesteps, DPM-Solver's linspace is not one of
our spacings: both need the adapter's grid), with DDPM's linear betas, T = 1000.

Precision as in test_agreement_diffusers.py: float64 throughout, the schedulers given the float64
sigmas their float32 ones round. DDIM and Heun then agree to 1e-10; Euler and DPM-Solver round their
state to float32 in every `step`, so they agree to float32 precision.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, PNDMScheduler, UNet2DModel,
                       UniPCMultistepScheduler)
from test_agreement_diffusers import set_float64_timesteps, widen_alphas
from torch import Tensor

import unnoise
from unnoise.diffusers_adapter import diffusers_start, diffusers_times

# diffusers calls np.array on torch tensors in set_timesteps, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TOLERANCE = 1e-5  # |ours - theirs| / |theirs|, every case
FLOAT64_TOLERANCE = 1e-10  # where diffusers never rounds the state to float32 (DDIM, Heun)
F64 = torch.float64
DDPM_BETAS = {"beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}  # Heun's defaults differ
NOISE_SHAPE = (2, 3, 8, 8)


def _unet(**config) -> UNet2DModel:
    """A small UNet2DModel (8x8 RGB, one attention level) with weights drawn from a seeded generator."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                           layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), **config)


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return _unet().double().eval()


@dataclass(frozen=True)
class Case:
    scheduler: type
    steps: int
    config: dict = field(default_factory=dict)  # beyond DDPM's linear betas and the class defaults

    def __str__(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.config.items() if k not in DDPM_BETAS)
        return f"{self.scheduler.__name__.removesuffix('Scheduler')}-{self.steps}" + (f"[{extra}]" if extra else "")


DDIM = {"clip_sample": False}  # DDIMScheduler's default clips x0_hat, which unnoise's ddim does not
CASES = [
    Case(DDIMScheduler, 10, {**DDIM, "steps_offset": 1}),  # leading, offset 1: Stable Diffusion's configs
    Case(DDIMScheduler, 25, DDIM),
    Case(EulerDiscreteScheduler, 10),  # linspace: whole timesteps 999, 888, ..., 0
    Case(EulerDiscreteScheduler, 25),  # linspace: 999, 957.375, ...: sigma interpolated linearly
    Case(EulerDiscreteScheduler, 25, {"timestep_spacing": "leading", "steps_offset": 1}),
    Case(HeunDiscreteScheduler, 10, DDPM_BETAS),
    Case(HeunDiscreteScheduler, 25, DDPM_BETAS),
    Case(DPMSolverMultistepScheduler, 10),  # linspace: 999, 899, ..., 100 (N of N + 1 points)
    Case(DPMSolverMultistepScheduler, 25),
    Case(DPMSolverMultistepScheduler, 10, {"prediction_type": "v_prediction"}),
    Case(EulerDiscreteScheduler, 25, {"prediction_type": "v_prediction"}),
    Case(DDIMScheduler, 10, {**DDIM, "prediction_type": "sample"}),
]
FLOAT32_STATE = (EulerDiscreteScheduler, DPMSolverMultistepScheduler)  # diffusers rounds x to float32 in `step`


def _noise(dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(NOISE_SHAPE, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _diffusers_loop(unet: UNet2DModel, scheduler, noise: Tensor) -> Tensor:
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(scheduler.scale_model_input(x, k), k).sample, k, x).prev_sample
    return x


class TimestepLog:
    """Records (value, dtype) of every timestep the unet is called with, by either side."""

    def __init__(self, unet: UNet2DModel):
        self.seen: list[tuple[float, torch.dtype]] = []
        self._handle = unet.register_forward_pre_hook(self._record)

    def _record(self, module, args):
        k = torch.as_tensor(args[1])
        self.seen.append((k.reshape(-1)[0].item(), k.dtype))

    def take(self) -> list[tuple[float, torch.dtype]]:
        seen, self.seen = self.seen, []
        return seen

    def close(self):
        self._handle.remove()


def _relative(ours: Tensor, theirs: Tensor) -> float:
    return ((ours - theirs).norm() / theirs.norm()).item()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_pipeline_matches_diffusers_loop(unet: UNet2DModel, case: Case):
    scheduler = widen_alphas(case.scheduler(**{**DDPM_BETAS, **case.config}))
    times = diffusers_times(scheduler, case.steps)
    set_float64_timesteps(scheduler, case.steps, times)
    pipe = unnoise.from_diffusers(unet, scheduler)
    log = TimestepLog(unet)
    try:
        theirs, seen_theirs = _diffusers_loop(unet, scheduler, _noise()), log.take()
        ours = pipe.sample(len(theirs), x=diffusers_start(scheduler, _noise(), times), times=times, progress=False)
        seen_ours = log.take()
    finally:
        log.close()
    rel = _relative(ours, theirs)
    print(f"{case!s:48s} {pipe.defaults.sampler:9s} relative difference {rel:.2e}")
    assert seen_ours == seen_theirs, "the unet saw other timesteps (values or dtypes)"
    assert rel < TOLERANCE
    if case.scheduler not in FLOAT32_STATE:
        assert rel < FLOAT64_TOLERANCE


def test_float32_matches_to_float32_precision():
    """The usual setting: a float32 unet and an untouched scheduler (float32 sigmas, 25 fractional
    Euler timesteps that float32 times carry only to ~1e-4)."""
    unet32 = _unet().eval()
    scheduler = EulerDiscreteScheduler()
    times = diffusers_times(scheduler, 25)
    scheduler.set_timesteps(25)
    pipe = unnoise.from_diffusers(unet32, scheduler)
    theirs = _diffusers_loop(unet32, scheduler, _noise(torch.float32))
    ours = pipe.sample(len(theirs), x=diffusers_start(scheduler, _noise(torch.float32), times), times=times,
                       progress=False)
    rel = _relative(ours, theirs)
    print(f"float32 Euler-25 relative difference {rel:.2e}")
    assert ours.dtype == torch.float32 and rel < 1e-4


DEFAULTS = [  # (scheduler class, its options, steps set, expected sampler, spacing, steps, sampler options)
    (DDIMScheduler, DDIM, None, "ddim", "trailing", 50, {}),  # leading starts below t = 1
    (DDPMScheduler, {"clip_sample": False, "variance_type": "fixed_large"}, None, "ddpm", "trailing", 50,
     {"variance": "large"}),
    (EulerDiscreteScheduler, {"use_karras_sigmas": True}, 30, "euler", "karras", 30, {}),
    (EulerAncestralDiscreteScheduler, {}, None, "euler_ancestral", "linspace", 50, {}),
    (HeunDiscreteScheduler, {"timestep_spacing": "trailing"}, 12, "heun", "trailing", 12, {}),
    (DPMSolverMultistepScheduler, {"use_lu_lambdas": True}, None, "dpmpp_2m", "logsnr", 50, {}),
    (UniPCMultistepScheduler, {"solver_order": 3}, None, "unipc", "linspace", 50,
     {"order": 3, "lower_order_final": True}),
]


@pytest.mark.parametrize("cls, config, steps_set, sampler, spacing, steps, options", DEFAULTS,
                         ids=[d[0].__name__ for d in DEFAULTS])
def test_default_settings_follow_the_scheduler(cls, config, steps_set, sampler, spacing, steps, options):
    scheduler = cls(**config)
    if steps_set is not None:
        scheduler.set_timesteps(steps_set)
    pipe = unnoise.from_diffusers(_unet(), scheduler, device="cpu")
    d = pipe.defaults
    assert (d.sampler, d.spacing, d.steps, d.options) == (sampler, spacing, steps, options)
    assert pipe.interface.sample_shape == (3, 8, 8) and pipe.modality == "image" and "UNet2DModel" in pipe.source
    assert pipe.device == torch.device("cpu")


def test_defaults_sample():
    pipe = unnoise.from_diffusers(_unet(), DPMSolverMultistepScheduler())
    x = pipe.sample(2, steps=3, progress=False)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and bool(x.isfinite().all())


REFUSED = [  # (what, build, a word the message must name)
    ("clip_sample", lambda: unnoise.from_diffusers(_unet(), DDIMScheduler()), "clip_sample=True"),
    ("thresholding", lambda: unnoise.from_diffusers(_unet(), DPMSolverMultistepScheduler(thresholding=True)),
     "thresholding=True"),
    ("algorithm", lambda: unnoise.from_diffusers(_unet(), DPMSolverMultistepScheduler(
        algorithm_type="sde-dpmsolver++")), "algorithm_type='sde-dpmsolver++'"),
    ("order", lambda: unnoise.from_diffusers(_unet(), DPMSolverMultistepScheduler(solver_order=3)), "solver_order=3"),
    ("final sigma", lambda: unnoise.from_diffusers(_unet(), EulerDiscreteScheduler(final_sigmas_type="sigma_min")),
     "final_sigmas_type='sigma_min'"),
    ("class", lambda: unnoise.from_diffusers(_unet(), PNDMScheduler()), "PNDMScheduler"),
    ("class-conditional", lambda: unnoise.from_diffusers(_unet(num_class_embeds=10), DDIMScheduler(clip_sample=False)),
     "num_class_embeds=10"),
    ("ddim stride", lambda: diffusers_times(DDIMScheduler(clip_sample=False, timestep_spacing="linspace"), 25),
     "not to its next timestep"),
]


@pytest.mark.parametrize("build, word", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refuses_what_it_does_not_reproduce_in_one_line(build, word):
    with pytest.raises(ValueError, match="supported") as error:
        build()
    message = str(error.value)
    print(message)
    assert word in message and "\n" not in message


def test_import_unnoise_does_not_import_diffusers():
    code = "import sys, unnoise; assert 'diffusers' not in sys.modules, 'unnoise imported diffusers'"
    subprocess.run([sys.executable, "-c", code], check=True)
