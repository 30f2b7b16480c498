"""Noise-aware classifiers for classifier guidance (Dhariwal & Nichol 2021, §4).

A classifier p_phi(y | x_t) is trained on noised images at the times the sampler visits, with
the cross-entropy of the true label. It is read like a diffusion network: through the run's
parameterisation, so it sees the same inputs (c_in x_t and c_noise for EDM, x_t and t otherwise)
and trains with the same training loop (unnoise.objectives.classifier), config sections,
checkpoints and DDP.

    unnoise train fashion-classifier          # [model] preset = "classifier_small"
    classifier = load_classifier("runs/fashion-classifier")
    logits = classifier(x_t, t)               # (B, classes); guidance.ClassifierGuidance uses its gradient
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from unnoise.checkpoint import load_checkpoint, run_config
from unnoise.config import RunConfig
from unnoise.models import build_model
from unnoise.parameterization import NetworkDenoiser, get_parameterization
from unnoise.schedules import get_schedule


class NoisyClassifier(NetworkDenoiser):
    """classifier(x_t, t) -> (B, classes) logits of p(y | x_t); differentiable in x_t."""

    @property
    def classes(self) -> int:
        return self.net.config.out_channels

    def __call__(self, x: Tensor, t: float | Tensor, cond=None) -> Tensor:
        x_in, t_in = self.parameterization.network_inputs(x, self.point(x, t))
        return self.net(x_in, t_in)


def build_classifier(config: RunConfig, weights: dict[str, Tensor], device: torch.device | str = "cpu"):
    """The classifier of a trained run (weights: typically its EMA)."""
    if config.model.interface.output != "logits":
        raise ValueError(f"{config.out} is not a classifier run: its network's output is "
                         f"{config.model.interface.output!r}, not 'logits'")
    model = build_model(config.model)
    model.load_state_dict(weights)
    model.to(device).eval().requires_grad_(False)  # gradients flow to x_t only
    diffusion = config.diffusion
    return NoisyClassifier(model, get_parameterization(diffusion.parameterization, diffusion.sigma_data),
                           get_schedule(diffusion.schedule))


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> NoisyClassifier:
    """A classifier from a run folder or checkpoint folder (EMA weights)."""
    ckpt = load_checkpoint(path, with_state=False)
    return build_classifier(run_config(ckpt), ckpt.ema, device)


@torch.no_grad()
def accuracy_by_noise(classifier: NoisyClassifier, images: Tensor, labels: Tensor, sigmas=(0.0, 0.1, 0.5, 1, 2, 5, 10),
                      seed: int = 0, batch_size: int = 500) -> dict[float, float]:
    """Held-out accuracy at VE-view noise levels sigma~ (x_t = alpha (x0 + sigma~ eps)): what guidance
    can lean on at each stage of sampling. sigma~ = 0 is read at the schedule's t_min."""
    schedule, g = classifier.schedule, torch.Generator().manual_seed(seed)
    out = {}
    for s in sigmas:
        t = schedule.t_min if s == 0 else min(max(schedule.t_from_sigma_tilde(torch.tensor(float(s))).item(),
                                                  schedule.t_min), 1.0)
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
        correct = 0
        for i in range(0, len(images), batch_size):
            x0 = images[i:i + batch_size]
            noise = torch.randn(x0.shape, generator=g)
            x = (alpha * x0 + sigma * noise).to(next(classifier.net.parameters()).device)
            correct += (classifier(x, t).argmax(1).cpu() == labels[i:i + batch_size]).sum().item()
        out[float(s)] = correct / len(images)
    return out
