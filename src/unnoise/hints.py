"""Image conditions derived from the data, for ControlNets and other image-conditioned models:
computed once for the whole data set, at the images' size, in [-1, 1] like the images.

    edges    Canny edge maps (Canny 1986; scikit-image), one channel: 1 on an edge, -1 elsewhere
    lowres   the image average-pooled by LOWRES_FACTOR and blown back up (nearest): what a
             super-resolution model or a layout-following ControlNet reads
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

HINTS = ("none", "edges", "lowres")
EDGE_SIGMA = 1.0  # Canny's Gaussian smoothing, in pixels: at 28x28 a larger one loses the garments' inner lines
LOWRES_FACTOR = 4  # 28x28 -> 7x7


def hint_channels(kind: str, image_channels: int) -> int:
    """Channels of a hint of `kind` for images of `image_channels`."""
    return {"none": 0, "edges": 1, "lowres": image_channels}[kind]


def edges(images: Tensor) -> Tensor:
    """(N, 1, H, W) Canny edges of images (N, C, H, W) in [-1, 1] (grey: the channels' mean)."""
    from skimage.feature import canny  # imported here: only runs with edge hints pay for it

    grey = ((images.float().mean(1) + 1) / 2).clamp(0, 1).numpy()  # (N, H, W) in [0, 1]
    maps = np.stack([canny(g, sigma=EDGE_SIGMA) for g in grey])  # bool (N, H, W)
    return torch.from_numpy(maps).float()[:, None] * 2 - 1


def lowres(images: Tensor, factor: int = LOWRES_FACTOR) -> Tensor:
    """(N, C, H, W): each factor x factor block replaced by its mean (H, W multiples of factor)."""
    if images.shape[-1] % factor or images.shape[-2] % factor:
        raise ValueError(f"lowres hints need image sides that are multiples of {factor}, got "
                         f"{tuple(images.shape[-2:])}")
    small = F.avg_pool2d(images.float(), factor)
    return F.interpolate(small, scale_factor=factor, mode="nearest")


def make_hints(images: Tensor, kind: str) -> Tensor:
    """The hints of `kind` for images (N, C, H, W) in [-1, 1]."""
    if kind == "edges":
        return edges(images)
    if kind == "lowres":
        return lowres(images)
    raise ValueError(f"unknown hint {kind!r}; choose from {', '.join(HINTS[1:])}")
