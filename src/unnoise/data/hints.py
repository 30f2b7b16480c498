"""Image conditions derived from the data, for ControlNets and super-resolution models: computed once
for the whole data set from its stored pixels (uint8), at the images' size, in [-1, 1] like them.

    edges    Canny edge maps (Canny 1986; scikit-image), one channel: 1 on an edge, -1 elsewhere
    lowres   the image at 1 / factor of its size, as the data set itself resizes (bilinear,
             antialiased, rounded to uint8; so a base model trained at that size samples exactly
             this kind of input), blown back up by nearest neighbours: a super-resolution model's input
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unnoise.data.image_set import fit_images

HINTS = ("none", "edges", "lowres")
EDGE_SIGMA = 1.0  # Canny's Gaussian smoothing, in pixels: at 28x28 a larger one loses the garments' inner lines


def hint_channels(kind: str, image_channels: int) -> int:
    """Channels of a hint of `kind` for images of `image_channels`."""
    return {"none": 0, "edges": 1, "lowres": image_channels}[kind]


def to_float(pixels: Tensor) -> Tensor:
    """uint8 pixels 0..255 -> [-1, 1] (as the data sets map them)."""
    return pixels.float() / 127.5 - 1


def edges(pixels: Tensor) -> Tensor:
    """(N, 1, H, W) Canny edges of uint8 images (N, C, H, W) (grey: the channels' mean)."""
    from skimage.feature import canny  # imported here: only runs with edge hints pay for it

    grey = (pixels.float().mean(1) / 255).numpy()  # (N, H, W) in [0, 1]
    maps = np.stack([canny(g, sigma=EDGE_SIGMA) for g in grey])  # bool (N, H, W)
    return torch.from_numpy(maps).float()[:, None] * 2 - 1


def upsample(low: Tensor, factor: int) -> Tensor:
    """Each pixel of a low-resolution image as a factor x factor block (nearest neighbours)."""
    return F.interpolate(low, scale_factor=factor, mode="nearest")


def lowres(pixels: Tensor, factor: int) -> Tensor:
    """(N, C, H, W): uint8 images (N, C, H, W) at side H / factor (the data sets' resize), blown back up."""
    side = pixels.shape[-1]
    if side % factor or pixels.shape[-2] != side:
        raise ValueError(f"lowres hints need square images whose side is a multiple of data.hint_factor = {factor}, "
                         f"got {tuple(pixels.shape[-2:])}")
    return upsample(to_float(fit_images(pixels, side // factor, "resize")), factor)


def make_hints(pixels: Tensor, kind: str, factor: int = 2) -> Tensor:
    """The hints of `kind` for uint8 images (N, C, H, W); factor: lowres's."""
    if kind == "edges":
        return edges(pixels)
    if kind == "lowres":
        return lowres(pixels, factor)
    raise ValueError(f"unknown hint {kind!r}; choose from {', '.join(HINTS[1:])}")
