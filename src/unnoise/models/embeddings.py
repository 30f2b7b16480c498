"""What the U-Net and the DiT share: how time, class labels and context enter a network,
attention, 2-D positions, and the checks both make on their inputs.

    t (B,) -> sinusoid(time_scale * t) -> MLP --+
    labels (B,) -> table of num_classes + 1 rows +--> emb (B, D): read by every block as scale-shift
    context: masked mean over tokens -> Linear --+
    context (B, L, context_dim), context_mask ---> keys and values of cross-attention

The pooled context in the embedding follows Imagen (Saharia et al. 2022, §2.1: "a pooled embedding
vector added to the diffusion timestep embedding") and SDXL; context_mask (B, L) bool marks real
tokens (True) so that padding, which a batch of prompts of different lengths needs, is never read.

Time embedding: Ho et al. 2020, Appendix B (the Transformer sinusoid, Vaswani et al. 2017 §3.5,
followed by an MLP); labels added to it: Dhariwal & Nichol 2021, §3 (and DiT, Peebles & Xie 2023).
`t` is either a time in [0, 1] or EDM's c_noise = ln(sigma~) / 4 (Karras et al. 2022, Table 1);
`time_scale` (1000 by default) spreads either over the sinusoid's frequencies. The label
`num_classes` is the null label that classifier-free guidance trains and samples with
(Ho & Salimans 2022), so the table has one row more than there are classes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unnoise.conditioning import Condition, as_condition

Cond = Condition | Tensor | None  # a Condition, bare labels (B,), or None


class Context(NamedTuple):
    """What cross-attention reads: token states (B, L, context_dim) and which are real (B, L) bool."""

    states: Tensor
    mask: Tensor | None


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(N,) values -> (N, dim) features [cos(x w_i), sin(x w_i)], w_i = max_period^(-i / (dim/2)),
    i = 0 .. dim/2 - 1 (Vaswani et al. 2017, §3.5). Computed in float32 whatever x's dtype."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=x.device, dtype=torch.float32) * (-math.log(max_period) / half))
    angles = x.float()[:, None] * freqs  # (N, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)  # (N, dim)


def sincos_positions_2d(dim: int, height: int, width: int, device: Any = None) -> Tensor:
    """Fixed 2-D positional embedding of a height x width grid, row-major: (height * width, dim).
    Half the features encode the row, half the column, each with the 1-D sinusoid of the integer
    position (as in MAE, He et al. 2022, and DiT, Peebles & Xie 2023, §3.2)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    rows = torch.arange(height, device=device).repeat_interleave(width)  # (H*W,) 0,0,..,1,1,..
    cols = torch.arange(width, device=device).repeat(height)  # (H*W,) 0,1,..,0,1,..
    return torch.cat([sinusoidal_embedding(rows, dim // 2), sinusoidal_embedding(cols, dim // 2)], dim=1)


def scale_shift(h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Adaptive normalisation h * (1 + scale) + shift, for h already normalised: adaptive group norm
    (Dhariwal & Nichol 2021, §3) and adaLN (Peebles & Xie 2023, §3.2). scale = shift = 0 is identity."""
    return torch.addcmul(shift, h, 1 + scale)


def zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero (for the last layer of a residual branch) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, §3.2): tokens attend to
    themselves, or, when built with context_dim > 0, to a sequence of context vectors."""

    def __init__(self, dim: int, heads: int, context_dim: int = 0):
        super().__init__()
        self.heads = heads
        self.cross = context_dim > 0
        if self.cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        # x (B, N, dim); context (B, L, context_dim) for cross-attention, mask (B, L) bool: True = attend
        if self.cross:
            q, (k, v) = self.q(x), self.kv(context).chunk(2, dim=-1)  # (B, N, dim), (B, L, dim) x 2
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, N, dim) x 3
        q, k, v = (a.unflatten(-1, (self.heads, -1)).transpose(1, 2) for a in (q, k, v))  # (B, heads, N|L, dim/heads)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L), broadcast over heads, queries
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, N, dim/heads)
        return self.out(h.transpose(1, 2).flatten(2))  # (B, N, dim)


class ConditionEmbedding(nn.Module):
    """emb = MLP(sinusoid(time_scale * t)) + label_table[labels] + Linear(pooled context), and the
    context passed on for cross-attention.

    Reads `cond` as the networks' contract says: None, a Condition (unnoise.conditioning) or a bare
    (B,) integer tensor of labels. Built with classes, missing labels mean the null label; missing
    context means the cross-attention layers are skipped.
    """

    def __init__(self, dim: int, num_classes: int = 0, context_dim: int = 0, time_scale: float = 1000.0,
                 frequencies: int = 256, image: bool = False):
        super().__init__()
        self.num_classes, self.context_dim, self.image = num_classes, context_dim, image
        self.time_scale, self.frequencies = time_scale, frequencies
        self.time_mlp = nn.Sequential(nn.Linear(frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))
        # an image condition's noise level s (Ho et al. 2022, §4.2), embedded as t is; none given = level 0
        self.noise_mlp = nn.Sequential(nn.Linear(frequencies, dim), nn.SiLU(), nn.Linear(dim, dim)) if image else None
        self.label_table = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        self.pooled = nn.Linear(context_dim, dim) if context_dim > 0 else None

    def forward(self, t: Tensor, cond: Cond, batch: int) -> tuple[Tensor, Context | None]:
        """(emb (B, dim), Context or None) for a batch of `batch` images."""
        cond = as_condition(cond) or Condition()
        if not self.image and (cond.image is not None or cond.image_noise is not None):
            raise ValueError("this network takes no image condition (hint); got one")
        labels, context, mask = cond.labels, cond.context, cond.context_mask
        t = self._check_t(t, batch)
        emb = self._embed_time(self.time_mlp, t)  # (B, dim), in the network's precision
        if self.noise_mlp is not None:
            s = cond.image_noise if cond.image_noise is not None else torch.zeros_like(t)
            emb = emb + self._embed_time(self.noise_mlp, self._check_t(s.to(t.dtype), batch))
        if self.label_table is None and labels is not None:
            raise ValueError("this network was built without classes (num_classes=0) but was given labels; "
                             "build it with num_classes > 0, or pass cond=None")
        if self.label_table is not None:
            if labels is None:
                labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=emb.device)
            emb = emb + self.label_table(self._check_labels(labels, batch))
        if context is None:
            return emb, None
        self._check_context(context, mask, batch)
        context = context.to(emb.dtype)
        if mask is None:
            pooled = context.mean(1)
        else:
            weights = mask.to(context.dtype)[..., None]  # (B, L, 1)
            pooled = (context * weights).sum(1) / weights.sum(1)  # masked mean over real tokens
        return emb + self.pooled(pooled), Context(context, mask)

    def _embed_time(self, mlp: nn.Module, t: Tensor) -> Tensor:
        waves = sinusoidal_embedding(self.time_scale * t.float(), self.frequencies)  # float32 phases
        return mlp(waves.to(mlp[0].weight.dtype))

    @staticmethod
    def _check_t(t: Tensor, batch: int) -> Tensor:
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"t must be a float tensor of shape ({batch},), got {_describe(t)}")
        if t.ndim == 0:
            return t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), one time per image, got {tuple(t.shape)}")
        return t

    def _check_labels(self, labels: Tensor, batch: int) -> Tensor:
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be an int64 tensor of shape ({batch},), got {_describe(labels)}")
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        lo, hi = labels.min().item(), labels.max().item()
        if lo < 0 or hi > self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes} ({self.num_classes} is the null label), "
                             f"got values from {lo} to {hi}")
        return labels

    def _check_context(self, context: Tensor, mask: Tensor | None, batch: int) -> None:
        if self.context_dim == 0:
            raise ValueError("this network was built without cross-attention (context_dim=0) but was given "
                             "a context; build it with context_dim > 0")
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.context_dim:
            raise ValueError(f"context must have shape ({batch}, L, {self.context_dim}), got {tuple(context.shape)}")
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask must be a bool tensor of shape {tuple(context.shape[:2])}, "
                                 f"got {_describe(mask)} of shape {tuple(mask.shape)}")
            if not bool(mask.any(1).all()):
                raise ValueError("context_mask leaves a row with no token to attend to (the empty prompt still "
                                 "has its [CLS] and [SEP] tokens)")


def _describe(value: object) -> str:
    return f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__


def check_images(x: Tensor, channels: int, multiple: int, why: str, *, dims: int = 2) -> None:
    """Raise a ValueError unless x is (B, channels, H, W) with H and W multiples of `multiple`, or for
    dims = 1 a batch of signals (B, channels, L) with L a multiple of `multiple`."""
    if dims == 1:
        if x.ndim != 3 or x.shape[1] != channels:
            raise ValueError(f"expected signals of shape (B, {channels}, L), got {tuple(x.shape)}")
        if x.shape[2] % multiple:
            raise ValueError(f"signal length must be a multiple of {multiple} ({why}), got {x.shape[2]}")
        return
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"expected images of shape (B, {channels}, H, W), got {tuple(x.shape)}")
    height, width = x.shape[2:]
    if height % multiple or width % multiple:
        raise ValueError(f"image height and width must be multiples of {multiple} ({why}), got {height}x{width}")
