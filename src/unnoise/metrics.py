"""Sample-quality metrics on features (N, D): Fréchet distance, KID, precision/recall, nearest neighbours.

All take features of real and generated images from the same network (unnoise.features) and
compute in float64. They are plain functions; `unnoise.eval` decides which features go in.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch
from torch import Tensor


def gaussian_stats(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64."""
    f = features.double().cpu().numpy()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {tuple(f.shape)}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)): the 2-Wasserstein distance squared between
    Gaussians (Dowson & Landau 1982), as FID uses it (Heusel et al. 2017, eq. 6)."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference FID code does
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):  # round-off of a PSD square root is tiny; more means a broken covariance
        if not np.allclose(covmean.imag, 0, atol=1e-3 * max(1.0, np.abs(covmean.real).max())):
            raise ValueError(f"Fréchet distance: (C1 C2)^(1/2) has imaginary parts up to "
                             f"{np.abs(covmean.imag).max():.3g}; the covariances are not valid")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def kernel_inception_distance(real: Tensor, fake: Tensor, chunk: int = 2048) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018, eq. 3): the unbiased MMD^2 estimate with the kernel
    k(x, y) = (x.y / D + 1)^3 over all samples; returns (value, standard error).

    The standard error is the delta method's for a two-sample U-statistic: the variance of each
    sample's first-order influence, 4 Var(g_x) / m + 4 Var(g_y) / n. All pairs are used rather than
    averages over subsets, which waste pairs and, drawn with overlap, understate the error.
    """
    real, fake = real.double(), fake.double()
    m, n, d = real.shape[0], fake.shape[0], real.shape[1]
    if min(m, n) < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {m} and {n}")

    def row_sums(a: Tensor, b: Tensor) -> Tensor:  # sum_j k(a_i, b_j) for each i
        return torch.cat([((a[i:i + chunk] @ b.T / d + 1) ** 3).sum(1) for i in range(0, a.shape[0], chunk)])

    kxx = row_sums(real, real) - ((real * real).sum(1) / d + 1) ** 3  # without the diagonal
    kyy = row_sums(fake, fake) - ((fake * fake).sum(1) / d + 1) ** 3
    kxy, kyx = row_sums(real, fake), row_sums(fake, real)
    mmd2 = kxx.sum() / (m * (m - 1)) + kyy.sum() / (n * (n - 1)) - 2 * kxy.sum() / (m * n)
    g_x, g_y = kxx / (m - 1) - kxy / n, kyy / (n - 1) - kyx / m
    se = math.sqrt(4 * g_x.var().item() / m + 4 * g_y.var().item() / n)
    return mmd2.item(), se


def _over_distances(queries: Tensor, pool: Tensor, reduce, chunk: int = 2048) -> Tensor:
    """reduce(distances from a chunk of queries to the whole pool) for each chunk, concatenated:
    the (N, M) distance matrix is never held at once."""
    return torch.cat([reduce(torch.cdist(queries[i:i + chunk], pool)) for i in range(0, queries.shape[0], chunk)])


def _kth_neighbour_radius(x: Tensor, k: int) -> Tensor:
    """Distance from each row of x to its k-th nearest other row (k + 1: the row itself is at 0)."""
    return _over_distances(x, x, lambda d: d.kthvalue(k + 1, dim=1).values)


def _inside(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """For each point: is it within radius of some centre?"""
    return _over_distances(points, centres, lambda d: (d <= radii[None]).any(1))


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1-3): each set's manifold is the
    union of balls reaching each sample's k-th neighbour; precision = share of generated samples
    inside the real manifold, recall = share of real samples inside the generated one."""
    real, fake = real.double(), fake.double()
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _inside(fake, real, _kth_neighbour_radius(real, k)).double().mean().item()
    recall = _inside(real, fake, _kth_neighbour_radius(fake, k)).double().mean().item()
    return precision, recall


def nearest_distances(queries: Tensor, pool: Tensor) -> Tensor:
    """Euclidean distance from each query (flattened) to its nearest neighbour in the pool."""
    return _over_distances(queries.flatten(1).double(), pool.flatten(1).double(), lambda d: d.min(1).values, 1024)
