"""A residual MLP denoiser for vector data (the 2-D toy sets): the image networks' contract,
forward(x, t, cond) with x of shape (B, dim)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from unnoise.models.embeddings import Cond, ConditionEmbedding, zero_
from unnoise.models.interface import ModelInterface, check_fields


@dataclass(frozen=True)
class MLPConfig:
    dim: int = 2  # data dimension
    hidden: int = 256  # width of the hidden layers
    depth: int = 4  # residual blocks
    num_classes: int = 0  # class labels (0 = unconditional); label num_classes is the null label
    time_scale: float = 1000.0  # the time input is embedded as sin/cos of time_scale * t

    def __post_init__(self) -> None:
        check_fields(self, ("dim", "hidden", "depth"))

    @property
    def interface(self) -> ModelInterface:
        return ModelInterface((self.dim,), self.num_classes)


class MLP(nn.Module):
    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = c = config
        self.embed = ConditionEmbedding(c.hidden, c.num_classes, 0, c.time_scale)
        self.inp = nn.Linear(c.dim, c.hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
                                    for _ in range(c.depth))
        self.out = nn.Sequential(nn.LayerNorm(c.hidden), nn.SiLU(), zero_(nn.Linear(c.hidden, c.dim)))

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"expected x of shape (B, {self.config.dim}), got {tuple(x.shape)}")
        emb, _ = self.embed(t, cond, x.shape[0])  # (B, hidden)
        h = self.inp(x) + emb
        for block in self.blocks:
            h = h + block(h + emb)  # (B, hidden)
        return self.out(h)
