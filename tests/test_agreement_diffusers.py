"""Agreement with a peer implementation: our samplers against diffusers' schedulers.

Configured identically (the schedule is diffusers' own `alphas_cumprod`, the grid is the one its
`set_timesteps` builds, the initial noise and the eps-prediction network are shared), our `ddim`,
`euler`, `heun`, `dpmpp_2m` and `unipc` (order 2, bh2) must return the same samples as DDIMScheduler,
EulerDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler (dpmsolver++, order 2)
and UniPCMultistepScheduler, to 1e-5 in |ours - theirs| / |theirs|.

How the two sides are matched (diffusers 0.42.1 source), through unnoise.diffusers_adapter:
    time           diffusers' timestep k is our t = (k + 1) / T; fractional k (Karras sigmas in
                   Euler/Heun) is the same map, both sides interpolating log sigma between indices
    network input  diffusers hands the model its stored timestep: int64 (DDIM, DPM-Solver, UniPC,
                   which round Karras and Lu timesteps to whole numbers while keeping the exact
                   sigma) or float32 (Euler, Heun); the adapter's `timestep_map` reproduces both
    state          Euler and Heun keep x~ = x / alpha = x sqrt(1 + sigma~^2) and feed the model
                   `scale_model_input(x~) = x`; the others keep x itself (`diffusers_start`)
    spacing        our linspace/leading/trailing/karras/logsnr against diffusers' timestep_spacing,
                   use_karras_sigmas and use_lu_lambdas; the cases below are those where both
                   define the same grid (see `CASES`), which `diffusers_times` must then return

Precision: everything runs in float64. diffusers stores sigmas in float32; each test checks that
they are exactly our float64 sigmas rounded to float32 and then gives the scheduler the float64
values back (`widen_alphas`, `set_float64_timesteps`; test_from_diffusers.py uses them too). DDIM,
Heun and UniPC then compute entirely in float64. Euler and DPM-Solver round their state to float32
inside every `step` (`sample.to(torch.float32)`), so they agree only to float32 precision; the
others are held to `FLOAT64_TOLERANCE` as well.

UniPC of order 3 differs by design in the step before last (see the last test).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, UniPCMultistepScheduler)
from torch import Tensor

from unnoise import schedules
from unnoise.diffusers_adapter import TimestepMap, diffusers_start, diffusers_times, timestep_map
from unnoise.grids import time_grid
from unnoise.parameterization import EpsPrediction, NetworkDenoiser
from unnoise.samplers import ddim, dpmpp_2m, euler, heun, unipc

# diffusers calls np.array on torch tensors in set_timesteps, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TOLERANCE = 1e-5  # |ours - theirs| / |theirs|, every case
FLOAT64_TOLERANCE = 1e-10  # the same, where diffusers never rounds the state to float32
F64 = torch.float64

# The schedule: diffusers' default (DDPM linear betas, T = 1000), its float32 alphas_cumprod
# widened exactly to float64 and used on both sides.
ALPHAS_CUMPROD = DDIMScheduler().alphas_cumprod.to(F64)  # (T,)
T = ALPHAS_CUMPROD.numel()
SCHEDULE = schedules.from_alphas_cumprod(ALPHAS_CUMPROD)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: one thread is fastest, and many times so on a busy machine, where
    idle intra-op threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyEpsNet(torch.nn.Module):
    """A fixed eps-prediction network eps_hat(x, k) in diffusers' calling convention: two 3x3
    convolutions around a tanh, shifted by a sinusoidal embedding of the timestep k in [0, T).
    Weights are drawn from a seeded generator, scaled by 1 / sqrt(fan-in). Every timestep it
    receives is appended to `timesteps_seen`."""

    def __init__(self, channels: int = 3, hidden: int = 16, seed: int = 0):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(channels, hidden, 3, padding=1, dtype=F64)
        self.time = torch.nn.Linear(8, hidden, dtype=F64)
        self.conv_out = torch.nn.Conv2d(hidden, channels, 3, padding=1, dtype=F64)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=generator, dtype=F64) / math.sqrt(fan_in))
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(4, dtype=F64) / T)  # (4,)
        self.timesteps_seen: list[float] = []

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        k = torch.as_tensor(timestep).reshape(-1)  # (1,) or (B,), int64 or float32 as the caller stores it
        self.timesteps_seen.append(k[0].item())
        angles = k.to(F64).expand(x.shape[0])[:, None] * self.freqs  # (B, 4)
        emb = torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, 8)
        h = torch.tanh(self.conv_in(x) + self.time(emb)[:, :, None, None])  # (B, hidden, H, W)
        return self.conv_out(h)  # (B, C, H, W)


def _exact_sigmas(stored: Tensor, ours: Tensor) -> Tensor:
    """diffusers' float32 sigmas with each replaced by the float64 sigma of ours it is the rounding
    of; fails unless every stored value is exactly one of ours rounded to float32."""
    exact = {s32: s64 for s32, s64 in zip(ours.float().tolist(), ours.tolist())}
    missing = [s for s in stored.tolist() if s not in exact]
    assert not missing, f"diffusers' sigmas {missing} are none of ours rounded to float32: {ours.tolist()}"
    return torch.tensor([exact[s] for s in stored.tolist()], dtype=F64)


def widen_alphas(scheduler: Any, alphas_cumprod: Tensor | None = None) -> Any:
    """The scheduler with float64 alphas_cumprod (its own widened exactly, or the ones given), which
    set_timesteps then reads in float64; DDIM's final alpha (set_alpha_to_one) likewise."""
    scheduler.alphas_cumprod = (scheduler.alphas_cumprod if alphas_cumprod is None else alphas_cumprod).to(F64)
    if isinstance(scheduler, DDIMScheduler):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    return scheduler


def set_float64_timesteps(scheduler: Any, steps: int, times: Tensor) -> Any:
    """set_timesteps(steps), then the stored float32 sigmas (sigma~ at each timestep, then 0) replaced
    by the float64 sigma~ of `times` they are roundings of."""
    scheduler.set_timesteps(steps)
    if hasattr(scheduler, "sigmas"):
        schedule = schedules.from_alphas_cumprod(scheduler.alphas_cumprod)
        scheduler.sigmas = _exact_sigmas(scheduler.sigmas, schedule.sigma_tilde(times))
    return scheduler


@dataclass(frozen=True)
class Peer:
    """One of our samplers and the diffusers scheduler that should match it."""

    sample: Callable  # our sampler
    scheduler: type  # the diffusers scheduler class
    config: dict = field(default_factory=dict)  # scheduler options beyond the schedule and grid


PEERS = {
    "ddim": Peer(ddim, DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": True}),
    "euler": Peer(euler, EulerDiscreteScheduler),
    "heun": Peer(heun, HeunDiscreteScheduler),
    "dpmpp_2m": Peer(dpmpp_2m, DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": Peer(partial(unipc, order=2), UniPCMultistepScheduler, {"solver_order": 2, "solver_type": "bh2"}),
}
FLOAT32_STATE = {"euler", "dpmpp_2m"}  # diffusers rounds the sample to float32 in `step`

# Our spacing -> diffusers' option for it (karras and logsnr keep the default linspace timesteps,
# whose ends are sigma at k = T - 1 and k = 0, as ours are at t = 1 and t = 1/T).
SPACING_OPTIONS = {
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
    "karras": {"use_karras_sigmas": True},
    "logsnr": {"use_lu_lambdas": True},
}

# (sampler, spacing, steps, steps_offset). Where both sides define the same grid:
#   ddim      leading and trailing with N dividing T: DDIMScheduler steps from k to k - T // N,
#             which is not its next timestep for linspace, nor for trailing with N not dividing T
#   euler     linspace only with (T - 1) / (N - 1) whole (N = 10, 28): otherwise diffusers' timesteps
#   heun      are fractional and their sigmas interpolated linearly in sigma, where ours land on indices
#   dpmpp_2m  trailing, Karras, Lu's log-SNR: DPMSolverMultistep's and UniPC's linspace and leading
#   unipc     keep N of N + 1 evenly spaced points (N = 10: 999, 899, ..., 100 and 900, 810, ..., 90),
#             where ours are 999, 888, ..., 0 and 900, 800, ..., 0
CASES = [
    ("ddim", "leading", 10, 1), ("ddim", "leading", 25, 0), ("ddim", "trailing", 10, 0), ("ddim", "trailing", 25, 0),
    *[(name, spacing, steps, offset) for name in ("euler", "heun") for spacing, steps, offset in
      [("linspace", 10, 0), ("linspace", 28, 0), ("leading", 10, 1), ("leading", 25, 0), ("trailing", 25, 0),
       ("karras", 10, 0), ("karras", 25, 0)]],
    *[("dpmpp_2m", spacing, steps, 0) for spacing in ("trailing", "karras", "logsnr") for steps in (10, 25)],
    *[("unipc", spacing, steps, 0) for spacing in ("trailing", "karras") for steps in (10, 25)],
]


@dataclass
class Run:
    """What a sampler produced: the final sample, the state after each step (diffusers: each call
    of `step`), and the timesteps its network saw, in call order."""

    sample: Tensor
    states: list[Tensor]
    timesteps: list[float]


def _diffusers_run(scheduler, noise: Tensor) -> Run:
    """The loop of diffusers' pipelines: scale the noise, then model -> step over `timesteps`."""
    net, states = TinyEpsNet(), []
    x = noise * scheduler.init_noise_sigma
    for k in scheduler.timesteps:
        eps_hat = net(scheduler.scale_model_input(x, k), k)
        x = scheduler.step(eps_hat, k, x).prev_sample
        states.append(x)
    return Run(x, states, net.timesteps_seen)


def _our_run(sample: Callable, x: Tensor, times: Tensor, timesteps: TimestepMap) -> Run:
    net, states = TinyEpsNet(), []
    denoise = NetworkDenoiser(lambda x_in, t, cond: net(x_in, timesteps.timestep(t)), EpsPrediction(), SCHEDULE)
    x = sample(denoise, SCHEDULE, x, times, callback=lambda info: states.append(info.x.clone()))
    return Run(x, states, net.timesteps_seen)


def _both_runs(peer: Peer, spacing: str, steps: int, offset: int = 0) -> tuple[Run, Run]:
    """(ours, theirs) from the same noise, on our `spacing` grid, which must be the scheduler's."""
    times = time_grid(SCHEDULE, steps, spacing, offset=offset)  # (steps + 1,)
    # The same schedule numbers on both sides, read in float64 by set_timesteps.
    scheduler = widen_alphas(peer.scheduler(**peer.config, **SPACING_OPTIONS[spacing], steps_offset=offset),
                             ALPHAS_CUMPROD)
    set_float64_timesteps(scheduler, steps, times)
    assert torch.equal(diffusers_times(scheduler), times), "the adapter finds another grid"
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)  # (B, C, H, W)
    theirs = _diffusers_run(scheduler, noise)
    ours = _our_run(peer.sample, diffusers_start(scheduler, noise, times), times, timestep_map(scheduler))
    assert ours.timesteps == theirs.timesteps, "the network saw different timesteps"
    return ours, theirs


def _relative(ours: Tensor, theirs: Tensor) -> float:
    return ((ours - theirs).norm() / theirs.norm()).item()


@pytest.mark.parametrize("name, spacing, steps, offset", CASES)
def test_sampler_agrees_with_diffusers(name: str, spacing: str, steps: int, offset: int):
    ours, theirs = _both_runs(PEERS[name], spacing, steps, offset)
    rel = _relative(ours.sample, theirs.sample)
    print(f"{name:9s} {spacing:9s} steps={steps:3d} offset={offset}  relative difference {rel:.2e}")
    assert rel < TOLERANCE
    if name not in FLOAT32_STATE:
        assert rel < FLOAT64_TOLERANCE


@pytest.mark.parametrize("spacing, steps", [("trailing", 10), ("karras", 25)])
def test_unipc_order_3_agrees_step_by_step(spacing: str, steps: int):
    """With lower_order_final (on in both), UniPC-3 steps at order min(3, steps left) near the end,
    so every intermediate state agrees, not only the final one."""
    peer = Peer(partial(unipc, order=3), UniPCMultistepScheduler, {"solver_order": 3, "solver_type": "bh2"})
    ours, theirs = _both_runs(peer, spacing, steps)
    rel = [_relative(a, b) for a, b in zip(ours.states, theirs.states, strict=True)]
    print(f"unipc-3   {spacing:9s} steps={steps:3d}  largest relative difference over steps {max(rel):.1e}")
    assert len(rel) == steps
    assert max(rel) < FLOAT64_TOLERANCE
