"""The ADM U-Net (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", §3),
which refines the DDPM U-Net (Ho et al. 2020, Appendix B).

    input conv -> [ResBlock (+ attention)] x blocks, downsample   per level, skips kept
               -> ResBlock, attention, ResBlock                   at the lowest resolution
               -> [concat skip, ResBlock (+ attention)] x (blocks + 1), upsample   per level
               -> GroupNorm, SiLU, zero-initialised output conv

What ADM adds and we keep: adaptive group norm (the time+label embedding gives a scale and a shift
applied after the second norm of each residual block), multi-head self-attention at chosen
resolutions and in the middle, and zero-initialised last layers in every residual branch and at
the output, so a fresh network is the zero function and each block starts as the identity.
Optional cross-attention to a context sequence follows each self-attention (Rombach et al. 2022, §3.3).

With head = "logits" the network is ADM's noise-aware classifier (Dhariwal & Nichol 2021, §4.1): the
same down path and middle, then group norm, SiLU and a linear layer from the lowest-resolution map
to out_channels class logits (ADM pools first); classifier guidance differentiates it in x_t.

With dims = 1 the same network reads 1-D signals (B, C, L): every convolution, the stride-2
downsampling and the nearest-neighbour upsampling act along L, and attention runs over the L
positions (image_size is then the length L). The classifier head stays 2-D only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unnoise.conditioning import as_condition
from unnoise.models.embeddings import Attention, Cond, ConditionEmbedding, Context, check_images, scale_shift, zero_
from unnoise.models.interface import ModelInterface


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 3  # channels of the input images
    out_channels: int = 3  # channels of the output (what the parameterisation predicts)
    image_size: int = 32  # side of the training images (length L for dims=1); others work if divisible enough
    base_channels: int = 64  # channels at full resolution (a multiple of 4)
    channel_mult: tuple[int, ...] = (1, 2, 2)  # each level's width / base_channels; levels after the first halve H, W
    blocks_per_level: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_factors: tuple[int, ...] = (2,)  # levels with self-attention, by downsampling factor (1 = full size)
    head_channels: int = 64  # channels per attention head; a narrower level uses one head of its width
    dropout: float = 0.0  # dropout probability inside residual blocks
    num_classes: int = 0  # class labels 0..num_classes - 1, num_classes is the null label; 0 = unconditional
    context_dim: int = 0  # width of the context vectors for cross-attention; 0 = no cross-attention
    time_scale: float = 1000.0  # the network embeds sinusoid(time_scale * t)
    head: str = "image"  # image: the U-Net, output of x's shape; logits: down path and middle -> (B, out_channels)
    dims: int = 2  # 1: signals (B, C, L); 2: images (B, C, H, W)
    cond_channels: int = 0  # an image condition (cond.image) concatenated to x: super-resolution's low-res input

    def __post_init__(self) -> None:
        # Messages name the [model] keys of a config. unnoise.config bounds each number from above too.
        levels = len(self.channel_mult)
        factors = [2**i for i in range(levels)]
        for name in ("in_channels", "out_channels", "image_size", "base_channels", "blocks_per_level",
                     "head_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.base_channels % 4:
            raise ValueError(f"model.base_channels must be a multiple of 4 (group norm), got {self.base_channels}")
        if levels == 0 or min(self.channel_mult) < 1:
            raise ValueError(f"model.channel_mult must be a non-empty list of positive integers, got "
                             f"{list(self.channel_mult)}")
        if self.image_size % self.downsampling:
            raise ValueError(f"model.image_size must be a multiple of {self.downsampling} for {levels} levels, "
                             f"got {self.image_size}")
        if not set(self.attention_factors) <= set(factors):
            raise ValueError(f"model.attention_factors must be among the levels' downsampling factors {factors}, "
                             f"got {list(self.attention_factors)}")
        for mult in self.channel_mult:
            _heads(mult * self.base_channels, self.head_channels)  # raises if the width does not split
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        if self.cond_channels < 0 or (self.cond_channels and (self.head != "image" or self.dims != 2)):
            raise ValueError(f"model.cond_channels must be >= 0, and an image condition needs an image U-Net "
                             f"(head = \"image\", dims = 2), got {self.cond_channels}")
        if self.num_classes < 0 or self.context_dim < 0:
            raise ValueError(f"model.num_classes and model.context_dim must be >= 0, got {self.num_classes}, "
                             f"{self.context_dim}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"model.time_scale must be a finite number > 0, got {self.time_scale}")
        if self.head not in ("image", "logits"):
            raise ValueError(f"model.head must be 'image' or 'logits', got {self.head!r}")
        if self.dims not in (1, 2):
            raise ValueError(f"model.dims must be 1 (signals) or 2 (images), got {self.dims}")
        if self.head == "logits" and self.dims != 2:
            raise ValueError(f"a classifier (head = 'logits') reads images only: model.dims must be 2, got {self.dims}")
        if self.head == "logits" and (self.num_classes or self.context_dim):
            raise ValueError("a classifier (head = 'logits') sees no labels or context: model.num_classes and "
                             "model.context_dim must be 0")

    @property
    def downsampling(self) -> int:
        """How much the lowest level is smaller than the input: H and W (or L) must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def interface(self) -> ModelInterface:
        shape = (self.in_channels,) + (self.image_size,) * self.dims  # (C, H, W) or (C, L)
        if self.head == "logits":
            return ModelInterface(shape, output="logits")
        return ModelInterface(shape, self.num_classes, self.context_dim, self.cond_channels)


def _image_condition(cond: Cond, x: Tensor, channels: int) -> Tensor:
    """cond.image, checked to be (B, channels, *x's spatial shape), in x's dtype."""
    image = getattr(as_condition(cond), "image", None)
    want = (x.shape[0], channels, *x.shape[2:])
    if image is None or tuple(image.shape) != want:
        raise ValueError(f"this network reads an image condition (cond.image) of shape {want}, got "
                         f"{None if image is None else tuple(image.shape)}")
    return image.to(x.dtype)


def _heads(channels: int, head_channels: int) -> int:
    if channels <= head_channels:
        return 1
    if channels % head_channels:
        raise ValueError(f"a level of {channels} channels does not split into heads of "
                         f"model.head_channels={head_channels}")
    return channels // head_channels


def group_norm(channels: int) -> nn.GroupNorm:
    """At most 32 groups (Wu & He 2018; ADM), and at least 4 channels per group for narrow layers."""
    return nn.GroupNorm(math.gcd(32, channels // 4), channels)


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """nn.Conv1d for dims = 1 (signals), nn.Conv2d for dims = 2 (images), with the same arguments."""
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    return (nn.Conv1d if dims == 1 else nn.Conv2d)(*args, **kwargs)


def _upsample(channels: int, dims: int = 2) -> nn.Module:
    """Nearest-neighbour doubling of every spatial axis (nn.Upsample follows the input's rank), then a conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv_nd(dims, channels, channels, 3, padding=1))


class ResBlock(nn.Module):
    """x + conv(SiLU(AdaGN(conv(SiLU(GN(x))), emb))), with a 1x1 conv on the skip when widths differ.
    With emb_dim = 0 (the autoencoder) the second norm is a plain group norm. dims = 1 for signals
    (B, C, L), 2 for images (B, C, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0, *, dims: int = 2):
        super().__init__()
        self.dims = dims
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv_nd(dims, in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels) if emb_dim else None  # -> (scale, shift)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(conv_nd(dims, out_channels, out_channels, 3, padding=1))
        self.skip = conv_nd(dims, in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))  # (B, C_out, H, W) or (B, C_out, L)
        if self.emb is not None:
            e = self.emb(F.silu(emb))  # (B, 2 C_out)
            scale, shift = e.view(e.shape + (1,) * self.dims).chunk(2, dim=1)  # (B, C_out, 1, 1) or (B, C_out, 1)
            h = scale_shift(h, scale, shift)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W (or L) positions, then (if built with context_dim) cross-attention to the
    context; each a pre-norm residual branch with a zero-initialised output projection."""

    def __init__(self, channels: int, heads: int, context_dim: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, heads)
        zero_(self.attn.out)
        self.cross_norm = group_norm(channels) if context_dim else None
        self.cross = Attention(channels, heads, context_dim) if context_dim else None
        if self.cross is not None:
            zero_(self.cross.out)

    def forward(self, x: Tensor, context: Context | None) -> Tensor:
        h = x.flatten(2)  # (B, C, H*W), or (B, C, L) as it is
        h = h + self.attn(self.norm(h).transpose(1, 2)).transpose(1, 2)
        if self.cross is not None and context is not None:
            h = h + self.cross(self.cross_norm(h).transpose(1, 2), *context).transpose(1, 2)
        return h.reshape(x.shape)  # (B, C, H, W) or (B, C, L)


class Step(nn.Module):
    """One entry of a path: a residual block, attention and a resampling layer, each optional."""

    def __init__(self, res: ResBlock | None, attn: AttentionBlock | None = None, resample: nn.Module | None = None):
        super().__init__()
        self.res, self.attn, self.resample = res, attn, resample

    def forward(self, x: Tensor, emb: Tensor, context: Context | None) -> Tensor:
        if self.res is not None:
            x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x, context)
        if self.resample is not None:
            x = self.resample(x)
        return x


class UNetEncoder(nn.Module):
    """What the U-Net, the noise-aware classifier and a ControlNet's trainable copy share: embedding,
    input conv, down path, middle."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        self.emb_dim = 4 * c.base_channels
        self.embed = ConditionEmbedding(self.emb_dim, c.num_classes, c.context_dim, c.time_scale,
                                        image=c.cond_channels > 0)
        self.input = conv_nd(c.dims, c.in_channels + c.cond_channels, c.base_channels, 3, padding=1)
        self.widths = [c.base_channels * m for m in c.channel_mult]
        # Down path: record the width of every output, as the up path concatenates each of them.
        self.down, self.skip_widths, ch = nn.ModuleList(), [c.base_channels], c.base_channels
        for level, width in enumerate(self.widths):
            for _ in range(c.blocks_per_level):
                self.down.append(self.step(ch, width, 2**level in c.attention_factors))
                ch = width
                self.skip_widths.append(ch)
            if level < len(self.widths) - 1:
                self.down.append(Step(None, None, conv_nd(c.dims, ch, ch, 3, stride=2, padding=1)))
                self.skip_widths.append(ch)
        # Middle: always with attention (ADM).
        self.middle = nn.ModuleList([self.step(ch, ch, True), self.step(ch, ch, False)])
        self.channels = ch

    def step(self, in_ch: int, out_ch: int, attend: bool, resample: nn.Module | None = None) -> Step:
        c = self.config
        attn = AttentionBlock(out_ch, _heads(out_ch, c.head_channels), c.context_dim) if attend else None
        return Step(ResBlock(in_ch, out_ch, self.emb_dim, c.dropout, dims=c.dims), attn, resample)

    def encode(self, x: Tensor, t: Tensor, cond: Cond,
               extra: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor, Context | None]:
        """-> lowest-resolution features, the skips, the embedding and the context. extra: features
        (B, base_channels, H, W) added after the input convolution (a ControlNet's encoded hint)."""
        c = self.config
        check_images(x, c.in_channels, c.downsampling, f"the U-Net halves them {len(c.channel_mult) - 1} times",
                     dims=c.dims)
        emb, context = self.embed(t, cond, x.shape[0])  # (B, 4 * base), Context or None
        if c.cond_channels:  # super-resolution: the (upsampled) low-resolution image as extra channels
            x = torch.cat([x, _image_condition(cond, x, c.cond_channels)], dim=1)
        h = self.input(x)  # (B, base, H, W) or (B, base, L)
        if extra is not None:
            h = h + extra
        skips = [h]
        for step in self.down:
            h = step(h, emb, context)  # down to (B, base * mult[-1], H / f, W / f), f = c.downsampling
            skips.append(h)
        for step in self.middle:
            h = step(h, emb, context)  # (B, base * mult[-1], H / f, W / f)
        return h, skips, emb, context


class UNet(UNetEncoder):
    """forward(x, t, cond=None) -> (B, out_channels, H, W), or (B, out_channels, L) for dims = 1; see the
    module docstring for the layout."""

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        c, skips, ch = config, list(self.skip_widths), self.channels
        # Up path: one more block per level than on the way down, the last one upsampling.
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(self.widths))):
            for i in range(c.blocks_per_level + 1):
                upsample = _upsample(width, c.dims) if level > 0 and i == c.blocks_per_level else None
                self.up.append(self.step(ch + skips.pop(), width, 2**level in c.attention_factors, upsample))
                ch = width
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_(conv_nd(c.dims, ch, c.out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """x (B, in_channels, H, W) or (B, in_channels, L), t (B,),
        cond: None, labels (B,) or {"labels", "context", "context_mask"}."""
        return self.decode(*self.encode(x, t, cond))

    def decode(self, h: Tensor, skips: list[Tensor], emb: Tensor, context: Context | None) -> Tensor:
        """The up path from what `encode` returns (a ControlNet adds its residuals to h and the skips first)."""
        skips = list(skips)
        for step in self.up:
            h = step(torch.cat([h, skips.pop()], dim=1), emb, context)  # up to (B, base * mult[0], H, W)
        return self.out(h)  # (B, out_channels, H, W) or (B, out_channels, L)


class UNetClassifier(UNetEncoder):
    """forward(x, t) -> (B, out_channels) logits: the down path and middle, read out (head = "logits")."""

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        # A linear read-out of the whole lowest-resolution map: on MNIST it learned in 50 steps what
        # ADM's average-pooled head had not learned in 150 (position matters for these classes).
        side = config.image_size // config.downsampling
        self.out = nn.Sequential(group_norm(self.channels), nn.SiLU(), nn.Flatten(),
                                 nn.Linear(self.channels * side * side, config.out_channels))

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if cond is not None:
            raise ValueError("a noise-aware classifier takes no condition; got one")
        size = self.config.image_size
        if x.ndim != 4 or x.shape[-2:] != (size, size):
            raise ValueError(f"this classifier reads {size}x{size} images, got shape {tuple(x.shape)}")
        h, _, _, _ = self.encode(x, t, None)
        return self.out(h)  # (B, out_channels)


def unet_tiny() -> UNetConfig:
    """For tests: about 57k parameters, 16x16 RGB."""
    return UNetConfig(image_size=16, base_channels=8, channel_mult=(1, 2), blocks_per_level=1,
                      attention_factors=(2,), head_channels=16)


def unet_small() -> UNetConfig:
    """About 1.2M parameters for 28x28 MNIST; self-attention at 14x14 and in the 7x7 middle."""
    return UNetConfig(in_channels=1, out_channels=1, image_size=28, base_channels=32, channel_mult=(1, 2, 2),
                      blocks_per_level=1, attention_factors=(2,), head_channels=64)


def unet_base() -> UNetConfig:
    """About 4.8M parameters for 32x32 RGB: unet_small at twice the width; attention at 16x16 and 8x8."""
    return UNetConfig(image_size=32, base_channels=64, channel_mult=(1, 2, 2), blocks_per_level=1,
                      attention_factors=(2,), head_channels=64)


def classifier_small() -> UNetConfig:
    """A noise-aware classifier for 28x28 grey images in 10 classes: unet_small's down path and middle
    with 7x7 attention (ADM's classifier is its U-Net's encoder, Dhariwal & Nichol 2021, §4.1)."""
    return replace(unet_small(), out_channels=10, attention_factors=(4,), head="logits")


def unet1d_small() -> UNetConfig:
    """About 0.8M parameters for 1-D signals of length 256: 1-D convolutions at four levels (256 down
    to 32 samples), self-attention at the lowest level and in the middle."""
    return UNetConfig(in_channels=1, out_channels=1, image_size=256, base_channels=32, channel_mult=(1, 2, 2, 2),
                      blocks_per_level=1, attention_factors=(8,), head_channels=32, dims=1)


UNET_PRESETS: dict[str, Callable[[], UNetConfig]] = {
    "classifier_small": classifier_small,
    "unet_tiny": unet_tiny,
    "unet_small": unet_small,
    "unet_base": unet_base,
    "unet1d_small": unet1d_small,
}
