"""The noise-aware classifier objective (Dhariwal & Nichol 2021, §4): the cross-entropy of the true
label from x_t = alpha x0 + sigma eps, at times drawn as the [loss] section says, seen through the
run's parameterisation exactly as a diffusion network sees its inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unnoise.classifier import accuracy_by_noise, build_classifier
from unnoise.config import RunConfig
from unnoise.data import eval_split, load_dataset
from unnoise.files import write_text_atomic
from unnoise.losses import DiffusionLoss
from unnoise.models import build_model
from unnoise.objectives.base import Batch, LossOutput, ObjectiveBase, RunContext
from unnoise.parameterization import parameterization_of, path_point
from unnoise.schedules import get_schedule


class ClassifierLoss(DiffusionLoss):
    """Per-example cross-entropy (B,) of the classifier on x_t; times and noise as DiffusionLoss draws them."""

    def __call__(self, net, x0: Tensor, labels: Tensor, generator: torch.Generator | None = None,
                 noise: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        t = self.sample_times(x0.shape[0], generator) if t is None else t
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device) if noise is None else noise
        p = path_point(self.schedule, t.to(x0.device, x0.dtype), x0.ndim, derivatives=False)
        x_in, t_in = self.parameterization.network_inputs(p.alpha * x0 + p.sigma * eps, p)
        return F.cross_entropy(net(x_in, t_in).float(), labels, reduction="none")


class ClassifierObjective(ObjectiveBase):
    def __init__(self, config: RunConfig, run: RunContext):
        dataset = load_dataset(config.data)
        classes = config.model.out_channels
        labels = dataset.labels
        if not 0 <= int(labels.min()) <= int(labels.max()) < classes:
            raise ValueError(f"a classifier with out_channels={classes} needs labels in 0..{classes - 1}; "
                             f"{config.data.name} has {int(labels.min())}..{int(labels.max())} (-1: unlabelled)")
        d = config.diffusion
        self.config, self.run, self.dataset = config, run, dataset
        self.network = build_model(config.model).to(run.device, run.dtype)
        self.loss_fn = ClassifierLoss(get_schedule(d.schedule), parameterization_of(d, get_schedule(d.schedule)),
                                      config.loss)

    def draw(self, index: Tensor, generator: torch.Generator, step: int) -> Batch:
        x0, labels = self.dataset.batch(index)
        t = self.loss_fn.sample_times(len(x0), generator)
        return {"x0": x0, "t": t, "noise": torch.randn(x0.shape, generator=generator), "labels": labels}

    def loss(self, net: nn.Module, batch: Batch, step: int) -> LossOutput:
        x0, noise = batch["x0"].to(self.run.dtype), batch["noise"].to(self.run.dtype)
        return LossOutput(self.loss_fn(net, x0, batch["labels"], noise=noise, t=batch["t"]).mean())

    def report(self, weights: dict[str, Tensor], step: int, final: bool) -> dict:
        """Held-out accuracy by noise level, written to accuracy.json (at the end of the run)."""
        if not final:
            return {}
        split = eval_split(self.config.data.name)
        test = load_dataset(replace(self.config.data, split=split))
        x, labels = test.batch(torch.arange(len(test)))
        accuracy = accuracy_by_noise(build_classifier(self.config, weights, self.run.device), x, labels)
        result = {"split": split, "images": len(test), "accuracy by sigma~": accuracy}
        write_text_atomic(self.run.out / "accuracy.json", json.dumps(result, indent=1) + "\n")
        return {"accuracy": accuracy}
