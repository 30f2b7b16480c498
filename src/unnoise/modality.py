"""How a sample is shown and kept, by kind of data: the one place that knows what a sample looks like.

The loop, the pipeline and evaluation pass samples around as tensors (n, *sample_shape); only here
do images become a PNG grid, 2-D points a scatter plot and 1-D signals line plots. Every kind
also saves raw samples as .npz (unnoise sample --out x.npz).

    kind = modality_of(config.data)          # "image", "points" or "signal"
    preview(kind, x, "samples.png")          # the picture a person looks at
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor

from unnoise.plots import plot_samples, plot_signals, save_image_grid


def _points(x: Tensor, path: str | os.PathLike, columns: int | None, metadata: dict[str, str] | None) -> Path:
    return plot_samples({f"{len(x)} samples": x}, path, limit=1.6, metadata=metadata)


def _signals(x: Tensor, path: str | os.PathLike, columns: int | None, metadata: dict[str, str] | None) -> Path:
    return plot_signals(x, path, columns, metadata=metadata)


# kind -> (tensor rank of a batch, the writer of its picture); a new kind of data adds its entry here
PREVIEWS = {"image": (4, save_image_grid), "points": (2, _points), "signal": (3, _signals)}
MODALITIES = tuple(PREVIEWS)
# kind -> the writer of one sample as a file of its own (unnoise sample --individual); points have none
SINGLES = {"image": lambda x, path, metadata: save_image_grid(x, path, 1, metadata, gap=0),
           "signal": lambda x, path, metadata: plot_signals(x, path, 1, metadata=metadata)}


def preview(kind: str, x: Tensor, path: str | os.PathLike, columns: int | None = None,
            metadata: dict[str, str] | None = None) -> Path:
    """Write a batch x (n, *sample_shape) as the picture of its kind: PNG grid, scatter or line plots;
    columns: panels a row (None: about square); metadata: PNG text chunks (the settings it was made with)."""
    if kind not in PREVIEWS:
        raise ValueError(f"unknown modality {kind!r}; known: {', '.join(PREVIEWS)}")
    rank, write = PREVIEWS[kind]
    if x.ndim != rank:
        raise ValueError(f"a batch of {kind} samples has rank {rank}, got shape {tuple(x.shape)}")
    return write(x, path, columns, metadata)


def save_one(kind: str, x: Tensor, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write one sample x (1, *sample_shape) as a PNG of its own: the image itself, or its line plot."""
    if kind not in SINGLES:
        raise ValueError(f"{kind} samples have no picture of one sample; known: {', '.join(SINGLES)}")
    return SINGLES[kind](x, path, metadata)
