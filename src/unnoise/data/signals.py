"""1-D signals drawn from a stationary Gaussian process: a data set whose law is known exactly.

Each signal is (1, L): a zero-mean Gaussian process on the integer positions 0..L-1 with the
squared-exponential kernel (Rasmussen & Williams 2006, eq. 4.9)

    k(i, j) = s^2 exp(-(i - j)^2 / (2 ell^2)) + jitter s^2 [i = j],   jitter = 1e-4

The kernel matrix alone is numerically singular (its eigenvalues decay like a Gaussian), so a small
jitter on the diagonal keeps the Cholesky factor stable; it is part of the law, not an
approximation of it: `dataset.gaussian()` is exactly N(0, K) with K including the jitter, so the
oracle denoiser of `unnoise.oracle.GaussianData` is the optimal denoiser of these data. Signals are
drawn in float64 as x = chol(K) z, z ~ N(0, I) (Rasmussen & Williams 2006, §A.2), then stored in
float32 (a rounding of about 1e-8). The same (n, length, lengthscale, amplitude, seed) gives the same
signals, bit for bit, whatever the number of threads: the factor and the product are computed with
elementwise operations only (LAPACK's blocked Cholesky and BLAS's matmul change their summation
order with the thread count, which flips the float32 rounding of a few hundred values). The train
and test splits come from two streams of the same seed.

    dataset = signals(n=10_000, length=256, lengthscale=8.0, amplitude=0.5, seed=0, split="train")
    x, labels = dataset.batch(torch.arange(8))       # (8, 1, 256) float32, (8,) all -1
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from unnoise.data.tensor_set import TensorSet
from unnoise.oracle import GaussianData

JITTER = 1e-4  # diagonal jitter, relative to the kernel variance s^2
TEST_SIGNALS = 1_000  # size of the test split
SIGNAL_SPLITS = ("train", "test", "all")
_STREAMS = {"train": 0, "test": 1}  # which random stream of the seed each split is drawn from


def se_kernel(length: int, lengthscale: float, amplitude: float, jitter: float = JITTER) -> Tensor:
    """(length, length) float64 matrix s^2 exp(-(i - j)^2 / (2 ell^2)) + jitter s^2 I over positions
    0..length-1 (Rasmussen & Williams 2006, eq. 4.9)."""
    _check(1, length, lengthscale, amplitude)
    pos = torch.arange(length, dtype=torch.float64)
    d = pos[:, None] - pos[None, :]  # (L, L) lags
    return amplitude**2 * (torch.exp(-(d**2) / (2 * lengthscale**2)) + jitter * torch.eye(length, dtype=torch.float64))


class SignalSet(TensorSet):
    """Signals (N, 1, L) float32 with labels (N,) int64, all -1 (no classes), and their exact law."""

    modality = "signal"  # how a sample is previewed (unnoise.modality)

    def __init__(self, signals: Tensor, *, name: str, cov: Tensor):
        if signals.ndim != 3 or signals.shape[1] != 1 or cov.shape != (signals.shape[-1],) * 2:
            raise ValueError(f"signals must be (N, 1, L) with cov (L, L), got {tuple(signals.shape)} and "
                             f"{tuple(cov.shape)}")
        super().__init__(signals.to(torch.float32), None, name=name)
        self.cov = cov  # (L, L) float64 covariance of the zero-mean law, jitter included

    @property
    def signals(self) -> Tensor:
        """(N, 1, L) float32."""
        return self.values

    @property
    def channels(self) -> int:
        return self.signals.shape[1]

    @property
    def length(self) -> int:
        return self.signals.shape[-1]

    def gaussian(self) -> GaussianData:
        """The exact law of a signal: N(0, K) over shape (1, L), K the kernel matrix with its jitter."""
        return GaussianData.create(torch.zeros(self.sample_shape, dtype=torch.float64), self.cov)


def signals(n: int = 10_000, length: int = 256, lengthscale: float = 8.0, amplitude: float = 0.5, seed: int = 0,
            split: str = "train") -> SignalSet:
    """n train signals, or TEST_SIGNALS test signals from another stream of the seed, or "all": both."""
    _check(n, length, lengthscale, amplitude)
    if seed < 0:
        raise ValueError(f"signals need seed >= 0, got {seed}")
    if split not in SIGNAL_SPLITS:
        raise ValueError(f"split must be one of {SIGNAL_SPLITS}, got {split!r}")
    cov = se_kernel(length, lengthscale, amplitude)
    chol = cholesky_elementwise(cov)  # (L, L) lower triangular
    parts = []
    for part, count in (("train", n), ("test", TEST_SIGNALS)):
        if split in (part, "all"):
            z = torch.randn(count, length, generator=_generator(seed, _STREAMS[part]), dtype=torch.float64)
            parts.append(_times_transpose(z, chol).to(torch.float32))  # (count, L): rows x = chol z
    return SignalSet(torch.cat(parts).unsqueeze(1), name="signals", cov=cov)  # (N, 1, L)


def cholesky_elementwise(cov: Tensor) -> Tensor:
    """The lower Cholesky factor C of a positive definite (L, L) matrix, C C^T = cov, by the
    right-looking algorithm (Golub & Van Loan 2013, Alg. 4.2.2 in outer-product form) in elementwise
    operations only, each correctly rounded: the same bits whatever the thread count. O(L^3), fine
    for the few hundred samples of a signal."""
    a = cov.clone()
    size = a.shape[0]
    for k in range(size):
        if not a[k, k] > 0:
            raise ValueError(f"cov is not positive definite (pivot {k} is {a[k, k].item():.3g})")
        a[k, k] = a[k, k].sqrt()
        a[k + 1 :, k] /= a[k, k]
        col = a[k + 1 :, k]  # (L - k - 1,)
        a[k + 1 :, k + 1 :] -= col[:, None] * col[None, :]  # rank-one update of the trailing block
    return a.tril()


def _times_transpose(z: Tensor, chol: Tensor) -> Tensor:
    """z (N, L) @ chol.T for a lower-triangular chol, accumulated column by column in a fixed order
    with separate multiplies and adds (no BLAS, no fused multiply-add): thread-independent bits."""
    zt = z.T.contiguous()  # (L, N): each update below then touches contiguous rows
    x = torch.zeros_like(zt)
    for j in range(zt.shape[0]):
        x[j:] += chol[j:, j, None] * zt[j]  # (L - j, N): column j of chol feeds x_j .. x_(L-1)
    return x.T  # (N, L)


def _generator(seed: int, stream: int) -> torch.Generator:
    """A generator for one stream of a seed (NumPy's SeedSequence decorrelates the pair)."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _check(n: int, length: int, lengthscale: float, amplitude: float) -> None:
    if n < 1 or length < 1:
        raise ValueError(f"signals need n >= 1 and length >= 1, got n={n}, length={length}")
    if not (lengthscale > 0 and amplitude > 0):
        raise ValueError(f"signals need lengthscale > 0 and amplitude > 0, got lengthscale={lengthscale}, "
                         f"amplitude={amplitude}")


def ar2_signals(n: int = 10_000, length: int = 256, a1: float = 1.5, a2: float = -0.9, amplitude: float = 0.5,
                seed: int = 0, split: str = "train") -> SignalSet:
    """Signals (N, 1, L) of the stationary AR(2) process x_t = a1 x_(t-1) + a2 x_(t-2) + e_t, scaled to
    standard deviation `amplitude`: a Gaussian process with a resonance (a1 = 1.5, a2 = -0.9: poles of
    radius 0.95 at 0.105 cycles a sample), whose power spectrum and covariance are known in closed form
    (unnoise.audio.ar2_spectrum, ar2_covariance) and whose exact denoiser is `dataset.gaussian()`'s.
    Drawn exactly: (x_0, x_1) from the stationary law, then the recursion, in float64 elementwise."""
    from unnoise.audio import ar2_covariance

    if split not in SIGNAL_SPLITS:
        raise ValueError(f"split must be one of {SIGNAL_SPLITS}, got {split!r}")
    if n < 1 or length < 2 or not amplitude > 0:
        raise ValueError(f"AR(2) signals need n >= 1, length >= 2, amplitude > 0, got {n}, {length}, {amplitude}")
    unit = ar2_covariance(a1, a2, 1.0, 2)  # checks stationarity; the law of (x_0, x_1) with unit innovations
    noise_std = amplitude / unit[0, 0].sqrt().item()  # innovations giving stationary std = amplitude
    cov = ar2_covariance(a1, a2, noise_std, length)
    start = cholesky_elementwise(cov[:2, :2])
    parts = []
    for part, count in (("train", n), ("test", TEST_SIGNALS)):
        if split in (part, "all"):
            z = torch.randn(count, length, generator=_generator(seed, _STREAMS[part]), dtype=torch.float64)
            x = torch.empty_like(z)
            x[:, 0] = start[0, 0] * z[:, 0]
            x[:, 1] = start[1, 0] * z[:, 0] + start[1, 1] * z[:, 1]
            for t in range(2, length):
                x[:, t] = a1 * x[:, t - 1] + a2 * x[:, t - 2] + noise_std * z[:, t]
            parts.append(x.to(torch.float32))
    return SignalSet(torch.cat(parts).unsqueeze(1), name="ar2", cov=cov)

