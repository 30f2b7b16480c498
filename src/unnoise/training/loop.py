"""The training loop: one plain loop, read top to bottom, for every kind of run.

    summary = train(config)                       # the objective the config's network asks for
    summary = train(config, make_objective=...)   # any other objective (unnoise.objectives.base)

The loop owns what every run needs: processes (DDP under torchrun), the optimiser with learning-rate
warm-up, gradient clipping, skipping non-finite steps, mixed precision, the EMA, logs, pictures,
atomic checkpoints and exact resume. What a run optimises is its objective's business: the loop
never asks which kind of run it is.

Reproducibility: the data order of epoch e is a permutation drawn from (seed, 1, e); everything an
objective draws for the k-th global batch (times, noise, label dropout) comes from a generator seeded
by (seed, 2, k). A resumed run therefore draws exactly what an uninterrupted one would, and under DDP
each rank takes its rows of the same global batch, so N processes compute what one computes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from unnoise.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from unnoise.config import RunConfig, check_paths, to_dict
from unnoise.objectives import Batch, Objective, RunContext, objective_for
from unnoise.plots import plot_loss
from unnoise.resume_state import check_count, check_optimizer, check_rng, check_weights
from unnoise.training.distributed import setup_distributed, unwrap
from unnoise.training.ema import EMA, ema_decay


@dataclass
class TrainSummary:
    step: int  # optimiser steps done, in all invocations of the run
    trained: int  # of which this invocation trained
    skipped: int  # non-finite steps skipped, in all invocations
    stopped: str  # why the loop ended
    seconds: float  # this invocation's wall-clock time
    out: str  # the run folder
    checkpoints: list[str]  # complete checkpoints, oldest first
    report: dict = field(default_factory=dict)  # the objective's final report (sample grid, accuracy, ...)


def train(config: RunConfig, make_objective: Callable[[RunConfig, RunContext], Objective] = objective_for,
          resume: str | None = None, device: str | None = None, quiet: bool = False) -> TrainSummary:
    """Train as configured; `resume`: "latest", a checkpoint path, or None."""
    tc = config.train
    # 1. Processes, the objective (its network identical on every rank), optimiser, EMA, resume.
    ddp, out, objective, optimizer, ema, state, batches = _prepare(config, make_objective, resume, device, quiet)
    model = objective.network
    net = ddp.wrap(model)
    net = torch.compile(net) if tc.compile else net
    local = ddp.local(tc.batch_size)

    # 2. The loop.
    step, first_step, skipped, in_a_row, stopped = state["step"], state["step"], state["skipped"], 0, "steps"
    log = _open_log(out / "log.jsonl") if ddp.main else None
    bar = tqdm(total=tc.steps, initial=step, disable=None if ddp.main and not quiet else True, desc="train")
    started = last_log = time.perf_counter()
    while step < tc.steps:
        # 2a. The global batch's randomness (every rank draws the same), this rank's rows of it.
        index, generator = batches.next()
        batch = take(objective.draw(index, generator, step), local, ddp.device)
        lr = tc.lr * min(1.0, (step + 1) / max(tc.warmup_steps, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        # 2b. Forward, backward, clipping, the finiteness check, the optimiser step.
        result, grad_norm, finite = _optimise(objective, net, model, optimizer, batch, step, tc, ddp.device.type)
        if finite:
            in_a_row = 0
            objective.after_step(batch, result, step)
            ema.update(model, ema_decay(step, tc.ema_decay, tc.ema_warmup))
            step += 1
            bar.update()
        else:  # skip: optimiser, EMA, learning-rate schedule and step counter stay as they were
            skipped, in_a_row = skipped + 1, in_a_row + 1
            _write(log, {"step": step, "skipped": skipped, "nonfinite": True})
        # 2c. Logs, pictures, checkpoints (rank 0 writes; the others only compute).
        if finite and (step % tc.log_every == 0 or step == tc.steps):  # averaged over ranks: every rank takes part
            now, loss = time.perf_counter(), ddp.mean(result.loss.detach()).item()
            rate, last_log = tc.log_every * tc.batch_size / max(now - last_log, 1e-9), now
            _write(log, _log_record(step, loss, result, lr, grad_norm, skipped, rate))
            bar.set_postfix(loss=f"{loss:.4f}")
        if finite and ddp.main and tc.sample_every and step % tc.sample_every == 0:
            with torch.random.fork_rng():  # pictures leave the training's random state as it was
                objective.report(ema.shadow, step, final=False)
        # every rank stops at the same step (a time limit is the same on all ranks: no all-reduce without one)
        out_of_time = bool(tc.max_seconds) and ddp.agree(time.perf_counter() - started > tc.max_seconds)
        stuck = in_a_row >= tc.max_nonfinite  # the last good state is saved: resume it with other settings
        if ddp.main and (finite and tc.checkpoint_every and step % tc.checkpoint_every == 0 or step == tc.steps
                         or out_of_time or stuck):
            _save(out, config, step, batches.position, skipped, model, ema, optimizer, objective, ddp.world)
        if out_of_time or stuck:
            stopped = f"{in_a_row} non-finite losses or gradients in a row" if stuck else \
                f"time limit of {tc.max_seconds:g} s"
            break
    bar.close()

    # 3. What the run made.
    summary = TrainSummary(step, step - first_step, skipped, stopped, time.perf_counter() - started, str(out),
                           [str(p) for p in list_checkpoints(out / "checkpoints")])
    _wrap_up(summary, log, objective, ema, ddp, stuck=in_a_row >= tc.max_nonfinite, lr=tc.lr)
    return summary


def _wrap_up(summary: TrainSummary, log, objective: Objective, ema: EMA, ddp, stuck: bool, lr: float) -> None:
    """Rank 0 closes the log, draws the loss and writes the final report; every rank waits for it
    (no rank tears down early); a run stopped by non-finite steps is an error."""
    out = Path(summary.out)
    if log:
        log.close()
        plot_loss(out / "log.jsonl", out / "loss.png")
        summary.report = objective.report(ema.shadow, summary.step, final=True)
    ddp.barrier()
    if stuck:
        raise TrainingStopped(f"training stopped at step {summary.step}: {summary.stopped} (learning rate {lr:g}; "
                              f"try a lower one, gradient clipping or bf16 off); step {summary.step} is saved in "
                              f"{out}/checkpoints")


def _optimise(objective: Objective, net: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              batch: Batch, step: int, tc, device_type: str):
    """Forward, backward (gradients all-reduced under DDP), clipping and the finiteness check; the
    optimiser steps only on a finite loss and gradient norm. Returns (result, grad_norm, finite)."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=tc.bf16):
        result = objective.loss(net, batch, step)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
    finite = bool(torch.isfinite(result.loss) and torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return result, grad_norm, finite


def _log_record(step: int, loss: float, result, lr: float, grad_norm, skipped: int, rate: float) -> dict:
    """One line of log.jsonl: the loss (averaged over ranks), the objective's own logs, the schedule."""
    logs = {k: float(torch.as_tensor(v).detach()) for k, v in result.logs.items()}
    return {"step": step, "loss": loss, **logs, "lr": lr, "grad_norm": grad_norm.item(), "skipped": skipped,
            "examples_per_s": round(rate, 2)}


def _prepare(config: RunConfig, make_objective: Callable, resume: str | None, device: str | None, quiet: bool):
    """Processes, the run folder, the objective (its network identical on every rank), the optimiser,
    the EMA and whatever a resume restores; the data order from the restored position."""
    tc = config.train
    check_paths(config)
    ddp = setup_distributed(device)
    if tc.batch_size % ddp.world:
        raise ValueError(f"batch_size {tc.batch_size} must be divisible by the {ddp.world} processes")
    out = Path(config.out)
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = _starting_checkpoint(out / "checkpoints", resume, ddp.main, quiet)
    run = RunContext(ddp.device, getattr(torch, tc.dtype), out, ddp.main, ddp.world, ddp.wrap, ddp.mean, quiet, ckpt)
    torch.manual_seed(tc.seed)
    objective = make_objective(config, run)
    ema = EMA(objective.network)
    # fused: one kernel for all parameters (4.6 ms a step for unet_base here, against 14.8 for the loop)
    optimizer = torch.optim.AdamW(objective.network.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    state = _restore(ckpt, objective.network, ema, optimizer, objective, ddp.world, ddp.main and not quiet)
    batches = Batches(len(objective.dataset), tc.batch_size, tc.seed, state["position"])
    return ddp, out, objective, optimizer, ema, state, batches


class TrainingStopped(RuntimeError):
    """Training could not go on (e.g. non-finite losses in a row); the last good state is saved."""


def _starting_checkpoint(folder: Path, resume: str | None, main: bool, quiet: bool):
    """The checkpoint to resume (None: a fresh run), with the run's checkpoint history made one line:
    a fresh run refuses a folder that holds checkpoints already (--resume latest continues them);
    resuming an older checkpoint starts a branch, and the newer checkpoints of the abandoned one are
    moved to <run>/abandoned/ (kept, never read by --resume latest, never pruned)."""
    existing = list_checkpoints(folder)
    if resume is None:
        if existing:
            raise ValueError(f"{folder.parent} holds checkpoints already (newest {existing[-1].name}): continue it "
                             "with --resume latest, or train into another folder (--out)")
        return None
    ckpt = load_checkpoint(folder if resume == "latest" else resume)
    newer = [p for p in existing if int(p.name.removeprefix("step_")) > ckpt.step] if main else []
    for path in newer:
        target = folder.parent / "abandoned" / path.name
        while target.exists():
            target = target.with_name(target.name + "+")
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
    if newer and not quiet:
        print(f"resuming step {ckpt.step} starts a branch: moved the newer {', '.join(p.name for p in newer)} "
              f"to {folder.parent / 'abandoned'}")
    return ckpt


def _open_log(path: Path):
    """The run's log for appending; a last line cut short (e.g. by a full disk) is ended first, so
    the records written now stay whole (the torn one is skipped where the log is read)."""
    log = path.open("a+b")
    if log.tell() > 0:
        log.seek(-1, 2)
        if log.read(1) != b"\n":
            log.write(b"\n")
    log.close()
    return path.open("a")


def _write(log, record: dict) -> None:
    if log is not None:
        log.write(json.dumps(record) + "\n")
        log.flush()


def _restore(ckpt, model, ema: EMA, optimizer, objective: Objective, world: int, talk: bool) -> dict:
    """Weights, EMA, optimiser, the objective's own state and the RNG from a checkpoint (None: a fresh
    run), each checked against the live objects before any is used (unnoise.resume_state); the step,
    data position and skipped count to continue from."""
    if ckpt is None:
        return {"step": 0, "position": 0, "skipped": 0}
    where, state = ckpt.path, ckpt.state
    check_weights(ckpt.model, model, f"{where}/model.safetensors")
    check_weights(ckpt.ema, model, f"{where}/ema.safetensors")
    check_optimizer(state.get("optimizer"), optimizer, f"{where}/state.json")
    rng = check_rng(state.get("torch_rng"), f"{where}/state.json")
    counts = {key: check_count(state, key, f"{where}/state.json", least) for key, least in
              (("step", 0), ("position", 0), ("skipped", 0), ("world", 1))}
    objective.load_state_dict(state.get("objective", {}))  # checks its own (unnoise.objectives.base)
    model.load_state_dict(ckpt.model)
    ema.shadow = {k: v.to(next(model.parameters()).device) for k, v in ckpt.ema.items()}
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(rng)
    if counts["world"] != world and talk:
        print(f"resuming a {counts['world']}-process run on {world}: data, noise and times follow the same "
              "global batches; dropout noise differs")
    return counts


def _save(out: Path, config: RunConfig, step: int, position: int, skipped: int, model, ema: EMA, optimizer,
          objective: Objective, world: int) -> None:
    """A complete checkpoint, written atomically: weights, EMA, the full resume state, the config the
    objective trains with (e.g. with its autoencoder's hash) and the objective's own entries."""
    state = {"optimizer": optimizer.state_dict(), "step": step, "position": position, "skipped": skipped,
             "torch_rng": torch.get_rng_state(), "world": world, "objective": objective.state_dict()}
    trained = objective.config
    with torch.random.fork_rng():  # measuring (e.g. a latent scale) leaves the training's random state as it was
        info = {"tree": trained.tree, "resolved": to_dict(trained), **objective.checkpoint_info(ema.shadow)}
    save_checkpoint(out / "checkpoints", step, unwrap(model).state_dict(), ema.shadow, state, info,
                    keep=config.train.keep_checkpoints)


# ---- reproducible global batches ---------------------------------------------------------------


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (NumPy's SeedSequence decorrelates them)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]))


class Batches:
    """Index batches of a data set of n examples; `position` (batches drawn so far) is the resume state."""

    def __init__(self, n: int, batch_size: int, seed: int, position: int = 0):
        if n < batch_size:
            raise ValueError(f"the data set has {n} examples, fewer than batch_size {batch_size}")
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self._epoch, self._perm = -1, None

    def _order(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=seeded_generator(self.seed, 1, epoch))
        return self._perm

    def next(self) -> tuple[Tensor, torch.Generator]:
        """The next global batch's example indices (B,) and the generator of its randomness."""
        per_epoch = self.n // self.batch_size  # drop the ragged end of each epoch
        epoch, k = divmod(self.position, per_epoch)
        index = self._order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        self.position += 1
        return index, seeded_generator(self.seed, 2, self.position)


def take(batch: Batch, rows: slice, device: torch.device) -> Batch:
    """This rank's rows of a global batch, on its device."""
    return {key: None if value is None else value[rows].to(device) for key, value in batch.items()}
