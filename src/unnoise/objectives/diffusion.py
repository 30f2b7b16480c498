"""The diffusion objective: denoising score matching on x_t = alpha x0 + sigma eps (unnoise.losses),
with class-label and caption dropout for classifier-free guidance (Ho & Salimans 2022, §3.2: one
network learns the conditional and, on the null condition, the unconditional model).

A latent model ([latent] autoencoder) trains on its autoencoder's latents: every example is encoded
once (unnoise.latent), and the autoencoder's weight hash is recorded in the config every checkpoint
saves, so a latent model never meets another autoencoder (when sampled, or when resumed).
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch
from torch import Tensor, nn

from unnoise.checkpoint import load_checkpoint, run_config
from unnoise.conditioning import Condition, null_labels
from unnoise.config import RunConfig
from unnoise.coupling import ot_pairing
from unnoise.data import load_dataset
from unnoise.data.hints import hint_channels, make_hints
from unnoise.latent import LatentSpace, encode_dataset, space_for
from unnoise.losses import DiffusionLoss
from unnoise.models import ControlNet, ControlNetConfig, build_model
from unnoise.objectives.base import Batch, LossOutput, ObjectiveBase, RunContext
from unnoise.outputs import sample_record, write_samples
from unnoise.parameterization import parameterization_of
from unnoise.pipeline import Pipeline
from unnoise.schedules import get_schedule
from unnoise.straightness import straightness
from unnoise.text import CaptionBank, load_text_encoder

STRAIGHTNESS_PATHS, STRAIGHTNESS_STEPS = 64, 50  # what a flow run's final report measures S on


class DiffusionObjective(ObjectiveBase):
    def __init__(self, config: RunConfig, run: RunContext, dataset=None):
        """dataset: the examples to train on (None: the config's [data])."""
        self.setup(config, run, dataset)
        d = self.config.diffusion
        if d.parameterization in ("eps", "edm") and self.schedule.alpha(1.0).item() == 0:
            raise ValueError(f"{d.parameterization} cannot be trained on schedule {self.schedule.name!r}, whose "
                             "alpha(1) = 0: use v or velocity")
        if d.parameterization == "consistency":
            raise ValueError("a consistency model trains with train.objective = \"cd\" (unnoise distill) or \"ct\", "
                             "not on the denoising loss")
        self.loss_fn = DiffusionLoss(self.schedule, self.parameterization, config.loss)

    def setup(self, config: RunConfig, run: RunContext, dataset=None, in_model_space: bool = False) -> None:
        """What every objective that trains a denoiser needs: the data (as latents for a latent
        model, unless they are in the model's space already), the network, the schedule and
        parameterisation, the encoded captions."""
        self.run = run
        self.schedule = get_schedule(config.diffusion.schedule)
        self.parameterization = parameterization_of(config.diffusion, self.schedule)
        dataset = load_dataset(config.data) if dataset is None else dataset
        space = space_for(config, run.device)
        if isinstance(space, LatentSpace):  # encode once; the hash names the autoencoder in every checkpoint
            config = _record_autoencoder(config, space.sha256)
            if run.resume is not None:  # checked before the encoding work
                _check_autoencoder(run.resume, space.sha256)
            if not in_model_space:
                dataset = encode_dataset(space, dataset, progress=run.main and not run.quiet)
        _check_shape(config, dataset)
        if space.constrained and config.loss.coupling == "ot":  # a pairing would give noise another molecule's atoms
            raise ValueError("loss.coupling = \"ot\" pairs noise with other examples; point sets of different atoms "
                             "cannot trade noise: use \"independent\"")
        self.config, self.dataset, self.space = config, dataset, space
        self.hints = _hints(config, dataset)
        self.network = build_model(config.model).to(run.device, run.dtype)
        if isinstance(config.model, ControlNetConfig) and not config.train.init and run.resume is None:
            raise ValueError("a ControlNet controls a trained U-Net: name its run in [train] init")
        if config.train.init and run.resume is None:  # on resume the checkpoint holds the weights
            initialise(self.network, config)
        self.bank = _caption_bank(config, dataset, run.device)  # every caption encoded once
        self.prompts = self._grid_prompts()

    def draw(self, index: Tensor, generator: torch.Generator, step: int) -> Batch:
        """x0, times, noise and the (dropped) condition of a global batch; caption id 0 is the empty
        prompt and label num_classes the null label: the null condition guidance samples with."""
        x0, labels = self.dataset.batch(index)
        t = self.loss_fn.sample_times(len(x0), generator)
        own = self.dataset.conditions(index)  # fields of the examples themselves (a molecule's atoms)
        own = Condition(**own) if own else None
        noise = self.space.project(torch.randn(x0.shape, generator=generator), own)  # a point set: zero-centre noise
        if self.config.loss.coupling == "ot":
            noise = noise[ot_pairing(x0, noise)]
        batch = {"x0": x0, "t": t, "noise": noise, "own": own, **self._hint(index, generator)}
        return self.with_condition(batch, index, labels, generator)

    def _hint(self, index: Tensor, generator: torch.Generator) -> Batch:
        """The batch's hints; with [loss] hint_noise, each noised to its own level s ~ U(0, hint_noise)
        by the forward process (conditioning augmentation, Ho et al. 2022, §4.2), s given to the network."""
        if self.hints is None:
            return {"hint": None, "hint_noise": None}
        hint, top = self.hints[index], self.config.loss.hint_noise
        if top == 0:
            return {"hint": hint, "hint_noise": None}
        s = torch.rand(len(index), generator=generator, dtype=torch.float64) * top
        noised = self.schedule.noised(hint, s, torch.randn(hint.shape, generator=generator))
        return {"hint": noised, "hint_noise": s.float()}

    def with_condition(self, batch: Batch, index: Tensor, labels: Tensor, generator: torch.Generator) -> Batch:
        """The batch with its (dropped) labels and caption ids: a conditional model's."""
        interface = self.config.model.interface
        n = len(index)
        batch = {**batch, "labels": None, "caption_ids": None}
        if interface.conditional:  # one mask drops labels and captions together: the null pair guidance uses
            drop = torch.rand(n, generator=generator) < self.config.train.label_dropout
            if interface.num_classes:  # an example without a label (-1) trains the unconditional model, as dropped
                batch["labels"] = torch.where(drop | (labels < 0), null_labels(interface.num_classes, n), labels)
            if self.bank is not None:
                batch["caption_ids"] = torch.where(drop, 0, self.dataset.captions.draw(index, generator))
        return batch

    def condition(self, batch: Batch) -> Condition | None:
        """The batch's condition (labels, encoded captions, the hint image, the examples' own fields such
        as a molecule's atoms), on this rank's rows only."""
        labels, ids, own = batch["labels"], batch["caption_ids"], batch.get("own")
        extra = {"image": batch.get("hint"), "image_noise": batch.get("hint_noise")}
        if own is not None:
            extra.update({f.name: getattr(own, f.name) for f in fields(own) if getattr(own, f.name) is not None})
        if ids is not None:
            return replace(self.bank.cond(ids, labels=labels), **extra)
        given = labels is not None or any(v is not None for v in extra.values())
        return Condition(labels=labels, **extra) if given else None

    def null_condition(self) -> Condition | None:
        """The null condition, one row (the null label, the empty prompt), or None for an
        unconditional model: what a guided teacher's unconditional branch sees."""
        interface = self.config.model.interface
        labels = null_labels(interface.num_classes, 1, self.run.device) if interface.num_classes else None
        if self.bank is not None:
            return self.bank.cond(torch.zeros(1, dtype=torch.long), labels=labels)
        return Condition(labels=labels) if labels is not None else None

    def loss(self, net: nn.Module, batch: Batch, step: int) -> LossOutput:
        x0, noise = batch["x0"].to(self.run.dtype), batch["noise"].to(self.run.dtype)
        return LossOutput(self.loss_fn(net, x0, self.condition(batch), noise=noise, t=batch["t"]).mean())

    def report(self, weights: dict[str, Tensor], step: int, final: bool) -> dict:
        """A grid of [sample] n samples from the EMA weights (fixed seeds)."""
        pipe = Pipeline.from_weights(self.config, weights, self.run.device, source=str(self.run.out), step=step)
        n = self.config.sample.n
        hints = None if self.hints is None else Condition(image=self.hints[torch.arange(n) % len(self.hints)])
        x = pipe.sample(n, prompts=self.prompts, cond=hints, progress=False)
        path = self.run.out / ("samples.png" if final else f"samples_{step:08d}.png")
        labels, prompts = pipe.per_sample(n, prompts=self.prompts)
        written = write_samples(pipe.modality, x, path, sample_record(pipe, pipe.settings()), labels, prompts,
                                classes=pipe.classes, rendering=pipe.rendering)
        if not (final and self.schedule.name == "flow"):
            return {"samples": str(written)}
        # a flow's straightness (Liu et al. 2022, Def. 3.6): how far one Euler step is from its ODE
        paths = min(n, STRAIGHTNESS_PATHS)
        return {"samples": str(written), f"straightness ({paths} paths, {STRAIGHTNESS_STEPS} steps)":
                straightness(pipe, paths, steps=STRAIGHTNESS_STEPS, prompts=self.prompts, progress=False)}

    def _grid_prompts(self) -> tuple[str, ...] | None:
        """A text model's grid prompts: the config's, else the first caption of the first 8 distinct images."""
        if self.bank is None:
            return None
        first = self.dataset.captions.ids[:, 0].unique()[:8].tolist()
        return self.config.sample.prompts or tuple(self.bank.texts[i] for i in first)


def initialise(network: nn.Module, config: RunConfig) -> None:
    """[train] init: start from another run's EMA weights, checked to fit (the same network and
    diffusion); a ControlNet takes them as its frozen base, and its trainable copy starts as the base."""
    ckpt = load_checkpoint(config.train.init, with_state=False)
    other = run_config(ckpt)
    control = isinstance(network, ControlNet)
    mine = config.model.unet if control else config.model
    if other.model != mine:
        raise ValueError(f"train.init {config.train.init} holds another network than [model] describes"
                         f"{' (a ControlNet: its base U-Net)' if control else ''}: give its preset and fields")
    d, e = config.diffusion, other.diffusion
    if (d.schedule, d.parameterization) != (e.schedule, e.parameterization):
        raise ValueError(f"train.init {config.train.init} was trained on schedule {e.schedule!r} with "
                         f"{e.parameterization!r}, this run on {d.schedule!r} with {d.parameterization!r}")
    (network.base if control else network).load_state_dict(ckpt.ema)
    if control:
        network.init_from_base()


def _hints(config: RunConfig, dataset) -> Tensor | None:
    """[data] hint: every image's hint (N, C_hint, H, W), computed once; checked against the network."""
    kind, wanted = config.data.hint, config.model.interface.hint_channels
    if kind == "none":
        if wanted:
            raise ValueError(f"the network reads a hint of {wanted} channels: set [data] hint (edges or lowres)")
        return None
    if config.latent.autoencoder or not hasattr(dataset, "images"):
        raise ValueError("[data] hint needs a pixel model of images (not latents, points or signals)")
    have = hint_channels(kind, dataset.images.shape[1])
    if have != wanted:
        raise ValueError(f"[data] hint = {kind!r} gives {have} channels, the network reads {wanted} "
                         "(model.hint_channels or model.cond_channels)")
    if config.loss.hint_noise and isinstance(config.model, ControlNetConfig):
        raise ValueError("loss.hint_noise augments a super-resolution model's input; a ControlNet's hint takes none")
    return make_hints(dataset.images, kind, config.data.hint_factor)


def independent_noise_only(config: RunConfig) -> None:
    """Objectives that pair their own noise (a teacher's ODE, reflow's pairs) refuse loss.coupling."""
    if config.loss.coupling != "independent":
        raise ValueError(f"loss.coupling = {config.loss.coupling!r} pairs data and noise for the denoising objective; "
                         f"train.objective = {config.train.objective!r} draws its own pairs: use \"independent\"")


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

