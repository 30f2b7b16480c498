"""A set of images held as one uint8 tensor, served as float32 in [-1, 1].

Every image data set in `unnoise.data` is an `ImageSet`: the pixels of all images live in one
(N, C, H, W) uint8 tensor, so `dataset[i]` is a cheap slice and a trainer can draw a whole batch with
`dataset.batch(index)` without a DataLoader. Pixel value p in 0..255 maps to p / 127.5 - 1, so 0 is
exactly -1 and 255 exactly 1. A set made for text-to-image training also carries `captions`
(unnoise.data.captions): the caption texts and, per image, which of them describe it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unnoise.data.captions import Captions
from unnoise.data.tensor_set import TensorSet

FITS = ("pad", "resize")  # how a built-in set reaches another image_size


def to_signed_unit(images: Tensor) -> Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1]."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


class ImageSet(TensorSet):
    """Images (N, C, H, W) uint8 with labels (N,) int64 (-1 where the set has no labels).

    `dataset[i]` is (image, label): image (C, H, W) float32 in [-1, 1], label a Python int.
    `dataset.batch(index)` is the batched path: (B, C, H, W) float32 and (B,) int64.
    `dataset.captions` is None, or a Captions table with one row per image.
    """

    modality = "image"  # how a sample is previewed (unnoise.modality)

    def __init__(self, images: Tensor, labels: Tensor | None, *, name: str, class_names: Sequence[str] = (),
                 captions: Captions | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be uint8 (N, C, S, S), got {images.dtype} {tuple(images.shape)}")
        super().__init__(images, labels, name=name, class_names=class_names, captions=captions)

    @property
    def images(self) -> Tensor:
        """(N, C, H, W) uint8, as stored."""
        return self.values

    def serve(self, values: Tensor) -> Tensor:
        return to_signed_unit(values)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


def fit_images(images: Tensor, size: int, fit: str = "pad", chunk: int = 4096) -> Tensor:
    """Bring square uint8 images (N, C, S, S) to (N, C, size, size).

    "pad" centres them on a black (0) border, the background of the MNIST-style sets, and keeps
    every pixel as it was; it cannot shrink. "resize" resamples (bilinear, antialiased when
    shrinking), `chunk` images at a time to bound memory.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    if size < 1:
        raise ValueError(f"image_size must be >= 1, got {size}")
    s = images.shape[-1]
    if size == s:
        return images
    if fit == "pad":
        if size < s:
            raise ValueError(f"cannot pad {s}x{s} images down to {size}x{size}; use fit='resize'")
        before = (size - s) // 2
        after = size - s - before
        return F.pad(images, (before, after, before, after))  # (N, C, size, size), zeros outside
    parts = []
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float32)
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=size < s, align_corners=False)
        parts.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(parts)


def with_channels(images: Tensor, channels: int) -> Tensor:
    """Grey images (N, 1, H, W) as 1 channel or replicated to 3; 3-channel images must stay 3."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if images.shape[1] == channels:
        return images
    if images.shape[1] != 1:
        raise ValueError(f"cannot turn {images.shape[1]}-channel images into {channels}")
    return images.repeat(1, channels, 1, 1)


def grey_image_set(
    pixels: np.ndarray, labels: np.ndarray, *, name: str, class_names: Sequence[str],
    image_size: int | None = None, channels: int = 1, fit: str = "pad", captions: Captions | None = None,
) -> ImageSet:
    """An ImageSet from grey pixels (N, S, S) uint8 and labels (N,), brought to the size asked for."""
    images = torch.from_numpy(pixels).unsqueeze(1)  # (N, 1, S, S)
    images = with_channels(fit_images(images, image_size or images.shape[-1], fit), channels)
    return ImageSet(
        images, torch.from_numpy(labels.astype(np.int64)), name=name, class_names=class_names, captions=captions
    )
