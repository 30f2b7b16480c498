"""The Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

    patchify (p x p conv) + fixed 2-D sin-cos positions -> N = HW / p^2 tokens of width D
    -> depth x adaLN-Zero block -> final adaLN + linear to p*p*C_out per token -> unpatchify

adaLN-Zero (§3.2): from the conditioning embedding c (time + label) each block regresses a shift,
scale and gate for its attention and for its MLP, all zero at initialisation, so every block starts
as the identity; the final layer's linear is zero as well, so a fresh network outputs zeros.
Optional cross-attention to a context sequence sits between attention and MLP, as in PixArt-alpha
(Chen et al. 2023, §2.3), with a zero-initialised output projection.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from unnoise.models.embeddings import (Attention, Cond, ConditionEmbedding, Context, check_images, scale_shift,
                                       sincos_positions_2d, zero_)
from unnoise.models.interface import ModelInterface


@dataclass(frozen=True)
class DiTConfig:
    image_size: int = 32  # side of the training images (or latents); other sizes work if divisible by patch_size
    patch_size: int = 2  # side of the square patches that become tokens
    in_channels: int = 3  # channels of the input
    out_channels: int = 3  # channels of the output (what the parameterisation predicts)
    hidden_size: int = 384  # token width D (a multiple of 4 and of heads)
    depth: int = 12  # number of transformer blocks
    heads: int = 6  # attention heads, D / heads channels each
    mlp_ratio: float = 4.0  # hidden width of each block's MLP as a multiple of D
    num_classes: int = 0  # class labels 0..num_classes - 1, num_classes is the null label; 0 = unconditional
    context_dim: int = 0  # width of the context vectors for cross-attention; 0 = no cross-attention
    time_scale: float = 1000.0  # the network embeds sinusoid(time_scale * t)

    def __post_init__(self) -> None:
        # Messages name the [model] keys of a config. unnoise.config bounds each number from above too.
        for name in ("image_size", "patch_size", "in_channels", "out_channels", "hidden_size", "depth", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size {self.image_size} is not a multiple of model.patch_size "
                             f"{self.patch_size}")
        if self.hidden_size % 4 or self.hidden_size % self.heads:
            raise ValueError(f"model.hidden_size must be a multiple of 4 and of heads={self.heads}, "
                             f"got {self.hidden_size}")
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ValueError(f"model.mlp_ratio must be a finite number > 0, got {self.mlp_ratio}")
        if self.num_classes < 0 or self.context_dim < 0:
            raise ValueError(f"model.num_classes and model.context_dim must be >= 0, got {self.num_classes}, "
                             f"{self.context_dim}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"model.time_scale must be a finite number > 0, got {self.time_scale}")

    @property
    def interface(self) -> ModelInterface:
        return ModelInterface((self.in_channels, self.image_size, self.image_size), self.num_classes, self.context_dim)


class DiTBlock(nn.Module):
    """x += gate1 * Attn(adaLN1(x)); [x += CrossAttn(LN(x), context)]; x += gate2 * MLP(adaLN2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.cross_norm = nn.LayerNorm(dim, eps=1e-6) if context_dim else None
        self.cross = Attention(dim, heads, context_dim) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(dim, 6 * dim)  # shift, scale, gate for attn and MLP; zero-initialised by DiT

    def forward(self, x: Tensor, c: Tensor, context: Context | None) -> Tensor:
        # x (B, N, D), c (B, D) already through SiLU
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)  # (B, 1, D) each
        x = x + gate1 * self.attn(scale_shift(self.norm1(x), scale1, shift1))
        if self.cross is not None and context is not None:
            x = x + self.cross(self.cross_norm(x), *context)
        return x + gate2 * self.mlp(scale_shift(self.norm2(x), scale2, shift2))


class DiT(nn.Module):
    """forward(x, t, cond=None) -> (B, out_channels, H, W); see the module docstring for the layout."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        p, d = cfg.patch_size, cfg.hidden_size
        self.patchify = nn.Conv2d(cfg.in_channels, d, p, stride=p)
        self.embed = ConditionEmbedding(d, cfg.num_classes, cfg.context_dim, cfg.time_scale)
        self.blocks = nn.ModuleList([DiTBlock(d, cfg.heads, cfg.mlp_ratio, cfg.context_dim) for _ in range(cfg.depth)])
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(d, 2 * d)  # shift, scale
        self.final_linear = nn.Linear(d, p * p * cfg.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """Peebles & Xie 2023 (§3.2 and their release): Xavier-uniform linear layers and patch
        embedding, N(0, 0.02) conditioning embeddings, zero adaLN modulation and final linear."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patchify.weight.view(self.patchify.out_channels, -1))
        nn.init.zeros_(self.patchify.bias)
        for m in self.embed.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        for block in self.blocks:
            zero_(block.modulation)
            if block.cross is not None:
                zero_(block.cross.out)
        zero_(self.final_modulation)
        zero_(self.final_linear)

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """x (B, in_channels, H, W), t (B,), cond: None, labels (B,) or {"labels", "context", "context_mask"}."""
        cfg, p = self.config, self.config.patch_size
        check_images(x, cfg.in_channels, p, "the DiT patch size")
        B, _, H, W = x.shape
        emb, context = self.embed(t, cond, B)  # (B, D), Context or None
        c = F.silu(emb)  # every adaLN regresses from SiLU(c)
        h = self.patchify(x).flatten(2).transpose(1, 2)  # (B, N, D), N = (H / p) (W / p), row-major
        h = h + sincos_positions_2d(cfg.hidden_size, H // p, W // p, device=x.device).to(h.dtype)
        for block in self.blocks:
            h = block(h, c, context)  # (B, N, D)
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        h = self.final_linear(scale_shift(self.final_norm(h), scale, shift))  # (B, N, p * p * C_out)
        h = h.view(B, H // p, W // p, p, p, cfg.out_channels)  # (B, H/p, W/p, p, p, C_out)
        return h.permute(0, 5, 1, 3, 2, 4).reshape(B, cfg.out_channels, H, W)  # (B, C_out, H, W)


def dit_tiny() -> DiTConfig:
    """For tests: 2 blocks of width 64, 16x16 RGB in 2x2 patches."""
    return DiTConfig(image_size=16, patch_size=2, hidden_size=64, depth=2, heads=2)


def dit_s2() -> DiTConfig:
    """DiT-S/2 (Peebles & Xie 2023, Table 1): D = 384, 12 blocks, 6 heads, 2x2 patches."""
    return DiTConfig(patch_size=2, hidden_size=384, depth=12, heads=6)


def dit_s4() -> DiTConfig:
    """DiT-S/4: as DiT-S/2 with 4x4 patches (a quarter of the tokens)."""
    return DiTConfig(patch_size=4, hidden_size=384, depth=12, heads=6)


def dit_b2() -> DiTConfig:
    """DiT-B/2 (Peebles & Xie 2023, Table 1): D = 768, 12 blocks, 12 heads, 2x2 patches."""
    return DiTConfig(patch_size=2, hidden_size=768, depth=12, heads=12)


DIT_PRESETS: dict[str, Callable[[], DiTConfig]] = {
    "dit_tiny": dit_tiny,
    "dit_s2": dit_s2,
    "dit_s4": dit_s4,
    "dit_b2": dit_b2,
}
