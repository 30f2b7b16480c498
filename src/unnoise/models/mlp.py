"""A residual MLP denoiser for vector data (the 2-D toy sets): same contract as the image networks,
forward(x, t, cond) with x of shape (B, dim)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class MLPConfig:
    dim: int = 2  # data dimension
    hidden: int = 256  # width of the hidden layers
    depth: int = 4  # residual blocks
    num_classes: int = 0  # class labels (0 = unconditional); label num_classes is the null label
    time_scale: float = 1000.0  # the time input is embedded as sin/cos of time_scale * t


def sinusoidal(t: Tensor, width: int, scale: float) -> Tensor:
    """Transformer position encoding of scale * t (Vaswani et al. 2017, §3.5), (B,) -> (B, width)."""
    half = width // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = (scale * t.float())[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class MLP(nn.Module):
    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = c = config
        self.time = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.labels = nn.Embedding(c.num_classes + 1, c.hidden) if c.num_classes else None
        self.inp = nn.Linear(c.dim, c.hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
                                    for _ in range(c.depth))
        self.out = nn.Sequential(nn.LayerNorm(c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"expected x of shape (B, {self.config.dim}), got {tuple(x.shape)}")
        emb = self.time(sinusoidal(t, self.config.hidden, self.config.time_scale))  # (B, hidden)
        labels = cond.get("labels") if isinstance(cond, dict) else cond
        if labels is not None:
            if self.labels is None:
                raise ValueError("this network has no classes (num_classes = 0) but was given labels")
            emb = emb + self.labels(labels)
        elif self.labels is not None:
            emb = emb + self.labels(torch.full((x.shape[0],), self.config.num_classes, device=x.device))
        h = self.inp(x) + emb
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)
