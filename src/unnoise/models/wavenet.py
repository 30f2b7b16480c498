"""The DiffWave denoiser for waveforms (Kong et al. 2021, "DiffWave: A Versatile Diffusion Model for
Audio Synthesis", §3.1 and Fig. 2): a non-causal stack of dilated-convolution residual layers with
gated units and summed skip connections, as in WaveNet (van den Oord et al. 2016) without causality.

    x (B, 1, L) -> conv (1 -> C), ReLU
    per layer l, dilation 2^(l mod cycle):
        y = dilated conv_3(h + W_l emb) (C -> 2C);  y = tanh(y_a) * sigmoid(y_b)      (gated unit)
        (r, s) = conv_1(y) (C -> 2C);  h <- (h + r) / sqrt(2);  skip += s
    skip / sqrt(layers) -> ReLU -> conv_1 -> ReLU -> zero-initialised conv_1 (C -> 1)

emb is the embedding of the time (sinusoid, two SiLU layers, as DiffWave's diffusion-step
embedding) plus a class label's (DiffWave's class-conditional SC09 model adds a label embedding the
same way); label num_classes is the null label, for guidance.

hop > 1 is a CPU economy: the first convolution reads frames of `hop` samples with stride hop (a
learned patch embedding, as a DiT reads patches) and a transposed convolution writes them back, so
the stack runs on L / hop positions; hop = 1 is DiffWave as published.

With frames, the stack's ReLUs are a bottleneck: 64 channels after a ReLU carry at most 32 signed
values, so a frame of 32 samples of noise cannot pass through them whole, and the network cannot
cancel it where the clip is silent. mask = True adds the path of Conv-TasNet (Luo & Mesgarani 2019,
§II-A): the frames' linear encoding E(x), scaled channel by channel by a mask M the stack computes,
decoded by a linear transposed convolution D. A time-varying gain on a learned basis is the form of a
local Wiener filter, the exact denoiser of a locally stationary Gaussian signal:

    out = output(skip features) + D(M(skip features) * E(x))      (M zero-initialised)

    net = WaveNet(WaveNetConfig(length=16000, hop=32, num_classes=10))
    out = net(x, t, Condition(labels=labels))          # (B, 1, 16000)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unnoise.models.embeddings import Cond, ConditionEmbedding, zero_
from unnoise.models.interface import ModelInterface, check_fields


@dataclass(frozen=True)
class WaveNetConfig:
    length: int = 16000  # samples per waveform, L (a multiple of hop)
    channels: int = 64  # residual channels, C
    layers: int = 20  # residual layers
    cycle: int = 10  # dilations 1, 2, ..., 2^(cycle - 1), repeated
    hop: int = 1  # samples per position of the stack (1: DiffWave as published)
    num_classes: int = 0  # class labels (0 = unconditional); label num_classes is the null label
    mask: bool = False  # add the masked linear path around the stack (for hop > 1)
    time_scale: float = 1000.0  # the time is embedded as sin/cos of time_scale * t

    def __post_init__(self) -> None:
        check_fields(self, ("length", "channels", "layers", "cycle", "hop"))
        if self.length % self.hop:
            raise ValueError(f"model.length ({self.length}) must be a multiple of model.hop ({self.hop})")

    @property
    def interface(self) -> ModelInterface:
        return ModelInterface((1, self.length), self.num_classes)


class ResidualLayer(nn.Module):
    def __init__(self, channels: int, emb_dim: int, dilation: int):
        super().__init__()
        self.emb = nn.Linear(emb_dim, channels)
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, h: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self.dilated(h + self.emb(emb)[..., None]).chunk(2, dim=1)
        residual, skip = self.out(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=1)
        return (h + residual) / math.sqrt(2), skip


class WaveNet(nn.Module):
    def __init__(self, config: WaveNetConfig):
        super().__init__()
        self.config = c = config
        emb_dim = 4 * c.channels
        self.embed = ConditionEmbedding(emb_dim, c.num_classes, time_scale=c.time_scale, frequencies=128)
        self.input = nn.Conv1d(1, c.channels, c.hop, stride=c.hop)
        self.layers = nn.ModuleList(ResidualLayer(c.channels, emb_dim, 2 ** (i % c.cycle)) for i in range(c.layers))
        self.skip_out = nn.Conv1d(c.channels, c.channels, 1)
        self.output = zero_(nn.ConvTranspose1d(c.channels, 1, c.hop, stride=c.hop))
        if c.mask:
            self.mask = zero_(nn.Conv1d(c.channels, c.channels, 1))
            self.decode = nn.ConvTranspose1d(c.channels, 1, c.hop, stride=c.hop)

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        """x (B, 1, L), t (B,), cond: None, labels (B,) or a Condition with labels -> (B, 1, L)."""
        c = self.config
        if x.ndim != 3 or tuple(x.shape[1:]) != (1, c.length):
            raise ValueError(f"expected waveforms of shape (B, 1, {c.length}), got {tuple(x.shape)}")
        emb, _ = self.embed(t, cond, x.shape[0])  # (B, 4C)
        encoded = self.input(x)
        h, skip = F.relu(encoded), 0
        for layer in self.layers:
            h, s = layer(h, emb)
            skip = skip + s
        features = F.relu(self.skip_out(F.relu(skip / math.sqrt(len(self.layers)))))
        out = self.output(features)
        if self.config.mask:
            out = out + self.decode(self.mask(features) * encoded)
        return out


def wavenet_digits() -> WaveNetConfig:
    """For 1 s of speech at 16 kHz on a CPU: frames of 32 samples (500 of them), 12 layers of 64
    channels, dilations 1..128 then 1..8 frames (a receptive field of 541 frames: the whole clip), and
    the masked linear path around the stack."""
    return WaveNetConfig(length=16000, channels=64, layers=12, cycle=8, hop=32, num_classes=10, mask=True)


def wavenet_ar2() -> WaveNetConfig:
    """For the AR(2) waveforms of 128 samples (a truth check): 6 layers of 24 channels, dilations 1..32,
    a receptive field of 127 samples."""
    return WaveNetConfig(length=128, channels=24, layers=6, cycle=6, hop=1)


def wavenet_tiny() -> WaveNetConfig:
    """For tests: 4 layers of 16 channels over 256 samples."""
    return WaveNetConfig(length=256, channels=16, layers=4, cycle=4, hop=1)


WAVENET_PRESETS = {"wavenet_digits": wavenet_digits, "wavenet_ar2": wavenet_ar2, "wavenet_tiny": wavenet_tiny}
