"""The diffusion objective: denoising score matching on x_t = alpha x0 + sigma eps (unnoise.losses),
with class-label and caption dropout for classifier-free guidance (Ho & Salimans 2022, §3.2: one
network learns the conditional and, on the null condition, the unconditional model).

A latent model ([latent] autoencoder) trains on its autoencoder's latents: every example is encoded
once (unnoise.latent), and the autoencoder's weight hash is recorded in the config every checkpoint
saves, so a latent model never meets another autoencoder (when sampled, or when resumed).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from unnoise.conditioning import Condition, null_labels
from unnoise.config import RunConfig
from unnoise.data import load_dataset
from unnoise.latent import LatentSpace, encode_dataset, space_for
from unnoise.losses import DiffusionLoss
from unnoise.models import build_model
from unnoise.objectives.base import Batch, LossOutput, ObjectiveBase, RunContext
from unnoise.outputs import sample_record, write_samples
from unnoise.parameterization import get_parameterization
from unnoise.pipeline import Pipeline
from unnoise.schedules import get_schedule
from unnoise.text import CaptionBank, load_text_encoder


class DiffusionObjective(ObjectiveBase):
    def __init__(self, config: RunConfig, run: RunContext):
        d, self.run = config.diffusion, run
        schedule = get_schedule(d.schedule)
        if d.parameterization in ("eps", "edm") and schedule.alpha(1.0).item() == 0:
            raise ValueError(f"{d.parameterization} cannot be trained on schedule {schedule.name!r}, whose "
                             "alpha(1) = 0: use v or velocity")
        dataset = load_dataset(config.data)
        space = space_for(config, run.device)
        if isinstance(space, LatentSpace):  # encode once; the hash names the autoencoder in every checkpoint
            config = _record_autoencoder(config, space.sha256)
            if run.resume is not None:  # checked before the encoding work
                _check_autoencoder(run.resume, space.sha256)
            dataset = encode_dataset(space, dataset, progress=run.main and not run.quiet)
        _check_shape(config, dataset)
        self.config, self.dataset = config, dataset
        self.network = build_model(config.model).to(run.device, run.dtype)
        self.loss_fn = DiffusionLoss(schedule, get_parameterization(d.parameterization, d.sigma_data), config.loss)
        self.bank = _caption_bank(config, dataset, run.device)  # every caption encoded once
        self.prompts = self._grid_prompts()

    def draw(self, index: Tensor, generator: torch.Generator, step: int) -> Batch:
        """x0, times, noise and the (dropped) condition of a global batch; caption id 0 is the empty
        prompt and label num_classes the null label: the null condition guidance samples with."""
        x0, labels = self.dataset.batch(index)
        t = self.loss_fn.sample_times(len(x0), generator)
        noise = torch.randn(x0.shape, generator=generator)
        interface = self.config.model.interface
        batch = {"x0": x0, "t": t, "noise": noise, "labels": None, "caption_ids": None}
        if interface.conditional:  # one mask drops labels and captions together: the null pair guidance uses
            drop = torch.rand(len(x0), generator=generator) < self.config.train.label_dropout
            if interface.num_classes:
                batch["labels"] = torch.where(drop, null_labels(interface.num_classes, len(x0)), labels)
            if self.bank is not None:
                batch["caption_ids"] = torch.where(drop, 0, self.dataset.captions.draw(index, generator))
        return batch

    def loss(self, net: nn.Module, batch: Batch, step: int) -> LossOutput:
        labels, ids = batch["labels"], batch["caption_ids"]
        if ids is not None:  # caption ids -> encoded text, on this rank's rows only
            cond = self.bank.cond(ids, labels=labels)
        else:
            cond = Condition(labels=labels) if labels is not None else None
        x0, noise = batch["x0"].to(self.run.dtype), batch["noise"].to(self.run.dtype)
        return LossOutput(self.loss_fn(net, x0, cond, noise=noise, t=batch["t"]).mean())

    def report(self, weights: dict[str, Tensor], step: int, final: bool) -> dict:
        """A grid of [sample] n samples from the EMA weights (fixed seeds)."""
        pipe = Pipeline.from_weights(self.config, weights, self.run.device, source=str(self.run.out), step=step)
        n = self.config.sample.n
        x = pipe.sample(n, prompts=self.prompts, progress=False)
        path = self.run.out / ("samples.png" if final else f"samples_{step:08d}.png")
        labels, prompts = pipe.per_sample(n, prompts=self.prompts)
        written = write_samples(pipe.modality, x, path, sample_record(pipe, pipe.settings()), labels, prompts,
                                classes=pipe.classes)
        return {"samples": str(written)}

    def _grid_prompts(self) -> tuple[str, ...] | None:
        """A text model's grid prompts: the config's, else the first caption of the first 8 distinct images."""
        if self.bank is None:
            return None
        first = self.dataset.captions.ids[:, 0].unique()[:8].tolist()
        return self.config.sample.prompts or tuple(self.bank.texts[i] for i in first)


def _check_autoencoder(ckpt, sha256: str) -> None:
    """A latent run resumes only with the autoencoder it was trained with (the hash its config recorded)."""
    recorded = ckpt.config["tree"].get("latent", {}).get("sha256", "")
    if recorded != sha256:
        raise ValueError(f"{ckpt.path} was trained with autoencoder weights {recorded[:12] or '(none)'}, this run has "
                         f"{sha256[:12]}: resume with the same autoencoder")


def _check_shape(config: RunConfig, dataset) -> None:
    shape = config.model.interface.sample_shape
    if tuple(dataset.sample_shape) != tuple(shape):
        raise ValueError(f"the data are {tuple(dataset.sample_shape)} per sample, the network reads {tuple(shape)}: "
                         "set [data] image_size / channels or the [model] shape to match")


def _record_autoencoder(config: RunConfig, sha256: str) -> RunConfig:
    """The config with the autoencoder's weight hash in [latent] (and in the tree checkpoints save)."""
    tree = {**config.tree, "latent": {**config.tree.get("latent", {}), "sha256": sha256}}
    return replace(config, latent=replace(config.latent, sha256=sha256), tree=tree)


def _caption_bank(config: RunConfig, dataset, device: torch.device) -> CaptionBank | None:
    """A text-conditioned run's encoded captions (None for other runs)."""
    width = config.model.interface.context_dim
    if not width:
        return None
    if dataset.captions is None:
        raise ValueError(f"[model] context_dim = {width} asks for text conditioning, but {config.data.name} has no "
                         "captions here (fashion-mnist: [data] captions = true; emoji has them)")
    encoder = load_text_encoder(config.text)
    if encoder.context_dim != width:
        raise ValueError(f"[model] context_dim must be the text encoder's width {encoder.context_dim}, got {width}")
    return CaptionBank.encode(encoder, dataset.captions.texts).to(device)

