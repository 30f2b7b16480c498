"""Objectives: what a training run optimises (unnoise.objectives.base says what one is). The loop in
unnoise.training runs any of them; `objective_for` picks the one a config's network asks for.

    diffusion     DiffusionObjective    a denoiser (U-Net, DiT, MLP), in pixels or latents
    classifier    ClassifierObjective   a noise-aware classifier for classifier guidance
    autoencoder   AutoencoderObjective  latent diffusion's autoencoder, with its discriminator
    cd, ct        ConsistencyObjective  consistency distillation (a teacher) and training (none)
    progressive   ProgressiveObjective  one round of progressive distillation: N teacher steps -> N / 2
    reflow        ReflowObjective       a rectified flow retrained on its teacher's (noise, sample) pairs

A new method registers its objective here under a name that [train] objective can select.
"""

from __future__ import annotations

from unnoise.config import RunConfig
from unnoise.objectives.autoencoder import AutoencoderObjective
from unnoise.objectives.base import Batch, LossOutput, Objective, ObjectiveBase, RunContext
from unnoise.objectives.classifier import ClassifierObjective
from unnoise.objectives.consistency import ConsistencyObjective
from unnoise.objectives.diffusion import DiffusionObjective
from unnoise.objectives.progressive import ProgressiveObjective
from unnoise.objectives.reflow import ReflowObjective

# one class for each name of unnoise.config.OBJECTIVE_NAMES
OBJECTIVES = {"diffusion": DiffusionObjective, "classifier": ClassifierObjective, "autoencoder": AutoencoderObjective,
              "cd": ConsistencyObjective, "ct": ConsistencyObjective, "progressive": ProgressiveObjective,
              "reflow": ReflowObjective}
BY_OUTPUT = {"denoiser": "diffusion", "logits": "classifier", "autoencoder": "autoencoder"}  # the default objective


def objective_for(config: RunConfig, run: RunContext) -> Objective:
    """The objective [train] objective names, or by default the one the config's network asks for
    (by what it outputs)."""
    name = config.train.objective or BY_OUTPUT[config.model.interface.output]
    if name not in OBJECTIVES:
        raise ValueError(f"train.objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name](config, run)


__all__ = ["OBJECTIVES", "AutoencoderObjective", "Batch", "ClassifierObjective", "ConsistencyObjective",
           "DiffusionObjective", "LossOutput", "Objective", "ObjectiveBase", "ProgressiveObjective", "ReflowObjective",
           "RunContext", "objective_for"]
