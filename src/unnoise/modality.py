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

def _points(x: Tensor, path: str | os.PathLike, columns: int | None) -> Path:
    return plot_samples({f"{len(x)} samples": x}, path, limit=1.6)


# kind -> (tensor rank of a batch, the writer of its picture); a new kind of data adds its entry here
PREVIEWS = {"image": (4, save_image_grid), "points": (2, _points), "signal": (3, plot_signals)}
MODALITIES = tuple(PREVIEWS)


def preview(kind: str, x: Tensor, path: str | os.PathLike, columns: int | None = None) -> Path:
    """Write a batch x (n, *sample_shape) as the picture of its kind: PNG grid, scatter or line plots."""
    if kind not in PREVIEWS:
        raise ValueError(f"unknown modality {kind!r}; known: {', '.join(PREVIEWS)}")
    rank, write = PREVIEWS[kind]
    if x.ndim != rank:
        raise ValueError(f"a batch of {kind} samples has rank {rank}, got shape {tuple(x.shape)}")
    return write(x, path, columns)
