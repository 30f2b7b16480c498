"""ControlNet (Zhang et al. 2023): a trainable copy of a frozen U-Net's encoder and middle that reads an
image condition (a hint: edges, a low-resolution copy, ...) and adds its features into the frozen
U-Net's skip connections and middle output through zero-initialised 1x1 convolutions (§3.1, eq. 2):

    y = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)

Here the copy's input is x's input convolution plus a small hint encoder (§3.2: four convolutions
down to the feature size, SiLU between, the last zero-initialised); every skip the decoder reads gets
its own zero convolution. At initialisation every zero convolution outputs 0, so the network is
exactly the base U-Net (tested bit for bit). The base is frozen (requires_grad False); the copy
starts from the base's weights (the objective loads them). cond.image holds the hint (B, C_hint, H, W)
at the image's size; the rest of cond (labels, text) goes to both the base and the copy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from unnoise.conditioning import as_condition
from unnoise.models.embeddings import Cond, zero_
from unnoise.models.interface import ModelInterface
from unnoise.models.unet import UNet, UNetConfig, UNetEncoder, conv_nd, unet_small


@dataclass(frozen=True)
class ControlNetConfig(UNetConfig):
    """A U-Net's config (the frozen base's architecture, which must match the base run's) and the hint's."""

    hint_channels: int = 1  # channels of the hint image
    hint_width: int = 16  # channels inside the hint encoder

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head != "image" or self.dims != 2 or self.cond_channels:
            raise ValueError("a ControlNet controls an image U-Net (model.head = \"image\", model.dims = 2) that "
                             "reads no image condition of its own (model.cond_channels = 0)")
        if self.hint_channels < 1 or self.hint_width < 1:
            raise ValueError(f"model.hint_channels and model.hint_width must be >= 1, got {self.hint_channels}, "
                             f"{self.hint_width}")

    @property
    def unet(self) -> UNetConfig:
        """The base U-Net's own config."""
        return UNetConfig(**{k: getattr(self, k) for k in UNetConfig.__dataclass_fields__})

    @property
    def interface(self) -> ModelInterface:
        return replace(self.unet.interface, hint_channels=self.hint_channels)


class HintEncoder(nn.Module):
    """The hint (B, C_hint, H, W) to (B, base_channels, H, W): 3x3 convolutions with SiLU, the last zero."""

    def __init__(self, hint_channels: int, width: int, out_channels: int):
        super().__init__()
        self.net = nn.Sequential(conv_nd(2, hint_channels, width, 3, padding=1), nn.SiLU(),
                                 conv_nd(2, width, width, 3, padding=1), nn.SiLU(),
                                 conv_nd(2, width, 2 * width, 3, padding=1), nn.SiLU(),
                                 zero_(conv_nd(2, 2 * width, out_channels, 3, padding=1)))

    def forward(self, hint: Tensor) -> Tensor:
        return self.net(hint)


class ControlNet(nn.Module):
    """forward(x, t, cond) with cond.image the hint: the frozen base U-Net steered by the trainable copy."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = config
        self.base = UNet(config.unet).requires_grad_(False)
        self.copy = UNetEncoder(config.unet)  # the trainable copy of the encoder and middle (loaded by the objective)
        self.hint = HintEncoder(config.hint_channels, config.hint_width, config.base_channels)
        self.zero_skips = nn.ModuleList(zero_(conv_nd(2, w, w, 1)) for w in self.copy.skip_widths)
        self.zero_middle = zero_(conv_nd(2, self.copy.channels, self.copy.channels, 1))

    def init_from_base(self) -> None:
        """The copy starts as the base's encoder and middle (Zhang et al. 2023, §3.1)."""
        mine = self.copy.state_dict()
        self.copy.load_state_dict({k: v for k, v in self.base.state_dict().items() if k in mine})

    def train(self, mode: bool = True) -> ControlNet:
        super().train(mode)
        self.base.eval()  # frozen: its dropout stays off
        return self

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        cond = as_condition(cond)
        hint = cond.image if cond is not None else None
        size = self.config.image_size
        if hint is None or tuple(hint.shape) != (x.shape[0], self.config.hint_channels, size, size):
            raise ValueError(f"a ControlNet needs a hint image (cond.image) of shape ({x.shape[0]}, "
                             f"{self.config.hint_channels}, {size}, {size}), got "
                             f"{None if hint is None else tuple(hint.shape)}")
        rest = replace(cond, image=None, image_noise=None)
        h, skips, emb, context = self.base.encode(x, t, rest)
        residuals, middle = self._control(x, t, rest, hint.to(x.dtype))
        skips = [s + r for s, r in zip(skips, residuals, strict=True)]
        return self.base.decode(h + middle, skips, emb, context)

    def _control(self, x: Tensor, t: Tensor, cond: Cond, hint: Tensor) -> tuple[list[Tensor], Tensor]:
        """The copy's features through their zero convolutions: one residual per skip, one for the middle."""
        h, features, _, _ = self.copy.encode(x, t, cond, extra=self.hint(hint))
        return [z(f) for z, f in zip(self.zero_skips, features, strict=True)], self.zero_middle(h)


def controlnet_small() -> ControlNetConfig:
    """A ControlNet over unet_small (28x28 grey) with a one-channel hint."""
    return ControlNetConfig(**{k: getattr(unet_small(), k) for k in UNetConfig.__dataclass_fields__})


CONTROLNET_PRESETS = {"controlnet_small": controlnet_small}
