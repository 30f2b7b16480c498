"""Objectives: what a training run optimises (unnoise.objectives.base says what one is). The loop in
unnoise.training runs any of them; `objective_for` picks the one a config's network asks for.

    diffusion     DiffusionObjective    a denoiser (U-Net, DiT, MLP), in pixels or latents
    logits        ClassifierObjective   a noise-aware classifier for classifier guidance
    autoencoder   AutoencoderObjective  latent diffusion's autoencoder, with its discriminator
"""

from __future__ import annotations

from unnoise.config import RunConfig
from unnoise.objectives.autoencoder import AutoencoderObjective
from unnoise.objectives.base import Batch, LossOutput, Objective, ObjectiveBase, RunContext
from unnoise.objectives.classifier import ClassifierObjective
from unnoise.objectives.diffusion import DiffusionObjective

OBJECTIVES = {"denoiser": DiffusionObjective, "logits": ClassifierObjective, "autoencoder": AutoencoderObjective}


def objective_for(config: RunConfig, run: RunContext) -> Objective:
    """The objective that trains the network a config describes (by what the network outputs)."""
    return OBJECTIVES[config.model.interface.output](config, run)


__all__ = ["OBJECTIVES", "AutoencoderObjective", "Batch", "ClassifierObjective", "DiffusionObjective", "LossOutput",
           "Objective", "ObjectiveBase", "RunContext", "objective_for"]
