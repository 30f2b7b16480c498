"""Denoising networks. Every one is an nn.Module called as

    net(x, t, cond=None) -> Tensor of x's shape: (B, C, H, W) images, or (B, dim) for the toy MLP

with t a (B,) float tensor (a time in [0, 1], or EDM's c_noise = ln(sigma~) / 4) and cond None,
a (B,) int64 tensor of class labels (label num_classes = the null label), or a dict with optional
keys "labels" (B,) and "context" (B, L, context_dim). A `Parameterization` decides what the output
means; the networks know nothing of schedules. The exception: a UNetConfig with head = "logits"
builds a noise-aware classifier, net(x, t) -> (B, classes) logits (unnoise.classifier). A ControlNet
reads an image condition, the hint, from cond.image (unnoise.models.controlnet). The EGNN reads point
sets (B, N, 3 + F), its real slots from cond.nodes (unnoise.models.egnn); the video U-Net videos
(B, C, T, H, W) (unnoise.models.video_unet); the WaveNet waveforms (B, 1, L) (unnoise.models.wavenet).

    config = MODEL_PRESETS["unet_small"]()                    # a frozen dataclass
    net = build_model(dataclasses.replace(config, num_classes=10))
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from unnoise.models.autoencoder import AUTOENCODER_PRESETS, Autoencoder, AutoencoderConfig
from unnoise.models.controlnet import CONTROLNET_PRESETS, ControlNet, ControlNetConfig
from unnoise.models.dit import DIT_PRESETS, DiT, DiTConfig
from unnoise.models.egnn import EGNN, EGNN_PRESETS, EGNNConfig
from unnoise.models.mlp import MLP, MLPConfig
from unnoise.models.unet import UNET_PRESETS, UNet, UNetClassifier, UNetConfig
from unnoise.models.video_unet import VIDEO_PRESETS, VideoUNet, VideoUNetConfig
from unnoise.models.wavenet import WAVENET_PRESETS, WaveNet, WaveNetConfig

ModelConfig = UNetConfig | DiTConfig | MLPConfig | AutoencoderConfig | EGNNConfig | WaveNetConfig

MODEL_PRESETS: dict[str, Callable[[], ModelConfig]] = {**UNET_PRESETS, **DIT_PRESETS, **AUTOENCODER_PRESETS,
                                                     **CONTROLNET_PRESETS, **EGNN_PRESETS,
                                                     **VIDEO_PRESETS, **WAVENET_PRESETS,
                                                     "mlp_toy": MLPConfig}


def build_model(config: ModelConfig) -> nn.Module:
    """The network a config describes: UNet for a UNetConfig, DiT for a DiTConfig, MLP for an MLPConfig,
    ControlNet (a frozen U-Net and its control) for a ControlNetConfig, EGNN for an EGNNConfig,
    VideoUNet for a VideoUNetConfig, WaveNet for a WaveNetConfig."""
    if isinstance(config, ControlNetConfig):
        return ControlNet(config)
    if isinstance(config, VideoUNetConfig):
        return VideoUNet(config)
    if isinstance(config, UNetConfig):
        return UNetClassifier(config) if config.head == "logits" else UNet(config)
    if isinstance(config, DiTConfig):
        return DiT(config)
    if isinstance(config, MLPConfig):
        return MLP(config)
    if isinstance(config, AutoencoderConfig):
        return Autoencoder(config)
    if isinstance(config, EGNNConfig):
        return EGNN(config)
    if isinstance(config, WaveNetConfig):
        return WaveNet(config)
    raise TypeError(f"build_model takes a UNetConfig, DiTConfig or MLPConfig, got {type(config).__name__}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with requires_grad if trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "MLP",
    "ControlNet",
    "ControlNetConfig",
    "MODEL_PRESETS",
    "Autoencoder",
    "AutoencoderConfig",
    "DiT",
    "DiTConfig",
    "EGNN",
    "EGNNConfig",
    "MLPConfig",
    "ModelConfig",
    "UNet",
    "UNetClassifier",
    "UNetConfig",
    "VideoUNet",
    "VideoUNetConfig",
    "WaveNet",
    "WaveNetConfig",
    "build_model",
    "count_parameters",
]
