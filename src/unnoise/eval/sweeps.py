"""Quality against NFE: every sampler at every budget of network evaluations (FD and KID of opts.n
samples each), the best sampler per budget, and the Markdown table and Pareto plot of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from unnoise.convergence import CountingDenoiser
from unnoise.eval.options import EvalOptions, Job, open_job
from unnoise.eval.reference import reference_prompts
from unnoise.eval.samples import draw, sample_metrics
from unnoise.files import write_text_atomic
from unnoise.grids import time_grid
from unnoise.oracle import GaussianMixture
from unnoise.plots import plot_sweep
from unnoise.samplers import get_sampler
from unnoise.schedules import get_schedule

SWEEP_NFE = (1, 2, 3, 4, 6, 8, 10, 15, 20, 30, 50, 100)
ADAPTIVE_TOLERANCES = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4)  # ode_adaptive's NFE is its tolerance's


@dataclass(frozen=True)
class SweepRow:
    """One sampler at one step count (or, for ode_adaptive, one tolerance)."""

    sampler: str
    steps: int
    nfe: int | float  # network calls per sample (averaged over batches where it varies)
    fd: float
    kid: float
    kid_se: float
    seconds: float  # per sample
    tolerance: float | None = None  # ode_adaptive's rtol = atol

    def to_json(self) -> dict:
        """The row as sweep.json holds it."""
        return {"sampler": self.sampler, "steps": self.steps, "nfe": self.nfe,
                **({"tolerance": self.tolerance} if self.tolerance is not None else {}),
                "FD": self.fd, "KID": self.kid, "KID se": self.kid_se, "seconds per sample": self.seconds}


def steps_for_nfe(sampler: str, budget: int, cache: dict, schedule_name: str = "edm",
                  spacing: str = "karras") -> tuple[int, int] | None:
    """The largest step count whose NFE fits the budget, and that NFE (counted on a tiny oracle with
    the run's schedule and spacing)."""
    schedule = get_schedule(schedule_name)
    oracle = GaussianMixture.random(2, 2, seed=0).denoiser(schedule)
    best = None
    for steps in range(1, budget + 1):
        if (sampler, steps) not in cache:
            counter = CountingDenoiser(oracle)
            try:
                x = torch.randn(2, 2, dtype=torch.float64) * schedule.sigma(1.0).item()
                get_sampler(sampler)(counter, schedule, x, time_grid(schedule, steps, spacing),
                                     generator=torch.Generator().manual_seed(0))
                cache[(sampler, steps)] = counter.calls
            except ValueError:  # e.g. more steps of warm-up than the sampler can take
                cache[(sampler, steps)] = None
        nfe = cache[(sampler, steps)]
        if nfe is not None and nfe <= budget:
            best = (steps, nfe)
        elif nfe is not None and nfe > budget:
            break
    return best


def _plan(job: Job, samplers: list[str], budgets) -> list[tuple[str, int, dict | None]]:
    """(sampler, steps, options) of every run of the sweep."""
    plan, cache = [], {}
    for s in samplers:
        if s == "ode_adaptive":
            plan += [(s, 2, {"rtol": tol, "atol": tol}) for tol in ADAPTIVE_TOLERANCES]
            continue
        chosen = {steps_for_nfe(s, b, cache, job.config.diffusion.schedule, job.spacing) for b in budgets} - {None}
        plan += [(s, steps, None) for steps, _ in sorted(chosen)]
    return plan


def sweep(checkpoint: str | Path, opts: EvalOptions, samplers: list[str], budgets=SWEEP_NFE, device=None,
          progress: bool = True, out: Path | None = None) -> tuple[list[SweepRow], Path, Path]:
    """Every sampler at every NFE budget: FD and KID of opts.n samples each; JSON, table and Pareto PNG."""
    for s in samplers:
        get_sampler(s)
    job = open_job(checkpoint, opts, device)  # no classifier: a sweep compares the samplers alone
    prompts, _ = reference_prompts(job.config, job.ref, opts.n, opts.seed)
    rows = []
    for s, steps, options in tqdm(_plan(job, samplers, budgets), desc="sweep", disable=not progress):
        images, labels, nfe, seconds = draw(job.pipe, opts.n, **job.sampling(sampler=s, steps=steps), options=options,
                                            progress=progress, desc=f"{s} {steps} steps", prompts=prompts)
        m = sample_metrics(images, labels, job.ref, job.feats, ("fd", "kid"))
        rows.append(SweepRow(s, steps, nfe, m.fd, m.kid, m.kid_se, seconds, options["rtol"] if options else None))
    out = out or job.path
    meta = {"checkpoint": str(job.path), "features": job.feats.name, "reference": job.ref.split, "n": opts.n,
            "spacing": job.spacing, "guidance": job.guidance, "seed": opts.seed}
    table = [r.to_json() for r in rows]
    json_path = write_text_atomic(out / f"sweep{opts.suffix}.json", json.dumps({**meta, "rows": table}, indent=1) + "\n")
    png = plot_sweep(table, out / f"sweep{opts.suffix}.png", f"FD[{job.feats.name}]",
                     f"{job.config.data.name}, step {job.pipe.step}, n = {opts.n}, {job.spacing} grid, "
                     f"guidance {job.guidance}")
    return rows, json_path, png


def at_budget(rows: list[SweepRow], budget: int) -> dict[str, SweepRow]:
    """Each sampler's run with the most NFE within the budget."""
    out: dict[str, SweepRow] = {}
    for r in rows:
        if r.nfe <= budget and (r.sampler not in out or r.nfe > out[r.sampler].nfe):
            out[r.sampler] = r
    return out


def best_per_budget(rows: list[SweepRow], budgets=SWEEP_NFE) -> dict[int, SweepRow]:
    """For each budget, the sampler whose run at that budget has the lowest FD."""
    return {b: min(runs.values(), key=lambda r: r.fd) for b in budgets if (runs := at_budget(rows, b))}


def format_sweep(rows: list[SweepRow], budgets=SWEEP_NFE) -> str:
    """Markdown: FD per sampler (rows) at each NFE budget (columns; the NFE actually spent in
    parentheses where it falls short of the budget); the best sampler per budget in bold."""
    best = best_per_budget(rows, budgets)
    samplers = list(dict.fromkeys(r.sampler for r in rows))
    lines = ["| sampler | " + " | ".join(f"≤{b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for s in samplers:
        cells = []
        for b in budgets:
            r = at_budget(rows, b).get(s)
            if r is None:
                cells.append("")
                continue
            text = f"{r.fd:.3g}" + (f" ({r.nfe})" if r.nfe != b else "")
            cells.append(f"**{text}**" if best.get(b) is r else text)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
