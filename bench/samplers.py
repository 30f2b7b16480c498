"""Benchmark our samplers against diffusers' schedulers and k-diffusion's samplers.

Two measurements, printed as markdown tables and written into docs/benchmarks.md:

1. Error at equal NFE. The exact denoiser of a Gaussian mixture (`unnoise.oracle`) on diffusers'
   DDPM-linear schedule, wrapped as an eps-prediction network for the peers, runs through each peer
   and through ours on the peer's own grid, from the same initial noise. Error = RMS distance of the
   final samples from a tight reference solve (`ode_adaptive`, rtol = atol = 1e-10, float64) of the
   same ODE from the same noise down to the grid's last noisy time, followed by the same final
   x0_hat step every one of these samplers ends with.
2. Per-step bookkeeping time: (full sampling loop - bare model calls) / steps, with a zero-cost
   model that returns a preallocated tensor, at two batch sizes, alternating ours and theirs.

Run:  python bench/samplers.py            (re-executes itself with tcmalloc preloaded: glibc malloc is slower and noisy)
      python bench/samplers.py --help
Needs diffusers; k-diffusion is optional (`pip install k-diffusion --no-deps`).
"""

from __future__ import annotations

from common import check_load, machine, preload_tcmalloc, publish  # bench/common.py

if __name__ == "__main__":
    preload_tcmalloc()

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from torch import Tensor  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from unnoise import schedules  # noqa: E402
from unnoise.grids import time_grid  # noqa: E402
from unnoise.oracle import GaussianMixture  # noqa: E402
from unnoise.parameterization import EpsPrediction, NetworkDenoiser  # noqa: E402
from unnoise.samplers import ddim, dpmpp_2m, euler, heun, ode_adaptive, unipc  # noqa: E402

F64 = torch.float64
# diffusers' DDPM-linear schedule with the "trailing" spacing (Lin et al. 2024, Table 2), our default
# grid: the only spacing that all five schedulers build alike (DPM-Solver and UniPC space "leading"
# differently from DDIM), with whole timesteps k, each exactly our t = (k + 1) / T.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                        timestep_spacing="trailing")


@dataclass(frozen=True)
class Peer:
    """One algorithm as a peer implements it, and ours."""

    name: str  # row label
    library: str  # "diffusers" or "k-diffusion"
    make: Callable[[], object]  # diffusers: a fresh scheduler; k-diffusion: the sample_* function
    ours: Callable[..., Tensor]  # our sampler
    ours_opts: dict = field(default_factory=dict)  # options for ours
    ve: bool = False  # the peer's state is x~ = x / alpha (Euler/Heun schedulers, k-diffusion)
    two_calls: bool = False  # Heun: 2N - 1 model calls for N steps
    timed: bool = True  # part of the timing table

    def steps(self, nfe: int) -> int:
        """The most steps whose model calls fit in nfe."""
        return (nfe + 1) // 2 if self.two_calls else nfe

    def calls(self, steps: int) -> int:
        return 2 * steps - 1 if self.two_calls else steps


def diffusers_peers() -> list[Peer]:
    def sched(cls, **kw):
        return lambda: cls(**SCHEDULER_CONFIG, **kw)

    return [
        Peer("DDIM", "diffusers", sched(DDIMScheduler, clip_sample=False), ddim),
        Peer("Euler", "diffusers", sched(EulerDiscreteScheduler), euler, ve=True),
        Peer("Heun", "diffusers", sched(HeunDiscreteScheduler), heun, ve=True, two_calls=True),
        Peer("DPM-Solver++ 2M", "diffusers",
             sched(DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2), dpmpp_2m),
        Peer("UniPC bh2 p=3", "diffusers", sched(UniPCMultistepScheduler, solver_type="bh2", solver_order=3),
             unipc, dict(order=3)),
        Peer("UniPC bh2 p=2", "diffusers", sched(UniPCMultistepScheduler, solver_type="bh2", solver_order=2),
             unipc, dict(order=2), timed=False),
    ]


def k_diffusion_peers(kd: types.ModuleType) -> list[Peer]:
    return [Peer("Euler", "k-diffusion", lambda: kd.sample_euler, euler, ve=True),
            Peer("Heun", "k-diffusion", lambda: kd.sample_heun, heun, ve=True, two_calls=True),
            Peer("DPM-Solver++ 2M", "k-diffusion", lambda: kd.sample_dpmpp_2m, dpmpp_2m, ve=True)]


def load_k_diffusion() -> tuple[types.ModuleType | None, types.ModuleType | None, str]:
    """(k_diffusion.sampling, k_diffusion.external, how they were loaded). The package's __init__
    imports its training code (skimage, torchvision, ...); the two modules need only torch, scipy,
    torchdiffeq, tqdm and `k_diffusion.utils`. If the package import fails, load the three files
    directly, with empty stand-ins for torchvision and torchsde, which no deterministic sampler uses."""
    try:
        import k_diffusion.external
        import k_diffusion.sampling
        return k_diffusion.sampling, k_diffusion.external, "imported as a package"
    except Exception as err:  # noqa: BLE001 - any import failure sends us to the file-level fallback
        reason = f"{type(err).__name__}: {err}"
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, None, "not installed (pip install k-diffusion --no-deps)"
    root = Path(spec.submodule_search_locations[0])
    for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
        del sys.modules[name]
    missing = {top for top in ("torchsde", "torchvision") if importlib.util.find_spec(top) is None}
    stand_ins = {}
    for name in ("torchsde", "torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        if name.split(".")[0] in missing:
            stand_ins[name] = sys.modules[name] = types.ModuleType(name)
    if "torchvision.transforms" in stand_ins:
        stand_ins["torchvision.transforms"].functional = stand_ins["torchvision.transforms.functional"]
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    sys.modules["k_diffusion"] = package
    try:
        for sub in ("utils", "sampling", "external"):
            sub_spec = importlib.util.spec_from_file_location(f"k_diffusion.{sub}", root / f"{sub}.py")
            module = importlib.util.module_from_spec(sub_spec)
            sys.modules[sub_spec.name] = module
            sub_spec.loader.exec_module(module)
            setattr(package, sub, module)
    except Exception as err:  # noqa: BLE001
        return None, None, f"package import failed ({reason}); file import failed too ({err})"
    finally:
        for name in stand_ins:
            del sys.modules[name]
    stubbed = f", stand-ins for {', '.join(n for n in stand_ins if '.' not in n)}" if stand_ins else ""
    return package.sampling, package.external, f"files loaded directly ({reason}{stubbed})"


# ---------------------------------------------------------------------------------------------
# 1. Error at equal NFE


class EpsOracle:
    """The exact denoiser as a diffusers-style eps network: net(x_t, k) -> eps_hat, where timestep
    k (possibly fractional, possibly a (B,) tensor of equal values) is our t = (k + 1) / T."""

    def __init__(self, denoise: Callable, schedule: schedules.Schedule):
        self.denoise, self.schedule = denoise, schedule

    def __call__(self, x: Tensor, timestep, *args, **kwargs) -> Tensor:
        k = torch.as_tensor(timestep).reshape(-1)[0].item()
        t = (k + 1) / self.schedule.num_timesteps
        alpha, sigma = self.schedule.alpha(t).item(), self.schedule.sigma(t).item()
        return (x - alpha * self.denoise(x, t)) / sigma


class Problem:
    """The oracle on diffusers' DDPM-linear schedule, true noisy samples, and exact reference solves."""

    def __init__(self, args: argparse.Namespace):
        self.alphas_cumprod = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod.to(F64)  # (T,), float32 values
        self.schedule = schedules.from_alphas_cumprod(self.alphas_cumprod)
        base = GaussianMixture.random(math.prod(args.shape), args.components, args.seed, tuple(args.std_range))
        self.mixture = GaussianMixture.create(base.means.view(-1, *args.shape), base.stds, base.weights)
        self.denoise = self.mixture.denoiser(self.schedule)
        self.net = EpsOracle(self.denoise, self.schedule)
        self.samples, self.seed = args.samples, args.seed
        self._references: dict[tuple[float, float], Tensor] = {}

    def noise(self, t0: float) -> Tensor:
        """True samples of x_t0, (N, *shape), drawn from the same seed whatever t0."""
        generator = torch.Generator().manual_seed(self.seed)
        return self.mixture.marginal(self.schedule, t0).sample(self.samples, generator)[0]

    def error(self, x: Tensor, times: Tensor) -> float:
        """RMS distance of x from the exact solve from noise(times[0]) down to times[-2], then x0_hat."""
        key = (times[0].item(), times[-2].item())
        if key not in self._references:
            ends = torch.tensor([*key, 0.0], dtype=F64)
            self._references[key] = ode_adaptive(self.denoise, self.schedule, self.noise(key[0]), ends,
                                                 rtol=1e-10, atol=1e-10)
        return rms(x, self._references[key])


def rms(a: Tensor, b: Tensor) -> float:
    return (a - b).square().mean().sqrt().item()


def diffusers_loop(scheduler, net: Callable, x: Tensor, steps: int, init_scale) -> Tensor:
    """diffusers' sampling loop as a pipeline writes it (set_timesteps also resets multistep state)."""
    scheduler.set_timesteps(steps)
    x = x * init_scale
    for k in scheduler.timesteps:
        eps = net(scheduler.scale_model_input(x, k), k)
        x = scheduler.step(eps, k, x).prev_sample
    return x


def diffusers_times(scheduler, schedule: schedules.Schedule, steps: int) -> Tensor:
    """The scheduler's grid as our times: timestep k -> (k + 1) / T, then 0. Checked against its sigmas."""
    scheduler.set_timesteps(steps)
    k = torch.unique_consecutive(scheduler.timesteps.to(F64))  # Heun repeats each inner timestep
    times = torch.cat([(k + 1) / schedule.num_timesteps, torch.zeros(1, dtype=F64)])
    if hasattr(scheduler, "sigmas"):
        theirs = torch.unique_consecutive(scheduler.sigmas.to(F64))[:-1]
        ours = schedule.sigma_tilde(times[:-1])
        if not torch.allclose(theirs, ours, rtol=1e-5, atol=0):
            raise RuntimeError(f"{type(scheduler).__name__}: sigmas differ from ours: {theirs[:4]} vs {ours[:4]}")
    return times


def k_diffusion_times(schedule: schedules.Schedule, steps: int) -> Tensor:
    """k-diffusion's `DiscreteSchedule.get_sigmas(steps)` as our times: indices linspace(T - 1, 0, steps),
    log sigma interpolated between indices as our log-SNR is, then t = 0. Runs from t = 1 to 1 / T."""
    T = schedule.num_timesteps
    return torch.cat([(torch.linspace(T - 1, 0, steps, dtype=F64) + 1) / T, torch.zeros(1, dtype=F64)])


@dataclass
class AccuracyRow:
    algorithm: str
    grid: str
    implementation: str
    nfe: list[int] = field(default_factory=list)  # model calls made
    values: list[float] = field(default_factory=list)  # RMS error; RMS(ours - peer) on agreement rows

    def add(self, nfe: int, value: float) -> None:
        self.nfe.append(nfe)
        self.values.append(value)


AGREEMENT = "RMS(ours − peer)"
DIFFUSERS_GRID = "diffusers trailing = ours default"
KD_GRID = "k-diffusion get_sigmas(n)"


def diffusers_rows(problem: Problem, peer: Peer, nfes: list[int]) -> list[AccuracyRow]:
    """The peer and ours on the grid its set_timesteps builds, from the same noise."""
    theirs, ours = AccuracyRow(peer.name, DIFFUSERS_GRID, "diffusers"), AccuracyRow(peer.name, "same", "unnoise")
    delta = AccuracyRow(peer.name, "same", AGREEMENT)
    for nfe in nfes:
        steps = peer.steps(nfe)
        scheduler = peer.make()
        times = diffusers_times(scheduler, problem.schedule, steps)
        if not torch.equal(times, time_grid(problem.schedule, steps)):
            raise RuntimeError(f"{peer.name}: diffusers' grid is not our default grid at {steps} steps")
        x_T = problem.noise(times[0].item())
        scale = 1 / problem.schedule.alpha(times[0]).item() if peer.ve else 1.0  # x~ = x / alpha, exactly
        x_theirs = diffusers_loop(scheduler, problem.net, x_T, steps, scale)
        x_ours = peer.ours(problem.denoise, problem.schedule, x_T, times, **peer.ours_opts)
        theirs.add(peer.calls(steps), problem.error(x_theirs, times))
        ours.add(peer.calls(steps), problem.error(x_ours, times))
        delta.add(peer.calls(steps), rms(x_ours, x_theirs))
    return [theirs, ours, delta]


def k_diffusion_rows(problem: Problem, peer: Peer, kd_sample: Callable | None, kd_external,
                     nfes: list[int]) -> list[AccuracyRow]:
    """On k-diffusion's grid from t = 1 to 1 / T: its sampler (where it has one) and ours, then ours
    on the karras and logsnr grids between the same ends: same noise, same reference."""
    schedule, x_T = problem.schedule, problem.noise(1.0)
    theirs, delta = AccuracyRow(peer.name, KD_GRID, "k-diffusion"), AccuracyRow(peer.name, "same", AGREEMENT)
    ours = AccuracyRow(peer.name, "same" if kd_sample else KD_GRID, "unnoise")
    spaced = {spacing: AccuracyRow(peer.name, f"ours '{spacing}', same ends", "unnoise")
              for spacing in ("karras", "logsnr")}
    for nfe in nfes:
        steps = peer.steps(nfe)
        times = k_diffusion_times(schedule, steps)
        x_ours = peer.ours(problem.denoise, schedule, x_T, times, **peer.ours_opts)
        ours.add(peer.calls(steps), problem.error(x_ours, times))
        for spacing, row in spaced.items():
            grid = time_grid(schedule, steps, spacing)
            row.add(peer.calls(steps), problem.error(peer.ours(problem.denoise, schedule, x_T, grid,
                                                               **peer.ours_opts), grid))
        if kd_sample is None:
            continue
        model = kd_external.DiscreteEpsDDPMDenoiser(problem.net, problem.alphas_cumprod.float(), quantize=False)
        sigmas = model.get_sigmas(steps).to(F64)  # (steps + 1,), float32 values
        if not torch.allclose(sigmas[:-1], schedule.sigma_tilde(times[:-1]), rtol=1e-5, atol=0):
            raise RuntimeError(f"k-diffusion's sigmas differ from ours at {steps} steps")
        x_theirs = kd_sample(model, x_T / schedule.alpha(1.0).item(), sigmas, disable=True)
        theirs.add(peer.calls(steps), problem.error(x_theirs, times))
        delta.add(peer.calls(steps), rms(x_ours, x_theirs))
    return ([theirs, ours, delta] if kd_sample else [ours]) + list(spaced.values())


def accuracy(args, kd_external) -> list[AccuracyRow]:
    problem = Problem(args)
    rows = []
    for peer in diffusers_peers():
        rows += diffusers_rows(problem, peer, args.nfe)
    kd_samplers = {p.name: p.make() for p in k_diffusion_peers(kd_external.sampling)} if kd_external else {}
    for peer in diffusers_peers():
        rows += k_diffusion_rows(problem, peer, kd_samplers.get(peer.name), kd_external, args.nfe)
    return rows


def accuracy_table(rows: list[AccuracyRow], nfe: list[int]) -> str:
    lines = ["| algorithm | grid | implementation | " + " | ".join(f"NFE {n}" for n in nfe) + " |",
             "|" + "---|" * (3 + len(nfe))]
    for row in rows:
        cells = [f"{v:.1e}" if row.implementation == AGREEMENT else f"{v:.2e}" for v in row.values]
        cells = [c + ("" if n == target else f" ({n})") for c, n, target in zip(cells, row.nfe, nfe, strict=True)]
        impl = "**unnoise**" if row.implementation == "unnoise" else row.implementation
        lines.append(f"| {row.algorithm} | {row.grid} | {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 2. Per-step bookkeeping time


@dataclass(frozen=True)
class Loop:
    """One timed sampling loop with a zero-cost model."""

    label: str
    run: Callable[[], object]
    steps: int  # sampler steps (the divisor)
    calls: int  # model calls per run (their bare cost is subtracted)
    call_cost: float  # seconds per bare model call
    numel: int  # elements of the state x, to tell full-size ops from scalar ones
    cold: Callable[[], object] | None = None  # a run with fresh caches (ours: a new NetworkDenoiser)


def bare_call_cost(model: Callable, x: Tensor, t, n: int = 20000) -> float:
    """Seconds per call of the zero-cost model, measured as the loops call it."""
    start = time.perf_counter()
    for _ in range(n):
        model(x, t)
    return (time.perf_counter() - start) / n


def timing_loops(peer: Peer, batch: int, steps: int, kd) -> tuple[Loop, Loop]:
    """(ours, theirs) for one peer, sharing the initial noise and the zero-cost model's output."""
    T = SCHEDULER_CONFIG["num_train_timesteps"]
    schedule = schedules.from_alphas_cumprod(DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(batch, 3, 32, 32, generator=g)  # (B, 3, 32, 32) float32
    out = torch.randn(batch, 3, 32, 32, generator=g)  # the zero-cost model's answer, eps or x0
    calls = peer.calls(steps)

    def zero_cost(x, t, cond=None):
        return out

    if peer.library == "diffusers":
        scheduler = peer.make()

        def run_ours(denoise):  # the eps -> x0 conversion of NetworkDenoiser is our bookkeeping
            return peer.ours(denoise, schedule, x_T, time_grid(schedule, steps), **peer.ours_opts)

        denoise = NetworkDenoiser(zero_cost, EpsPrediction(), schedule)  # warmed by time_loops' first runs
        theirs = Loop(f"diffusers {peer.name}", lambda: diffusers_loop(scheduler, zero_cost, x_T, steps,
                                                                       scheduler.init_noise_sigma),
                      steps, calls, bare_call_cost(zero_cost, x_T, torch.tensor(T - 1)), x_T.numel())
        ours = Loop(f"ours {peer.ours.__name__}", lambda: run_ours(denoise), steps, calls,
                    bare_call_cost(zero_cost, x_T, 1.0), x_T.numel(),
                    cold=lambda: run_ours(NetworkDenoiser(zero_cost, EpsPrediction(), schedule)))
        return ours, theirs
    times = k_diffusion_times(schedule, steps)
    sigmas = torch.cat([schedule.sigma_tilde(times[:-1]), torch.zeros(1, dtype=F64)]).float()  # same grid
    sample_fn, s_in = peer.make(), torch.ones(batch)
    x_ve = x_T * math.sqrt(1 + sigmas[0].item() ** 2)
    theirs = Loop(f"k-diffusion {sample_fn.__name__}", lambda: sample_fn(zero_cost, x_ve, sigmas, disable=True),
                  steps, calls, bare_call_cost(zero_cost, x_T, sigmas[0] * s_in), x_T.numel())
    ours = Loop(f"ours {peer.ours.__name__}", lambda: peer.ours(zero_cost, schedule, x_T, times, **peer.ours_opts),
                steps, calls, bare_call_cost(zero_cost, x_T, 1.0), x_T.numel())
    return ours, theirs


def bare_ddim_loop(batch: int, steps: int) -> Loop:
    """The floor: DDIM's update as two in-place ops a step, coefficients precomputed as floats."""
    schedule = schedules.from_alphas_cumprod(DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod)
    times = time_grid(schedule, steps)
    a, s = schedule.alpha(times).tolist(), schedule.sigma(times).tolist()
    # x_s = (a_s / a_t) x_t + (s_s - a_s s_t / a_t) eps_hat (Song et al. 2021, eq. 12, eta = 0)
    coef = [(a[i + 1] / a[i], s[i + 1] - a[i + 1] * s[i] / a[i]) for i in range(steps)]
    g = torch.Generator().manual_seed(0)
    x_T, out = torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 32, 32, generator=g)

    def zero_cost(x, t):
        return out

    def run():
        x = x_T.clone()
        for i, (c_x, c_eps) in enumerate(coef):
            x.mul_(c_x).add_(zero_cost(x, i), alpha=c_eps)
        return x

    return Loop("bare in-place DDIM update", run, steps, steps, bare_call_cost(zero_cost, x_T, 0), x_T.numel())


def time_loops(loops: list[Loop], rounds: int, block: float) -> list[list[float]]:
    """Per-step bookkeeping seconds of each loop, one value a round. Loops alternate, and their order
    reverses every round; each value is the mean over enough runs to last `block` seconds."""
    for loop in loops:  # warm up, and size each loop's block of runs
        for _ in range(3):
            loop.run()
    reps = []
    for loop in loops:
        start = time.perf_counter()
        loop.run()
        reps.append(max(1, math.ceil(block / (time.perf_counter() - start))))
    results: list[list[float]] = [[] for _ in loops]
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = range(len(loops)) if r % 2 == 0 else reversed(range(len(loops)))
            for j in order:
                loop, n = loops[j], reps[j]
                results[j].append(per_step(loop, loop.run, n))
    finally:
        gc.enable()
    return results


def per_step(loop: Loop, run: Callable[[], object], n: int) -> float:
    """Seconds a step of bookkeeping: the mean of n runs, less the bare model calls, over the steps."""
    start = time.perf_counter()
    for _ in range(n):
        run()
    per_run = (time.perf_counter() - start) / n
    return (per_run - loop.calls * loop.call_cost) / loop.steps


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations that reach the dispatcher (tensor ops, including 0-d ones), and
    those whose output is as large as the state (the ones that cost memory bandwidth at large batch)."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.count, self.full_size = numel, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += 1
        self.full_size += isinstance(out, Tensor) and out.numel() >= self.numel
        return out


@dataclass(frozen=True)
class Profile:
    ops: float  # ATen ops per step
    full_size: float  # of which full-size
    python_calls: float  # Python and builtin function calls per step, the model's own excluded


def overhead_profile(loop: Loop) -> Profile:
    """Count one (warm) run."""
    with OpCounter(loop.numel) as counter:
        loop.run()
    calls = 0

    def tracer(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(tracer)
    try:
        loop.run()
    finally:
        sys.setprofile(None)
    return Profile(counter.count / loop.steps, counter.full_size / loop.steps, (calls - loop.calls) / loop.steps)


@dataclass
class TimingRow:
    algorithm: str
    batch: int
    theirs_label: str
    ours_label: str
    theirs: list[float]  # seconds a step, one per round
    ours: list[float]
    profile_theirs: Profile | None
    profile_ours: Profile
    ours_cold: float | None = None  # seconds a step of ours' first run with fresh caches


def timing(args, kd) -> list[TimingRow]:
    peers = [p for p in diffusers_peers() if p.timed] + (k_diffusion_peers(kd) if kd else [])
    rows = []
    with torch.no_grad():  # as pipelines sample; k-diffusion's samplers are decorated with it too
        for batch in args.batches:
            floor = bare_ddim_loop(batch, args.timing_steps)
            (result,) = time_loops([floor], args.rounds, args.block)
            rows.append(TimingRow("DDIM (floor)", batch, "—", floor.label, [], result,
                                  None, overhead_profile(floor)))
            for peer in peers:
                ours, theirs = timing_loops(peer, batch, args.timing_steps, kd)
                cold = None
                if ours.cold is not None:  # before any warm run: the caches are the first run's to fill
                    cold = statistics.median(per_step(ours, ours.cold, 1) for _ in range(3))
                t_ours, t_theirs = time_loops([ours, theirs], args.rounds, args.block)
                rows.append(TimingRow(peer.name, batch, theirs.label, ours.label, t_theirs, t_ours,
                                      overhead_profile(theirs), overhead_profile(ours), cold))
                print(f"  timed {theirs.label} vs {ours.label}, batch {batch}", file=sys.stderr, flush=True)
    return rows


def timing_table(rows: list[TimingRow]) -> str:
    lines = ["| algorithm | batch | peer | peer µs/step | ours µs/step | ours / peer: median (min–max) | "
             "≤ 0.5 | ours, first run µs/step | ATen ops/step (full-size) peer → ours | "
             "Python calls/step peer → ours |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        o, t = row.profile_ours, row.profile_theirs
        ours_us = f"{statistics.median(row.ours) * 1e6:.1f}"
        cold = "—" if row.ours_cold is None else f"{row.ours_cold * 1e6:.0f}"
        if not row.theirs:
            lines.append(f"| {row.algorithm} | {row.batch} | — | — | {ours_us} ({row.ours_label}) | — | — | {cold} | "
                         f"— → {o.ops:.0f} ({o.full_size:.0f}) | — → {o.python_calls:.0f} |")
            continue
        ratios = [a / b for a, b in zip(row.ours, row.theirs, strict=True)]
        ratio = statistics.median(ratios)
        lines.append(f"| {row.algorithm} | {row.batch} | {row.theirs_label} | "
                     f"{statistics.median(row.theirs) * 1e6:.1f} | {ours_us} | "
                     f"{ratio:.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {'yes' if ratio <= 0.5 else '**no**'} | "
                     f"{cold} | {t.ops:.0f} ({t.full_size:.0f}) → {o.ops:.0f} ({o.full_size:.0f}) | "
                     f"{t.python_calls:.0f} → {o.python_calls:.0f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Report


def report(args, kd_how: str, load_at_start, accuracy_rows, timing_rows) -> str:
    command = "python bench/samplers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    parts = [f"Command: `{command.strip()}`  ",
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
             f"Machine: {machine(load_at_start)}  ",
             f"k-diffusion: {kd_how}"]
    if accuracy_rows:
        parts += ["", f"### Error at equal NFE (oracle: {args.components}-component Gaussian mixture on "
                      f"{'x'.join(map(str, args.shape))}, {args.samples} samples, float64)", "",
                  "RMS distance of the final samples from `ode_adaptive` (rtol = atol = 1e-10, float64) "
                  "run from the same noise to the grid's last noisy time, then the same final x0_hat step. "
                  "NFE in parentheses: model calls made, where Heun's 2N − 1 cannot equal the target.", "",
                  accuracy_table(accuracy_rows, args.nfe)]
    if timing_rows:
        parts += ["", f"### Per-step bookkeeping, {args.timing_steps} steps, float32, zero-cost model", "",
                  f"(loop time − model calls × bare call cost) / steps; median of {args.rounds} alternating "
                  "rounds. vs diffusers: ours runs an eps model through `NetworkDenoiser(net, EpsPrediction(), "
                  "schedule)` and builds its grid with `time_grid` each run, as diffusers runs `set_timesteps`; "
                  "vs k-diffusion: both get a zero-cost denoiser and a precomputed grid. ATen ops and Python "
                  "calls are counted per step, the model's own call excluded.", "",
                  timing_table(timing_rows)]
    return "\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Default run: about one minute on 2 quiet CPU cores.")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50], help="model-call budgets (accuracy)")
    p.add_argument("--samples", type=int, default=256, help="samples in the accuracy run")
    p.add_argument("--shape", type=int, nargs="+", default=[3, 8, 8], help="shape of one sample (accuracy)")
    p.add_argument("--components", type=int, default=8, help="mixture components of the oracle")
    p.add_argument("--std-range", type=float, nargs=2, default=[0.2, 0.5],
                   help="range of the components' standard deviations (narrower components separate "
                        "earlier and let a few samples switch component, which then dominate the RMS)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixture and the initial noise")
    p.add_argument("--timing-steps", type=int, default=50, help="sampler steps per timed loop")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 1], help="batch sizes timed (x 3x32x32)")
    p.add_argument("--rounds", type=int, default=9, help="alternating timing rounds (>= 7 recommended)")
    p.add_argument("--block", type=float, default=0.03, help="seconds of runs per timed measurement")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md",
                   help="markdown file whose generated block is replaced")
    p.add_argument("--no-doc", action="store_true", help="print only")
    p.add_argument("--no-preload", action="store_true", help="do not re-execute with tcmalloc preloaded")
    args = p.parse_args(argv)
    if min(args.nfe) < 2 or args.samples < 1 or args.rounds < 1 or min(args.batches) < 1 or args.timing_steps < 2:
        p.error("--nfe and --timing-steps must be >= 2; --samples, --rounds and --batches >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_at_start = check_load()
    kd_sampling, kd_external, kd_how = load_k_diffusion()
    print(f"k-diffusion: {kd_how}", file=sys.stderr)
    start = time.perf_counter()
    torch.set_num_threads(1)  # the oracle's tensors are small: threads only add synchronisation
    accuracy_rows = [] if args.skip_accuracy else accuracy(args, kd_external)
    print(f"  accuracy done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    torch.set_num_threads(args.threads)
    timing_rows = [] if args.skip_timing else timing(args, kd_sampling)
    text = report(args, kd_how, load_at_start, accuracy_rows, timing_rows)
    publish(text, None if args.no_doc else args.doc, "samplers.py", time.perf_counter() - start)


if __name__ == "__main__":
    main()
