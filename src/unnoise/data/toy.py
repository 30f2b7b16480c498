"""2-D toy distributions, drawn from a seed: two moons, a swiss roll, a ring of Gaussians.

These are VECTORS, not images: `dataset[i]` is (point, label) with point a float32 tensor of shape
(2,), and `channels` and `image_size` are None. Each set is scaled so its noiseless support lies in
[-1, 1]^2; the Gaussian noise added afterwards (std `noise`, in those same units) can step a little
outside. The same (n, noise, seed) gives the same points, bit for bit.

    moons        outer arc (cos th, sin th) and inner arc (1 - cos th, 1/2 - sin th), th ~ U(0, pi),
                 shifted by (-1/2, -1/4) and divided by 3/2; label 0 outer, 1 inner
    swiss-roll   (t cos t, t sin t) / (9 pi / 2),  t = (3 pi / 2)(1 + 2u), u ~ U(0, 1): the 2-D roll of
                 Sohl-Dickstein et al. 2015 (Fig. 1); no labels
    gaussians    8 equal components N(mu_k, noise^2 I), mu_k = 0.8 (cos 2 pi k / 8, sin 2 pi k / 8), the
                 ring of Metz et al. 2017; label k. `dataset.mixture` is that law, with exact denoiser
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from unnoise.data.tensor_set import TensorSet
from unnoise.oracle import GaussianMixture

TOY_NAMES = ("moons", "swiss-roll", "gaussians")
RING_COMPONENTS, RING_RADIUS = 8, 0.8


class PointSet(TensorSet):
    """Points (N, 2) float32 with labels (N,) int64 (-1 where the set has no labels)."""

    modality = "points"  # how a sample is previewed (unnoise.modality)

    def __init__(self, points: Tensor, labels: Tensor, *, name: str, class_names=(), mixture=None):
        super().__init__(points.to(torch.float32), labels, name=name, class_names=class_names)
        self.mixture: GaussianMixture | None = mixture  # the exact law of the points, where known

    @property
    def points(self) -> Tensor:
        """(N, 2) float32."""
        return self.values


def moons(n: int = 10_000, noise: float = 0.05, seed: int = 0) -> PointSet:
    _check(n, noise)
    rng = np.random.default_rng(seed)
    n_outer = n // 2
    theta = rng.uniform(0.0, math.pi, n)
    outer = np.stack([np.cos(theta[:n_outer]), np.sin(theta[:n_outer])], 1)  # (n_outer, 2)
    inner = np.stack([1 - np.cos(theta[n_outer:]), 0.5 - np.sin(theta[n_outer:])], 1)  # (n - n_outer, 2)
    points = (np.concatenate([outer, inner]) - [0.5, 0.25]) / 1.5
    labels = np.repeat([0, 1], [n_outer, n - n_outer])
    return _shuffled(points, labels, rng, noise, "moons", ("outer", "inner"))


def swiss_roll(n: int = 10_000, noise: float = 0.05, seed: int = 0) -> PointSet:
    _check(n, noise)
    rng = np.random.default_rng(seed)
    t = 1.5 * math.pi * (1 + 2 * rng.uniform(0.0, 1.0, n))  # (n,)
    points = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (4.5 * math.pi)  # (n, 2), |point| <= 1
    return _shuffled(points, np.full(n, -1), rng, noise, "swiss-roll", ())


def gaussians(n: int = 10_000, noise: float = 0.05, seed: int = 0) -> PointSet:
    _check(n, noise)
    if noise <= 0:
        raise ValueError(f"gaussians need noise > 0 (the component std), got {noise}")
    angle = torch.arange(RING_COMPONENTS, dtype=torch.float64) * (2 * math.pi / RING_COMPONENTS)
    means = RING_RADIUS * torch.stack([angle.cos(), angle.sin()], 1)  # (K, 2)
    mixture = GaussianMixture.create(means, noise)
    points, labels = mixture.sample(n, generator=torch.Generator().manual_seed(seed))  # (n, 2), (n,)
    names = [f"ring-{k}" for k in range(RING_COMPONENTS)]
    return PointSet(points, labels, name="gaussians", class_names=names, mixture=mixture)


def _shuffled(points, labels, rng, noise, name, class_names) -> PointSet:
    """Add the noise and shuffle, so that any contiguous slice mixes the classes."""
    points = points + noise * rng.standard_normal(points.shape)
    order = rng.permutation(len(points))
    points, labels = torch.from_numpy(points[order]), torch.from_numpy(labels[order])
    return PointSet(points, labels, name=name, class_names=class_names)


def _check(n: int, noise: float) -> None:
    if n < 1 or noise < 0:
        raise ValueError(f"toy sets need n >= 1 and noise >= 0, got n={n}, noise={noise}")
