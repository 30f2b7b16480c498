"""What a network declares about itself: the contract the training loop, the pipeline and evaluation
read instead of probing a config's fields.

    config.interface.sample_shape     # (C, H, W) images, (C, L) signals, (dim,) points
    config.interface.num_classes      # class labels it takes (label num_classes is the null label)
    config.interface.context_dim      # width of a text context it cross-attends to (0: none)
    config.interface.output           # "denoiser", "logits" (a noise-aware classifier) or "autoencoder"
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OUTPUTS = ("denoiser", "logits", "autoencoder")


@dataclass(frozen=True)
class ModelInterface:
    sample_shape: tuple[int, ...]  # one sample as the network reads it (latents for a latent model)
    num_classes: int = 0  # class labels 0..num_classes - 1; num_classes is the null label; 0 = none
    context_dim: int = 0  # text context width for cross-attention; 0 = no text conditioning
    hint_channels: int = 0  # channels of an image condition (a control hint, a low-resolution input); 0 = none
    output: str = "denoiser"  # denoiser: an output of x's shape; logits: (B, classes); autoencoder

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")

    @property
    def text(self) -> bool:
        return self.context_dim > 0

    @property
    def conditional(self) -> bool:
        """Whether it takes any condition, hence has a null condition to guide against."""
        return bool(self.num_classes or self.context_dim or self.hint_channels)


def check_fields(config, sizes: tuple[str, ...], positive: tuple[str, ...] = ("time_scale",)) -> None:
    """A network config's common checks, messages naming [model] keys: each of `sizes` at least 1,
    num_classes >= 0, each of `positive` a finite number > 0 (unnoise.config bounds them from above)."""
    for name in sizes:
        if getattr(config, name) < 1:
            raise ValueError(f"model.{name} must be at least 1, got {getattr(config, name)}")
    if config.num_classes < 0:
        raise ValueError(f"model.num_classes must be >= 0, got {config.num_classes}")
    for name in positive:
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"model.{name} must be a finite number > 0, got {value}")

