"""The autoencoder objective of latent diffusion (Rombach et al. 2022): per example

    |x - x_hat|_1 + w_p perceptual(x, x_hat) + w_kl KL(q(z | x) || N(0, I)) / D
        + [step >= disc_start] w_d lambda (-D(x_hat))          lambda: Esser et al. 2021, eq. 7

and, after each optimiser step, the patch discriminator's hinge loss on the same batch (its own
AdamW; its weights and optimiser are part of the resume state). Every checkpoint records the latent
scale of its EMA weights, measured on `scale_images` training images (unnoise.latent). Under DDP the
adaptive weight is computed from gradients averaged over the ranks, as one process would compute it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unnoise.config import RunConfig
from unnoise.data import load_dataset
from unnoise.eval.reconstruction import write_reconstructions
from unnoise.features import PACKAGED, feature_net_for
from unnoise.latent import measure_scale
from unnoise.losses import (
    adaptive_weight,
    hinge_discriminator_loss,
    perceptual_loss,
    reconstruction_loss,
)
from unnoise.models.autoencoder import Autoencoder, PatchDiscriminator
from unnoise.objectives.base import Batch, LossOutput, ObjectiveBase, RunContext
from unnoise.resume_state import check_optimizer, check_weights


class AutoencoderObjective(ObjectiveBase):
    def __init__(self, config: RunConfig, run: RunContext):
        mc, lc = config.model, config.autoencoder
        if run.dtype != torch.float32:
            raise ValueError(f"an autoencoder trains in float32 (its perceptual network is float32); "
                             f"train.dtype must be float32, got {config.train.dtype}")
        dataset = load_dataset(config.data)
        if tuple(dataset.sample_shape) != mc.interface.sample_shape:
            raise ValueError(f"the data are {tuple(dataset.sample_shape)}, the autoencoder expects "
                             f"{mc.interface.sample_shape}: set [data] image_size / channels or [model] "
                             "in_channels / image_size")
        self.config, self.run, self.dataset = config, run, dataset
        self.network = Autoencoder(mc).to(run.device)
        self.disc = PatchDiscriminator(mc.in_channels, mc.disc_channels).to(run.device) if lc.disc_weight > 0 else None
        self.disc_net = run.wrap(self.disc) if self.disc is not None else None
        self.disc_opt = (torch.optim.AdamW(self.disc.parameters(), lr=lc.disc_lr, betas=(0.5, 0.9))
                         if self.disc is not None else None)
        self.feature_net = None
        if lc.perceptual_weight > 0:
            if config.data.name not in PACKAGED:
                raise ValueError(f"the perceptual term uses a packaged feature network ({', '.join(PACKAGED)}); "
                                 f"{config.data.name} has none: set autoencoder.perceptual_weight = 0")
            self.feature_net = feature_net_for(config.data, None, run.device).net.requires_grad_(False)
        self.pixels = math.prod(dataset.sample_shape)

    def draw(self, index: Tensor, generator: torch.Generator, step: int) -> Batch:
        x, _ = self.dataset.batch(index)
        return {"x": x, "noise": torch.randn((len(x), *self.config.model.latent_shape), generator=generator)}

    def loss(self, net: nn.Module, batch: Batch, step: int) -> LossOutput:
        x = batch["x"]
        x_hat, posterior = net(x, batch["noise"])  # under the loop's autocast when bf16 is on
        with torch.autocast(x.device.type, enabled=False):  # the loss terms in float32
            return self._terms(x, x_hat.float(), posterior, step)

    def _terms(self, x: Tensor, x_hat: Tensor, posterior, step: int) -> LossOutput:
        lc = self.config.autoencoder
        terms = {"rec": reconstruction_loss(x, x_hat).mean()}
        if self.feature_net is not None:
            terms["perceptual"] = perceptual_loss(self.feature_net, x, x_hat).mean()
        nll = terms["rec"] + lc.perceptual_weight * terms.get("perceptual", 0.0)
        terms["kl"] = posterior.kl().float().mean() / self.pixels
        loss = nll + lc.kl_weight * terms["kl"]
        adversarial = self.disc is not None and step >= lc.disc_start
        if adversarial:
            terms["g"] = -self.disc_net(x_hat).mean()
            terms["lambda"] = adaptive_weight(nll, terms["g"], self.network.last_layer, mean=self.run.mean)
            loss = loss + lc.disc_weight * terms["lambda"] * terms["g"]
        return LossOutput(loss, terms, {"x_hat": x_hat, "adversarial": adversarial})

    def after_step(self, batch: Batch, out: LossOutput, step: int) -> None:
        """The discriminator's step on the same batch, the reconstruction detached."""
        if out.extras["adversarial"]:
            d_loss = hinge_discriminator_loss(self.disc_net(batch["x"]), self.disc_net(out.extras["x_hat"].detach()))
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            out.logs["d"] = d_loss

    def checkpoint_info(self, weights: dict[str, Tensor]) -> dict:
        """The latent scale of these (EMA) weights, measured now (Rombach et al. 2022, Appendix G)."""
        averaged = Autoencoder(self.config.model).to(self.run.device)
        averaged.load_state_dict(weights)
        n = min(self.config.autoencoder.scale_images, len(self.dataset))
        images, _ = self.dataset.batch(torch.arange(n))
        return {"latent_scale": measure_scale(averaged.eval(), images, seed=self.config.train.seed)}

    def report(self, weights: dict[str, Tensor], step: int, final: bool) -> dict:
        return write_reconstructions(self.config, weights, self.run.out, self.run.device) if final else {}

    def state_dict(self) -> dict:
        if self.disc is None:
            return {}
        return {"discriminator": self.disc.state_dict(), "disc_optimizer": self.disc_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """The discriminator and its optimiser, each checked against the live ones before use."""
        if self.disc is None:
            return
        source = f"{self.run.resume.path}/state.json" if self.run.resume is not None else "the resume state"
        if not isinstance(state, dict) or not {"discriminator", "disc_optimizer"} <= set(state):
            raise ValueError(f"{source} holds no discriminator state (saved with autoencoder.disc_weight = 0?); "
                             "resume with the same disc_weight")
        check_weights(state["discriminator"], self.disc, f"{source} (discriminator)")
        check_optimizer(state["disc_optimizer"], self.disc_opt, f"{source} (discriminator's optimiser)")
        self.disc.load_state_dict(state["discriminator"])
        self.disc_opt.load_state_dict(state["disc_optimizer"])

