"""The video U-Net of Ho et al. 2022 ("Video Diffusion Models", §3): the image U-Net factorised in
space and time. Every convolution, group norm and spatial attention acts on each frame alone (the
2-D U-Net of unnoise.models.unet, run on B x T frames); after each of its residual steps, attention
across the T frames at every pixel mixes time, with a learned bias per head and relative position
i - j (Shaw et al. 2018, as Ho et al. 2022 use relative position embeddings in time).

Joint training on videos and images (Ho et al. 2022, §3.1): a row with cond.independent = True
holds T unrelated frames, and its temporal attention is masked to the diagonal, so each frame sees
only itself. Then the network is exactly the per-frame image model (tests/test_video.py checks it):
softmax over one key is 1, whatever the bias.

    net = VideoUNet(VideoUNetConfig(in_channels=1, out_channels=1, image_size=32, frames=10))
    out = net(x, t, Condition(labels=labels))        # x (B, 1, 10, 32, 32) -> (B, 1, 10, 32, 32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unnoise.conditioning import as_condition
from unnoise.models.embeddings import Cond, zero_
from unnoise.models.interface import ModelInterface
from unnoise.models.unet import UNet, UNetConfig


@dataclass(frozen=True)
class VideoUNetConfig(UNetConfig):
    """A 2-D U-Net's config (each frame's network) and time's: frames and temporal heads."""

    frames: int = 10  # frames per video, T (the relative-position table spans -(T - 1)..T - 1)
    temporal_head_channels: int = 32  # channels per head of the temporal attention
    temporal_factors: tuple[int, ...] = (1, 2, 4, 8)  # levels with temporal attention, by downsampling factor

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head != "image" or self.dims != 2 or self.cond_channels or self.context_dim:
            raise ValueError("a video U-Net factorises an image U-Net (model.head = \"image\", model.dims = 2) with "
                             "no image or text condition")
        if self.frames < 1 or self.temporal_head_channels < 1:
            raise ValueError(f"model.frames and model.temporal_head_channels must be >= 1, got {self.frames}, "
                             f"{self.temporal_head_channels}")

    @property
    def interface(self) -> ModelInterface:
        c = self
        return ModelInterface((c.in_channels, c.frames, c.image_size, c.image_size), c.num_classes)


class TemporalAttention(nn.Module):
    """Pre-norm self-attention over the frames at each pixel, with a relative-position bias, as a
    zero-initialised residual branch (a fresh block is the identity)."""

    def __init__(self, channels: int, heads: int, frames: int):
        super().__init__()
        self.heads, self.frames = heads, frames
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = zero_(nn.Linear(channels, channels))
        self.bias = nn.Parameter(torch.zeros(heads, 2 * frames - 1))  # per head, per i - j

    def forward(self, h: Tensor, batch: int, allowed: Tensor) -> Tensor:
        """h (B T, C, H, W); allowed (B, T, T) bool, True where frame i may attend to frame j."""
        bt, c, height, width = h.shape
        t = bt // batch
        seq = h.view(batch, t, c, height * width).permute(0, 3, 1, 2).reshape(-1, t, c)  # (B HW, T, C)
        q, k, v = (a.unflatten(-1, (self.heads, -1)).transpose(1, 2) for a in self.qkv(self.norm(seq)).chunk(3, -1))
        pos = torch.arange(t, device=h.device)
        bias = self.bias[:, (pos[:, None] - pos[None, :]) + self.frames - 1]  # (heads, T, T)
        mask = torch.where(allowed, 0.0, float("-inf")).to(h.dtype)  # (B, T, T)
        bias = (bias[None] + mask[:, None]).repeat_interleave(height * width, 0)  # (B HW, heads, T, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # (B HW, heads, T, C / heads)
        out = self.out(out.transpose(1, 2).flatten(2))  # (B HW, T, C)
        out = out.view(batch, height * width, t, c).permute(0, 2, 3, 1).reshape(bt, c, height, width)
        return h + out


class VideoUNet(UNet):
    """forward(x, t, cond=None) -> (B, C, T, H, W) for x (B, C, T, H, W); see the module docstring."""

    def __init__(self, config: VideoUNetConfig):
        super().__init__(config)
        factors = _step_factors(config)
        self.temporal = nn.ModuleDict({
            name: nn.ModuleList(self._temporal(step, f) for step, f in zip(steps, factors[name]))
            for name, steps in (("down", self.down), ("middle", self.middle), ("up", self.up))})

    def _temporal(self, step: nn.Module, factor: int) -> nn.Module:
        """Temporal attention after a step with a residual block at a level of temporal_factors; none
        after a bare downsampling."""
        if step.res is None or factor not in self.config.temporal_factors:
            return nn.Identity()
        width = step.res.conv2.out_channels
        heads = max(1, width // self.config.temporal_head_channels)
        return TemporalAttention(width, heads, self.config.frames)

    def forward(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        c = self.config
        if x.ndim != 5 or tuple(x.shape[1:]) != c.interface.sample_shape:
            raise ValueError(f"expected videos of shape (B, {', '.join(map(str, c.interface.sample_shape))}), "
                             f"got {tuple(x.shape)}")
        b, channels, frames, height, width = x.shape
        cond = as_condition(cond)
        emb, _ = self.embed(t, cond, b)  # (B, D): one time and label per video
        emb = emb.repeat_interleave(frames, 0)  # (B T, D)
        allowed = _allowed(cond, b, frames, x.device)
        h = self.input(x.transpose(1, 2).reshape(b * frames, channels, height, width))

        def run(step: nn.Module, temporal: nn.Module, h: Tensor) -> Tensor:
            h = step(h, emb, None)
            return h if isinstance(temporal, nn.Identity) else temporal(h, b, allowed)

        skips = [h]
        for step, temporal in zip(self.down, self.temporal["down"]):
            h = run(step, temporal, h)
            skips.append(h)
        for step, temporal in zip(self.middle, self.temporal["middle"]):
            h = run(step, temporal, h)
        for step, temporal in zip(self.up, self.temporal["up"]):
            h = run(step, temporal, torch.cat([h, skips.pop()], dim=1))
        out = self.out(h)  # (B T, C, H, W)
        return out.view(b, frames, -1, height, width).transpose(1, 2)


def _step_factors(c: UNetConfig) -> dict[str, list[int]]:
    """The downsampling factor each step of the U-Net's paths runs at, in the order UNet builds them:
    per level its blocks then a downsampling (which runs at the finer level); the middle at the
    coarsest; on the way up blocks + 1 steps per level, the last of them upsampling after its block."""
    levels = range(len(c.channel_mult))
    down = [2**lv for lv in levels for _ in range(c.blocks_per_level + (lv < len(levels) - 1))]
    up = [2**lv for lv in reversed(levels) for _ in range(c.blocks_per_level + 1)]
    return {"down": down, "middle": [2 ** levels[-1]] * 2, "up": up}


def _allowed(cond, batch: int, frames: int, device) -> Tensor:
    """(B, T, T) bool: every pair of frames, or only the diagonal for rows of independent frames."""
    everything = torch.ones(batch, frames, frames, dtype=torch.bool, device=device)
    independent = getattr(cond, "independent", None)
    if independent is None:
        return everything
    if independent.dtype != torch.bool or tuple(independent.shape) != (batch,):
        raise ValueError(f"cond.independent must be a bool tensor of shape ({batch},), got "
                         f"{independent.dtype} {tuple(independent.shape)}")
    eye = torch.eye(frames, dtype=torch.bool, device=device)
    return torch.where(independent.to(device)[:, None, None], eye, everything)


def video_unet_small() -> VideoUNetConfig:
    """For 10 frames of 32x32 grey digits on a CPU: per frame 16, 32, 64 channels at 32, 16 and 8
    pixels, spatial attention only at 8x8 (level and middle), temporal attention after every
    residual block at 16x16 and 8x8 (at 32x32 it cost a third of a step)."""
    return VideoUNetConfig(in_channels=1, out_channels=1, image_size=32, base_channels=16, channel_mult=(1, 2, 4),
                           blocks_per_level=1, attention_factors=(4,), head_channels=32, frames=10,
                           temporal_head_channels=16, temporal_factors=(2, 4))


def video_unet_tiny() -> VideoUNetConfig:
    """For tests: 4 frames of 8x8, 8 channels."""
    return VideoUNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
                           blocks_per_level=1, attention_factors=(2,), head_channels=8, frames=4,
                           temporal_head_channels=8)


VIDEO_PRESETS: dict[str, Callable[[], VideoUNetConfig]] = {"video_unet_small": video_unet_small,
                                                           "video_unet_tiny": video_unet_tiny}
