"""What differs between kinds of run: the objective. The loop (unnoise.training.loop) owns everything
else (processes, optimiser, EMA, clipping, non-finite skips, logs, checkpoints, resume), so a new
method is a new objective and the loop never changes.

    objective = make(config, run)        # run: a RunContext (device, processes, precision, output folder)
    objective.network                    # the module the loop optimises, averages (EMA) and checkpoints
    objective.dataset                    # what the loop draws example indices from
    batch = objective.draw(index, g, s)  # ALL randomness of global batch s (0-based), on the CPU, from g
    out = objective.loss(net, batch, s)  # on this rank's rows: LossOutput(loss, logs)
    objective.after_step(batch, out, s)  # after the optimiser step: a discriminator, a target network
    objective.report(ema, s, final)      # what a person looks at: sample grids, accuracy, reconstructions
    objective.checkpoint_info(ema)       # extra entries for a checkpoint's config.json
    objective.state_dict()               # extra resume state (a discriminator and its optimiser)
    objective.load_state_dict(state)     # ... restored: it comes from a file, so check it first (resume_state)

Drawing the global batch's randomness in `draw` and computing on a slice in `loss` is what makes
N processes compute what one computes, and a resumed run what an uninterrupted one computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from unnoise.conditioning import Condition

Batch = dict[str, Tensor | Condition | None]  # what an objective draws: tensors and conditions, (B, ...) each


@dataclass(frozen=True)
class RunContext:
    """What an objective needs to know about the run it is part of."""

    device: torch.device  # where this process computes
    dtype: torch.dtype  # parameter and data precision
    out: Path  # the run folder
    main: bool = True  # rank 0: the process that writes files
    world: int = 1  # processes in the run
    wrap: Callable[[nn.Module], nn.Module] = lambda module: module  # DDP for a second trained module
    mean: Callable[[Tensor], Tensor] = lambda tensor: tensor  # the mean over processes (all-reduce)
    quiet: bool = False  # no progress bars
    resume: Any = None  # the checkpoint being resumed (unnoise.checkpoint.Checkpoint), for checks before work


@dataclass
class LossOutput:
    loss: Tensor  # scalar: what the loop back-propagates into the network
    logs: dict[str, Tensor | float] = field(default_factory=dict)  # extra values to log (read at log time)
    extras: dict[str, Any] = field(default_factory=dict)  # what after_step needs from this step


class Objective(Protocol):
    config: Any  # the RunConfig as the objective trains with it (checkpoints save this one)
    network: nn.Module  # what the loop optimises, averages and checkpoints
    dataset: Any  # a data set (unnoise.data): len(), batch(index), sample_shape

    def draw(self, index: Tensor, generator: torch.Generator, step: int) -> Batch: ...

    def loss(self, net: nn.Module, batch: Batch, step: int) -> LossOutput: ...

    def after_step(self, batch: Batch, out: LossOutput, step: int) -> None: ...

    def report(self, weights: dict[str, Tensor], step: int, final: bool) -> dict: ...

    def checkpoint_info(self, weights: dict[str, Tensor]) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ObjectiveBase:
    """Defaults for the optional parts: nothing after the step, nothing extra to save."""

    def after_step(self, batch: Batch, out: LossOutput, step: int) -> None:
        return None

    def checkpoint_info(self, weights: dict[str, Tensor]) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
