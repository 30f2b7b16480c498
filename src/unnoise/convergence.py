"""Measure samplers against the exact oracle: convergence order and distribution error.

- Deterministic samplers solve the probability-flow ODE. From the same x_T, their endpoint is
  compared with a tight adaptive solve of the same ODE (rtol = atol = 1e-12, float64), which ends the
  same way (x0_hat at the grid's last noisy time); the error against steps N over the three finest
  step counts (the asymptotic regime) is fitted as C N^-p and p is the measured order.
- Every sampler's samples are compared with true samples from the mixture by the sliced
  Wasserstein-2 distance (Bonneel et al. 2015): exact 1-D W2 by sorting, averaged over random
  directions. Its noise floor is the same distance between two independent true sets of equal size.
- The adaptive solver is run at tolerances 1e-3 .. 1e-8 instead of step counts; its global error
  should track the local tolerance (it passes within a factor of 100: dopri5's global error grows
  over the ~10 units of lambda it integrates, and measures ~5 to 40 x the tolerance here).
x_T is drawn from the exact marginal p_1, so the only error left is the sampler's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from unnoise.grids import time_grid
from unnoise.oracle import GaussianMixture
from unnoise.samplers import get_sampler, ode_adaptive
from unnoise.schedules import Schedule


@dataclass(frozen=True)
class Case:
    """One row of the report: a sampler with options, and what theory says of it."""

    label: str  # row name
    sampler: str  # registry name
    options: dict = field(default_factory=dict)
    order: float | None = None  # theoretical order for deterministic samplers, None if stochastic
    tolerances: tuple[float, ...] = ()  # adaptive solvers: run at these rtol = atol instead of step counts


# Deterministic orders: DDIM and Euler 1; Heun (Karras et al. 2022) and DPM-Solver++(2M) 2;
# 3M with eta = 0 (a third-order exponential multistep, dpmsolver.py) 3; UniPC-3 3 (its corrector
# can lift it to 4); PLMS 4 with RK4 warm-up and variable-step weights (plms.py). PC uses
# "expected" norms: in 2-D the per-sample norm ratio of Song et al.'s step size is heavy-tailed.
CASES = (
    Case("ddim", "ddim", {}, 1),
    Case("euler", "euler", {}, 1),
    Case("heun", "heun", {}, 2),
    Case("dpmpp_2m", "dpmpp_2m", {}, 2),
    Case("dpmpp_3m (eta=0)", "dpmpp_3m_sde", {"eta": 0.0}, 3),
    Case("unipc (order 3)", "unipc", {}, 3),
    Case("plms", "plms", {}, 4),
    Case("ode_adaptive (dopri5)", "ode_adaptive", tolerances=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)),
    Case("ddpm", "ddpm"),
    Case("ddim (eta=1)", "ddim", {"eta": 1.0}),
    Case("euler_ancestral", "euler_ancestral"),
    Case("heun (churn 40)", "heun", {"s_churn": 40.0}),
    Case("dpmpp_2m_sde", "dpmpp_2m_sde"),
    Case("dpmpp_3m_sde", "dpmpp_3m_sde"),
    Case("euler_maruyama", "euler_maruyama"),
    Case("pc (expected norms)", "pc", {"snr": 0.16, "norms": "expected"}),
    Case("annealed_langevin", "annealed_langevin", {"steps_per_level": 10}),
)


@dataclass
class Row:
    case: Case
    nfe: list[int]  # calls per run, one per entry of steps
    errors: list[float]  # RMS endpoint error vs the reference solve (deterministic only)
    order: float | None  # fitted order (deterministic only)
    distance: float  # sliced W2 to true samples at the largest step count
    seconds: float
    passed: bool


@dataclass
class Report:
    rows: list[Row]
    steps: list[int]
    floor: float  # sliced W2 between independent true sets (mean)
    floor_std: float
    margin: float  # a stochastic sampler passes if distance <= margin * floor
    order_slack: float  # a deterministic sampler passes if order >= theory - slack
    tolerance_factor: float  # an adaptive solver passes if error <= factor * tolerance at every tolerance


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 between two equal-size sample sets (n, *shape)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    if a.shape != b.shape:
        raise ValueError(f"need equal-size sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(dim=0).values, (b @ dirs).sort(dim=0).values  # (n, P)
    return ((pa - pb) ** 2).mean().sqrt().item()


def fit_order(steps: list[int], errors: list[float]) -> float:
    """p in error ~ C steps^-p, least squares in log-log."""
    slope = np.polyfit(np.log(steps), np.log(np.maximum(errors, 1e-300)), 1)[0]
    return float(-slope)


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (the NFE a sampler spends)."""

    def __init__(self, denoise):
        self.denoise, self.calls = denoise, 0

    def __call__(self, x, t, cond=None):
        self.calls += 1
        return self.denoise(x, t, cond)


def measure(mixture: GaussianMixture, schedule: Schedule, *, steps=(16, 32, 64, 128, 256, 512),
            stochastic_steps: int = 1024,
            n: int = 2000, spacing: str = "logsnr", seed: int = 0, cases=CASES, margin: float = 1.5,
            order_slack: float = 0.2, tolerance_factor: float = 100.0, progress=None) -> Report:
    """Run every case on the oracle. `progress(label)` is called before each case."""
    steps = sorted(steps)
    if len(steps) < 2 or steps[0] < 1:
        raise ValueError(f"need at least two step counts >= 1, got {steps}")
    g = torch.Generator().manual_seed(seed)
    x_T, _ = mixture.marginal(schedule, 1.0).sample(n, g)  # exact p_1
    truth = [mixture.sample(n, g)[0] for _ in range(6)]
    floors = [sliced_wasserstein(truth[0], other, seed=k) for k, other in enumerate(truth[1:])]
    floor, floor_std = float(np.mean(floors)), float(np.std(floors))
    denoise = mixture.denoiser(schedule)
    grids = {s: time_grid(schedule, s, spacing) for s in set(steps) | {stochastic_steps}}
    reference = ode_adaptive(denoise, schedule, x_T, grids[steps[0]], rtol=1e-12, atol=1e-12,
                             max_nfe=10**7)  # the reference: as many calls as it takes

    rows = []
    for case in cases:
        if progress:
            progress(case.label)
        start = time.perf_counter()
        sampler = get_sampler(case.sampler)
        deterministic = case.order is not None or bool(case.tolerances)
        runs = ([(steps[0], {"rtol": tol, "atol": tol}) for tol in case.tolerances] if case.tolerances
                else [(s, {}) for s in steps] if deterministic else [(stochastic_steps, {})])
        nfe, errors, out = [], [], None
        for s, extra in runs:
            counter = CountingDenoiser(denoise)
            out = sampler(counter, schedule, x_T, grids[s], generator=torch.Generator().manual_seed(seed + s),
                          **case.options, **extra)
            nfe.append(counter.calls)
            errors.append(((out - reference) ** 2).mean().sqrt().item())
        distance = sliced_wasserstein(out, truth[0], seed=99)
        order = None
        if case.tolerances:
            passed = all(e <= tolerance_factor * tol for e, tol in zip(errors, case.tolerances))
        elif case.order is not None:
            order = fit_order(steps[-3:], errors[-3:])  # the asymptotic regime
            passed = order >= case.order - order_slack
        else:
            errors = []
            passed = distance <= margin * floor
        rows.append(Row(case, nfe, errors, order, distance, time.perf_counter() - start, passed))
    return Report(rows, list(steps), floor, floor_std, margin, order_slack, tolerance_factor)


def format_report(report: Report) -> str:
    """The report as an aligned text table."""
    head = (f"{'sampler':<20} {'NFE':>12} {'endpoint RMS error vs reference (per step count)':<52} "
            f"{'order':>6} {'theory':>6} {'SW2 to truth':>12} {'check':>6}")
    lines = [head, "-" * len(head)]
    for r in report.rows:
        nfe = f"{r.nfe[0]}..{r.nfe[-1]}" if len(r.nfe) > 1 else str(r.nfe[0])
        errs = " ".join(f"{e:.1e}" for e in r.errors) if r.errors else "(stochastic)"
        order = f"{r.order:.2f}" if r.order is not None else "-"
        theory = f"{r.case.order:g}" if r.case.order is not None else "tol" if r.case.tolerances else "-"
        lines.append(f"{r.case.label:<20} {nfe:>12} {errs:<52} {order:>6} {theory:>6} "
                     f"{r.distance:>12.4f} {'ok' if r.passed else 'FAIL':>6}")
    lines.append(f"steps {report.steps} (deterministic), noise floor SW2 {report.floor:.4f} ± {report.floor_std:.4f}; "
                 f"stochastic pass: SW2 <= {report.margin:g} x floor; deterministic pass: order >= theory - "
                 f"{report.order_slack:g}; adaptive pass: error <= {report.tolerance_factor:g} x tolerance "
                 "(tolerances 1e-3 .. 1e-8)")
    return "\n".join(lines)


def report_ok(report: Report) -> bool:
    return all(r.passed for r in report.rows)


__all__ = ["CASES", "Case", "CountingDenoiser", "Report", "Row", "fit_order", "format_report", "measure", "report_ok",
           "sliced_wasserstein"]
