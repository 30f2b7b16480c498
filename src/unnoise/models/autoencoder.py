"""A KL-regularised convolutional autoencoder for latent diffusion (Rombach et al. 2022, §3 and
Appendix G), and the patch discriminator it may train against (Isola et al. 2017; Esser et al. 2021).

    encoder: conv -> [ResBlock x blocks, stride-2 conv] per level -> ResBlock, attention, ResBlock
             -> GN, SiLU, conv to 2 * latent_channels: the mean and log-variance of q(z | x)
    decoder: the mirror image, with nearest-neighbour upsampling, back to in_channels

With len(channel_mult) = L levels the latent is (latent_channels, H / f, W / f), f = 2^(L - 1). The
residual and attention blocks are the U-Net's (without a time embedding). q(z | x) is a diagonal
Gaussian; the KL term against N(0, I) keeps the latent near unit scale, and the scale factor that
makes it exactly unit variance is measured from data by unnoise.latent, never assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unnoise.models.embeddings import check_images
from unnoise.models.interface import ModelInterface
from unnoise.models.unet import AttentionBlock, ResBlock, group_norm


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 3  # image channels
    image_size: int = 32  # side of the training images (any multiple of the downsampling works)
    latent_channels: int = 4  # channels of z
    base_channels: int = 32  # channels at full resolution (a multiple of 4)
    channel_mult: tuple[int, ...] = (1, 2, 2)  # per level; L levels downsample by f = 2^(L - 1)
    blocks_per_level: int = 1  # residual blocks per level in the encoder (one more in the decoder)
    attention: bool = True  # self-attention in the middle, at the latent resolution
    disc_channels: int = 32  # width of the patch discriminator's first layer

    def __post_init__(self) -> None:
        # Messages name the [model] keys of a config. unnoise.config bounds each number from above too.
        for name in ("in_channels", "image_size", "latent_channels", "base_channels", "blocks_per_level",
                     "disc_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.base_channels % 4 or not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"model.base_channels must be a multiple of 4 and model.channel_mult positive integers, "
                             f"got {self.base_channels}, {list(self.channel_mult)}")
        if self.disc_channels % 2:
            raise ValueError(f"model.disc_channels must be even (its doubled layers take group norm in groups of 4), "
                             f"got {self.disc_channels}")
        if self.image_size % self.downsampling:
            raise ValueError(f"model.image_size must be a multiple of the downsampling factor {self.downsampling}, "
                             f"got {self.image_size}")

    @property
    def downsampling(self) -> int:
        """f: how much smaller the latent's sides are than the image's."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.downsampling
        return (self.latent_channels, side, side)

    @property
    def interface(self) -> ModelInterface:
        return ModelInterface((self.in_channels, self.image_size, self.image_size), output="autoencoder")


@dataclass(frozen=True)
class Posterior:
    """q(z | x) = N(mean, diag(exp(logvar))), each (B, C, h, w)."""

    mean: Tensor
    logvar: Tensor

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, noise: Tensor | None = None) -> Tensor:
        """mean + std * noise (reparameterised: differentiable in mean and logvar)."""
        return self.mean + self.std * (torch.randn_like(self.mean) if noise is None else noise)

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per example (B,), summed over the latent (Kingma & Welling 2014, App. B)."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1 - self.logvar).flatten(1).sum(1)


def _middle(channels: int, attention: bool) -> nn.ModuleList:
    blocks = [ResBlock(channels, channels, 0)]
    if attention:
        blocks.append(AttentionBlock(channels, max(1, channels // 64), 0))
    blocks.append(ResBlock(channels, channels, 0))
    return nn.ModuleList(blocks)


def _run(blocks: nn.ModuleList, h: Tensor) -> Tensor:
    for block in blocks:
        h = block(h, None)  # ResBlock(x, emb=None), AttentionBlock(x, context=None)
    return h


class Autoencoder(nn.Module):
    """encode(x) -> Posterior over z; decode(z) -> x_hat; forward(x) -> (x_hat, posterior)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        widths = [c.base_channels * m for m in c.channel_mult]
        # 1. Encoder.
        self.enc_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.enc_down, ch = nn.ModuleList(), widths[0]
        for level, width in enumerate(widths):
            for _ in range(c.blocks_per_level):
                self.enc_down.append(ResBlock(ch, width, 0))
                ch = width
            if level < len(widths) - 1:
                self.enc_down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.enc_mid = _middle(ch, c.attention)
        self.enc_out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * c.latent_channels, 3, padding=1))
        # 2. Decoder.
        self.dec_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.dec_mid = _middle(ch, c.attention)
        self.dec_up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(c.blocks_per_level + 1):
                self.dec_up.append(ResBlock(ch, width, 0))
                ch = width
            if level > 0:
                self.dec_up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                 nn.Conv2d(ch, ch, 3, padding=1)))
        self.dec_out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, c.in_channels, 3, padding=1))

    def encode(self, x: Tensor) -> Posterior:
        c = self.config
        check_images(x, c.in_channels, c.downsampling, f"the autoencoder downsamples by {c.downsampling}")
        h = self.enc_in(x)  # (B, base, H, W)
        for layer in self.enc_down:
            h = layer(h) if isinstance(layer, nn.Conv2d) else layer(h, None)  # down to (B, C, H / f, W / f)
        moments = self.enc_out(_run(self.enc_mid, h))  # (B, 2 * latent, H / f, W / f)
        mean, logvar = moments.chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(-30.0, 20.0))  # as LDM: exp() stays finite in float32

    def decode(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents of shape (B, {self.config.latent_channels}, h, w), "
                             f"got {tuple(z.shape)}")
        h = _run(self.dec_mid, self.dec_in(z))  # (B, C, h, w)
        for layer in self.dec_up:
            h = layer(h, None) if isinstance(layer, ResBlock) else layer(h)  # up to (B, base, H, W)
        return self.dec_out(h)  # (B, in_channels, H, W)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Posterior]:
        posterior = self.encode(x)
        return self.decode(posterior.sample(noise)), posterior

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight: where the adversarial weight is balanced (Esser et al. 2021, eq. 7)."""
        return self.dec_out[-1].weight


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017, §3.2.2; the form LDM uses): one real/fake logit per overlapping
    patch, (B, 1, h, w). Group norm instead of batch norm, so DDP ranks and batch sizes agree."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks, width = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)], channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers - 1 else 1
            blocks += [nn.Conv2d(width, out, 4, stride=stride, padding=1), group_norm(out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.body = nn.Sequential(*blocks)
        for m in self.modules():  # DCGAN initialisation (Radford et al. 2016, §4), as PatchGAN uses
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)  # (B, 1, h, w) logits


def autoencoder_f4() -> AutoencoderConfig:
    """f = 4, 4 latent channels, 0.95M parameters: 32x32 RGB -> 4x8x8 (12x fewer numbers)."""
    return AutoencoderConfig()


def autoencoder_tiny() -> AutoencoderConfig:
    """For tests: f = 2, 16x16 RGB."""
    return AutoencoderConfig(image_size=16, latent_channels=2, base_channels=8, channel_mult=(1, 2), attention=False,
                             disc_channels=8)


AUTOENCODER_PRESETS: dict[str, Callable[[], AutoencoderConfig]] = {
    "autoencoder_f4": autoencoder_f4,
    "autoencoder_tiny": autoencoder_tiny,
}


def psnr(x: Tensor, x_hat: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image (B,) in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = ((x.float() - x_hat.float().clamp(-1, 1)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-12))
