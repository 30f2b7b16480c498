"""What a user hands the editing commands: an image and a mask, read into the model's data shape.

Images become (1, C, H, W) in [-1, 1] (pixel p in 0..255 -> p / 127.5 - 1, as the data sets); an
image of another size is resized (Lanczos) to the model's. A mask is white where pixels are to be
generated and black where they are kept (the convention of the common inpainting tools); a box
"left,top,right,bottom" in pixels (right and bottom exclusive) marks the region to generate.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor


def _open(path: str | os.PathLike, mode: str, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """The file as uint8 (H, W) or (H, W, 3) at size (W, H); a one-line ValueError when it cannot be."""
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            return np.asarray(im if im.size == size else im.resize(size, resample))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not an image Pillow can read within its pixel limit ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: unreadable ({err})") from None


def read_image(path: str | os.PathLike, shape: tuple[int, ...]) -> Tensor:
    """An image file as (1, C, H, W) in [-1, 1] for a model whose data are `shape` = (C, H, W), C 1 or 3."""
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"editing takes images; this model's samples have shape {shape}")
    c, h, w = shape
    pixels = _open(path, "L" if c == 1 else "RGB", (w, h), Image.Resampling.LANCZOS)
    x = torch.from_numpy(pixels.copy()).float().div_(127.5).sub_(1.0)
    return (x[None] if c == 1 else x.permute(2, 0, 1))[None]


def read_mask(path: str | os.PathLike, shape: tuple[int, ...]) -> Tensor:
    """keep (1, 1, H, W) bool from a mask file: True (kept) where the mask is dark (< 128)."""
    _, h, w = shape
    return torch.from_numpy(_open(path, "L", (w, h), Image.Resampling.NEAREST) < 128)[None, None]


def box_mask(box: str, shape: tuple[int, ...]) -> Tensor:
    """keep (1, 1, H, W) bool: False inside the box "left,top,right,bottom" (pixels; right, bottom exclusive)."""
    _, h, w = shape
    try:
        left, top, right, bottom = (int(v) for v in box.split(","))
    except ValueError:
        raise ValueError(f"--box must be four whole numbers left,top,right,bottom, got {box!r}") from None
    if not (0 <= left < right <= w and 0 <= top < bottom <= h):
        raise ValueError(f"--box {box} must satisfy 0 <= left < right <= {w} and 0 <= top < bottom <= {h}")
    keep = torch.ones(1, 1, h, w, dtype=torch.bool)
    keep[..., top:bottom, left:right] = False
    return keep
