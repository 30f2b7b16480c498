"""Videos written and measured: animated GIF grids and frame strips, and what a video of a moving
digit should show: a path of constant velocity bouncing off the walls, and one readable digit in
every frame.

Every measurement takes a batch (n, 1, T, H, W) in [-1, 1] (generated samples or
unnoise.data.video.moving_digits served) and is a plain function; `video_report` gathers them:

    trajectory_error  RMS distance (pixels) of the frames' ink centres from the best bouncing path
    centre_speed      mean distance (pixels) the ink centre moves between frames
    frame_agreement   share of frames classified as their video's majority digit
    digit_accuracy    share of frames classified as the video's label (when labels are given)
    FD[mnist-cnn, frames]  Fréchet distance of the frames' features to a reference (when given)

    real, _ = moving_digits("test").batch(torch.arange(1000))
    report = video_report(samples, labels=classes, reference=real)
    save_gif(samples[:16], "samples.gif", metadata={"steps": 50})

A frame is classified by the packaged MNIST feature network (unnoise.features) after it is brought
to MNIST's own framing: the digit is cut out around its ink centre, scaled so its ink fills a 20x20
box and centred by centre of mass in 28x28 (LeCun et al. 1998, the MNIST normalisation). Only that
crop reaches the network, so the per-frame features (and FD) judge the digit's look; where it is,
and how it moves, is the trajectory error's job.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from unnoise import metrics
from unnoise.data.video import bounce
from unnoise.files import write_atomic
from unnoise.plots import image_grid, save_image_grid

DIGIT_SIZE = 16  # side of the square a moving digit's 28x28 MNIST image is shrunk to (the data's default)
MAX_SPEED = 4.0  # largest speed (pixels a frame, per axis) the path fit considers; the data move at most 3
LO_SLACK = 1.0  # the walls of the fitted path may sit this far (pixels) from where the digit size puts them
MNIST_SIDE, MNIST_BOX = 28, 20  # MNIST's image side and the box its digits' ink is scaled to fit
NUDGE = 0.3  # fit_bounce also starts with every frame moved this far along its path: flips those at a wall
STRETCH = (0.1, 0.7)  # shares of a framed digit's peak mapped to black and to white (mnist_frames)
INK = 0.3  # a pixel brighter than this share of its frame's peak counts towards the digit's bounding box


def _check_videos(videos: Tensor) -> None:
    if videos.ndim != 5 or videos.shape[1] not in (1, 3) or videos.shape[2] < 1:
        raise ValueError(f"expected videos of shape (n, 1 or 3, T, H, W), got {tuple(videos.shape)}")


def save_gif(videos: Tensor, path: str | os.PathLike, columns: int | None = None, fps: float = 8,
             metadata: dict | None = None, scale: int = 2, gap: int = 1) -> Path:
    """A batch (n, C, T, H, W) in [-1, 1] as one looping animated GIF: frame t shows frame t of every
    video in a grid (unnoise.plots.image_grid; columns None: about square), each pixel drawn as a
    scale x scale block. metadata: the settings, stored as JSON in the GIF's comment extension
    (read back as Image.open(path).info["comment"]). GIF counts time in 10 ms steps, so a frame lasts
    1000 / fps ms rounded to them; identical consecutive frames (a still video) are merged by the
    writer into one frame shown for their summed duration."""
    _check_videos(videos)
    if fps <= 0 or scale < 1:
        raise ValueError(f"fps must be positive and scale at least 1, got fps={fps}, scale={scale}")
    frames = []
    for t in range(videos.shape[2]):
        grid = image_grid(videos[:, :, t], columns, gap)
        frames.append(grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST))
    comment = json.dumps(metadata or {}, sort_keys=True).encode()
    return write_atomic(path, lambda tmp: frames[0].save(
        tmp, format="GIF", save_all=True, append_images=frames[1:], duration=10 * max(1, round(100 / fps)), loop=0,
        comment=comment))


def save_video_strip(videos: Tensor, path: str | os.PathLike, metadata: dict[str, str] | None = None,
                     gap: int = 1) -> Path:
    """A batch (n, C, T, H, W) in [-1, 1] as one PNG: a row per video, its T frames left to right."""
    _check_videos(videos)
    n, c, t, h, w = videos.shape
    frames = videos.transpose(1, 2).reshape(n * t, c, h, w)  # video-major: row i holds video i's frames
    return save_image_grid(frames, path, columns=t, metadata=metadata, gap=gap)


def _ink(videos: Tensor) -> Tensor:
    """(n, T, H, W) float64 ink in [0, 1]: pixels shifted from [-1, 1], channels averaged."""
    return ((videos.detach().double().cpu().mean(1) + 1) / 2).clamp_(0, 1)


def centre_of_mass(videos: Tensor) -> Tensor:
    """(n, T, 2) float64: each frame's intensity-weighted centre (row, column) in pixels, pixel i's
    centre at i, with intensities shifted to [0, 1]; a black frame's centre is the canvas centre."""
    _check_videos(videos)
    return _centres(_ink(videos))


def _centres(ink: Tensor) -> Tensor:
    h, w = ink.shape[-2:]
    mass = ink.sum((-2, -1))  # (n, T)
    rows = (ink.sum(-1) * torch.arange(h, dtype=ink.dtype)).sum(-1)
    cols = (ink.sum(-2) * torch.arange(w, dtype=ink.dtype)).sum(-1)
    safe = mass.clamp_min(1e-12)
    centre = torch.stack([rows / safe, cols / safe], -1)
    blank = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=ink.dtype)
    return torch.where((mass > 0)[..., None], centre, blank)


def trajectory_error(videos: Tensor, digit_size: int = DIGIT_SIZE, max_speed: float = MAX_SPEED) -> Tensor:
    """(n,) float64: per video, the RMS over frames of the distance (pixels) between its ink centres
    (centre_of_mass) and the closest path a digit of side `digit_size` could take moving at constant
    velocity and bouncing elastically off the walls (see `fit_bounce`)."""
    _check_videos(videos)
    h, w = videos.shape[-2:]
    if not 1 <= digit_size < min(h, w):
        raise ValueError(f"digit_size must be in 1..{min(h, w) - 1} for {h}x{w} frames, got {digit_size}")
    centres = centre_of_mass(videos).numpy()  # (n, T, 2)
    sse = [fit_bounce(centres[..., axis], side - digit_size, (digit_size - 1) / 2, max_speed)
           for axis, side in enumerate((h, w))]
    return torch.from_numpy(np.sqrt((sse[0] + sse[1]) / centres.shape[1]))


def fit_bounce(y: np.ndarray, width: float, lo: float, max_speed: float = MAX_SPEED,
               slack: float = LO_SLACK, starts: int = 8, chunk: int = 512) -> np.ndarray:
    """Least squares fit of paths y (P, T) by x(t) = a + bounce(u + v t, 0, width), returning the sum
    of squared residuals (P,). Parameters: the near wall a in [lo - slack, lo + slack] (a digit's ink
    centre sits a fraction of a pixel off its square's centre), the unfolded start u and the velocity
    |v| <= max_speed.

    1. Grid search: v in steps of 0.1, u in steps of 0.5 over one period [0, 2 width), a by clipped
       least squares (the mean residual) at each grid point.
    2. Refinement from each of the `starts` best grid points: for a fixed fold pattern (which leg of
       the triangle wave each frame is on), bounce(u + v t) = s_t (u + v t) + c_t with s_t = +-1 and
       c_t a multiple of width, so the model is linear in (a, u, v): solve it, recompute the
       pattern, repeat. A frame right at a wall can leave a start in a self-consistent wrong pattern
       (just before the wall instead of just after); several starts, each also begun with every frame
       moved NUDGE either way along its path, find the right one, so an exact bouncing path is
       recovered exactly (residual ~1e-25 on 6000 random paths).
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"paths must be (P, T), got shape {y.shape}")
    if y.shape[1] <= 2:  # a line through one or two points fits them exactly
        return np.zeros(len(y))
    return np.concatenate([_fit_chunk(y[i:i + chunk], width, (lo - slack, lo + slack), max_speed, starts)
                           for i in range(0, len(y), chunk)]) if len(y) else np.zeros(0)


def _fit_chunk(y: np.ndarray, width: float, bounds: tuple[float, float], max_speed: float,
               starts: int) -> np.ndarray:
    t = np.arange(y.shape[1], dtype=np.float64)
    us = np.arange(0, 2 * width, 0.5)  # (U,)
    vs = np.linspace(-max_speed, max_speed, 2 * math.ceil(max_speed / 0.1) + 1)  # (V,)
    grid = np.empty((len(y), len(vs), len(us)), dtype=np.float32)  # (P, V, U) sums of squares
    for j, v in enumerate(vs):
        residual = y[:, None, :] - bounce(us[:, None] + v * t, 0, width)  # (P, U, T)
        a = residual.mean(-1).clip(*bounds)
        grid[:, j] = ((residual - a[..., None]) ** 2).sum(-1)
    flat = grid.reshape(len(y), -1)
    starts = min(starts, flat.shape[1])
    top = np.argpartition(flat, starts - 1, axis=1)[:, :starts]  # (P, K) the K best grid points
    best = flat[np.arange(len(y))[:, None], top].min(1).astype(np.float64)
    for k, nudge in itertools.product(range(starts), (0.0, -NUDGE, NUDGE)):
        v, u = vs[top[:, k] // len(us)], us[top[:, k] % len(us)]
        for step in range(6):
            a, u, v = _linear_step(y, t, u + (nudge if step == 0 else 0.0), v, width, bounds)
            best = np.minimum(best, ((y - a[:, None] - bounce(u[:, None] + v[:, None] * t, 0, width)) ** 2).sum(1))
    return best


def _linear_step(y: np.ndarray, t: np.ndarray, u: np.ndarray, v: np.ndarray, width: float,
                 bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One refinement of fit_bounce: (a, u, v) (P,) each solving the linear least squares of the
    current fold pattern, with a clipped into `bounds` and (u, v) re-solved for the clipped a."""
    s = u[:, None] + v[:, None] * t  # (P, T) unfolded positions
    k = np.floor(s / (2 * width))
    rising = s - 2 * width * k <= width
    sign = np.where(rising, 1.0, -1.0)
    offset = np.where(rising, -2 * width * k, 2 * width * (k + 1))  # bounce(s) = sign s + offset
    z = y - offset  # = a + sign u + sign t v
    design = np.stack([np.ones_like(sign), sign, sign * t], -1)  # (P, T, 3)
    gram, rhs = design.transpose(0, 2, 1) @ design, (design.transpose(0, 2, 1) @ z[..., None])[..., 0]
    a = (np.linalg.pinv(gram) @ rhs[..., None])[:, 0, 0]  # pinv: a and u are one when no frame bounces
    a = a.clip(*bounds)
    gram2, rhs2 = gram[:, 1:, 1:], (design[..., 1:].transpose(0, 2, 1) @ (z - a[:, None])[..., None])[..., 0]
    u, v = np.linalg.solve(gram2, rhs2[..., None])[..., 0].T  # sign^2 = 1: this 2x2 is never singular for T >= 2
    return a, u, v


def mnist_frames(videos: Tensor, digit_size: int = DIGIT_SIZE) -> Tensor:
    """Every frame (n T, 1, 28, 28) in [-1, 1], framed as MNIST frames its digits (LeCun et al. 1998):
    the ink inside a window of side digit_size + 2 around the frame's ink centre is cut out, scaled
    (bicubic, aspect kept) so its bounding box (pixels above INK of the peak) fits a 20x20 box, and
    placed with its centre of mass at the centre of 28x28; everything outside the window is dropped.
    Then its contrast is stretched (see STRETCH)."""
    _check_videos(videos)
    ink = _ink(videos).flatten(0, 1)  # (B, H, W), B = n T
    b, h, w = ink.shape
    rows, cols = torch.arange(h, dtype=ink.dtype), torch.arange(w, dtype=ink.dtype)
    centre = _centres(ink[None])[0]  # (B, 2)
    half = (digit_size + 2) / 2
    near_r = (rows[None, :] - centre[:, :1]).abs() <= half  # (B, H)
    near_c = (cols[None, :] - centre[:, 1:]).abs() <= half  # (B, W)
    ink = ink * (near_r[:, :, None] & near_c[:, None, :])  # (B, H, W): the digit's window only
    centre = _centres(ink[None])[0]  # the ink centre of the window alone
    bright = ink > INK * ink.amax((-2, -1), keepdim=True).clamp_min(1e-12)
    extent = torch.stack([_span(bright.any(-1)), _span(bright.any(-2))], -1)  # (B, 2) bounding box sides
    scale = MNIST_BOX / extent.amax(-1).clamp_min(1.0)  # (B,) output pixels per input pixel
    out = torch.arange(MNIST_SIDE, dtype=ink.dtype) - (MNIST_SIDE - 1) / 2  # output offsets from the centre
    src_r = centre[:, :1] + out[None, :] / scale[:, None]  # (B, 28) input rows sampled
    src_c = centre[:, 1:] + out[None, :] / scale[:, None]
    grid = torch.stack(torch.broadcast_tensors(  # grid_sample wants (x, y) in [-1, 1], pixel centres at the ends
        (2 * src_c / (w - 1) - 1)[:, None, :], (2 * src_r / (h - 1) - 1)[:, :, None]), -1)  # (B, 28, 28, 2)
    framed = F.grid_sample(ink[:, None], grid, mode="bicubic", padding_mode="zeros", align_corners=True)
    # A digit shrunk to ~11 pixels and scaled back up is blurred and dim where MNIST's strokes are
    # saturated; mapping the shares STRETCH of the frame's peak to black and white restores that
    # stroke profile (+7 points of accuracy on real moving digits).
    framed = framed.clamp(0, 1) / framed.amax((-2, -1), keepdim=True).clamp_min(1e-12)
    framed = ((framed - STRETCH[0]) / (STRETCH[1] - STRETCH[0])).clamp(0, 1)
    return (framed * 2 - 1).float()  # (B, 1, 28, 28)


def _span(mask: Tensor) -> Tensor:
    """(B,) the number of positions from the first to the last True of each row of mask (B, L); 0 if none."""
    index = torch.arange(mask.shape[-1])
    first = torch.where(mask, index, mask.shape[-1]).amin(-1)
    last = torch.where(mask, index, -1).amax(-1)
    return (last - first + 1).clamp_min(0).double()


@lru_cache(maxsize=1)
def _mnist_net():
    from unnoise.features import feature_net_for  # loads the packaged weights: only when first measured
    return feature_net_for("mnist")


def frame_classes(videos: Tensor, digit_size: int = DIGIT_SIZE) -> tuple[Tensor, Tensor]:
    """Logits (n, T, 10) float32 and features (n, T, D) float64 of every frame by the packaged MNIST
    feature network, after `mnist_frames` has framed each frame's digit as MNIST does."""
    _check_videos(videos)
    n, t = videos.shape[0], videos.shape[2]
    parts = [_mnist_net().embed(mnist_frames(videos[i:i + 256], digit_size)) for i in range(0, n, 256)]
    features, logits = (torch.cat(p) for p in zip(*parts, strict=True))  # 256 videos at a time bound memory
    return logits.reshape(n, t, -1), features.reshape(n, t, -1)


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    keep = labels >= 0  # -1: no digit (independent frames)
    if not keep.any():
        raise ValueError("digit accuracy needs at least one label in 0..9; all labels are -1")
    return (logits[keep].argmax(-1) == labels[keep, None]).double().mean().item()


def _agreement(logits: Tensor) -> float:
    classes = logits.argmax(-1)  # (n, T)
    majority = classes.mode(-1).values  # (n,) the most common class (the smallest on a tie)
    return (classes == majority[:, None]).double().mean().item()


def digit_accuracy(videos: Tensor, labels: Tensor, digit_size: int = DIGIT_SIZE) -> float:
    """Share of frames (of videos with a label >= 0) the MNIST network reads as their video's label."""
    return _accuracy(frame_classes(videos, digit_size)[0], labels)


def frame_agreement(videos: Tensor, digit_size: int = DIGIT_SIZE) -> float:
    """Share of frames the MNIST network reads as the class most frames of their video are read as:
    1 when a video keeps one digit throughout, whichever digit it is."""
    return _agreement(frame_classes(videos, digit_size)[0])


def _frame_features(videos_or_features: Tensor, digit_size: int) -> Tensor:
    """(N, D) features of every frame: computed from videos (n, 1, T, H, W), or given as (N, D)."""
    if videos_or_features.ndim == 2:
        return videos_or_features
    return frame_classes(videos_or_features, digit_size)[1].flatten(0, 1)


def frechet_distance_per_frame(videos_a: Tensor, videos_b: Tensor, digit_size: int = DIGIT_SIZE) -> float:
    """Fréchet distance (unnoise.metrics) between the MNIST-network features of all frames of two
    batches of videos (n, 1, T, H, W), each frame framed by `mnist_frames`. Either batch may instead
    be features (N, D) already computed (frame_classes(...)[1].flatten(0, 1)), e.g. a reference's."""
    mu_a, cov_a = metrics.gaussian_stats(_frame_features(videos_a, digit_size))
    mu_b, cov_b = metrics.gaussian_stats(_frame_features(videos_b, digit_size))
    return metrics.frechet_distance(mu_a, cov_a, mu_b, cov_b)


def video_report(videos: Tensor, labels: Tensor | None = None, reference: Tensor | None = None,
                 digit_size: int = DIGIT_SIZE) -> dict:
    """Every measurement of this module on videos (n, 1, T, H, W) in [-1, 1], in one dict: the trajectory
    error (mean, median, 90th percentile), the mean speed of the ink centre (pixels a frame: a still
    video has no trajectory error, but no speed either; the data move 1-3), frame agreement, and
    with labels (n,) the digit accuracy, with reference videos (or their frame features (N, D)) the
    per-frame Fréchet distance."""
    _check_videos(videos)
    errors = trajectory_error(videos, digit_size)
    steps = centre_of_mass(videos).diff(dim=1).norm(dim=-1)  # (n, T - 1) pixels moved between frames
    logits, features = frame_classes(videos, digit_size)
    name = _mnist_net().name
    report = {
        "videos": videos.shape[0], "frames": videos.shape[2], "features": name,
        "trajectory_error": errors.mean().item(), "trajectory_error median": errors.median().item(),
        "trajectory_error p90": torch.quantile(errors, 0.9).item(),
        "centre_speed": steps.mean().item() if steps.numel() else 0.0,
        f"frame_agreement[{name}]": _agreement(logits),
    }
    if labels is not None:
        report[f"digit_accuracy[{name}]"] = _accuracy(logits, labels)
    if reference is not None:
        report[f"FD[{name}, frames]"] = frechet_distance_per_frame(features.flatten(0, 1), reference, digit_size)
    return report
