"""Exact denoisers: data whose E[x0 | x_t] has a closed form, for every schedule and every t.

Data drawn from a mixture of isotropic Gaussians N(mu_k, s_k^2 I) with weights w_k is noised to
x_t = alpha x0 + sigma eps, whose law is again a mixture, of N(alpha mu_k, v_k I) with
v_k = alpha^2 s_k^2 + sigma^2. Then (Bishop 2006, eq. 2.116 per component, and Bayes' rule):

    r_k(x_t)  = w_k N(x_t; alpha mu_k, v_k I) / sum_j w_j N(x_t; alpha mu_j, v_j I)
    x0_hat    = sum_k r_k [mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k)]

A finite data set {y_i} is the mixture with s_k = 0 and equal weights. Component labels
make the denoiser class-conditional: restrict the sum to the components of one class, and give
the exact noisy-image classifier log p(y | x_t) = log sum_{k in y} r_k(x_t) (for classifier guidance).

GaussianData is one Gaussian with a full covariance, N(mean, cov) (the law of the `signals` set):
its denoiser is linear, x0_hat = mean + U diag(alpha lam / (alpha^2 lam + sigma^2)) U^T (x_t - alpha mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from unnoise.conditioning import Condition
from unnoise.schedules import Schedule

_F64 = torch.float64


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of isotropic Gaussians over tensors of any shape (held in float64)."""

    means: Tensor  # (K, *shape)
    stds: Tensor  # (K,) per-component standard deviation; 0 makes a point mass
    weights: Tensor  # (K,) positive, summing to 1
    labels: Tensor  # (K,) int64 class of each component

    def __post_init__(self):
        K = self.means.shape[0]
        if self.means.ndim < 2 or K < 1:
            raise ValueError(f"means must have shape (K, *shape) with K >= 1, got {tuple(self.means.shape)}")
        for name, v in (("stds", self.stds), ("weights", self.weights), ("labels", self.labels)):
            if v.shape != (K,):
                raise ValueError(f"{name} must have shape ({K},), got {tuple(v.shape)}")
        if bool((self.stds < 0).any()) or not bool((self.weights > 0).all()):
            raise ValueError("stds must be >= 0 and weights > 0")
        if abs(self.weights.sum().item() - 1) > 1e-9:
            raise ValueError(f"weights must sum to 1, got {self.weights.sum().item()}")

    @classmethod
    def create(cls, means, stds, weights=None, labels=None) -> GaussianMixture:
        means = torch.as_tensor(means, dtype=_F64)
        K = means.shape[0]
        stds = torch.as_tensor(stds, dtype=_F64)
        stds = stds.expand(K).clone() if stds.ndim == 0 else stds
        weights = torch.full((K,), 1.0 / K, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64)
        labels = torch.arange(K) if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        return cls(means, stds, weights / weights.sum(), labels)

    @classmethod
    def random(cls, dim: int = 2, components: int = 8, seed: int = 0, std_range=(0.05, 0.3)) -> GaussianMixture:
        """A reproducible test mixture in [-1, 1]^dim: uniform means, stds and weights at random."""
        if dim < 1 or components < 1:
            raise ValueError(f"dim and components must be >= 1, got {dim}, {components}")
        g = torch.Generator().manual_seed(seed)
        means = torch.rand(components, dim, generator=g, dtype=_F64) * 1.6 - 0.8
        lo, hi = std_range
        stds = lo + (hi - lo) * torch.rand(components, generator=g, dtype=_F64)
        weights = 0.5 + torch.rand(components, generator=g, dtype=_F64)
        return cls.create(means, stds, weights)

    @property
    def dim(self) -> int:
        return self.means[0].numel()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n true samples (n, *shape) in float64 and their component labels (n,)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n,) + self.means.shape[1:], generator=generator, dtype=_F64)
        return self.means[k] + self.stds[k].view((-1,) + (1,) * (noise.ndim - 1)) * noise, self.labels[k]

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density at x (n, *shape), in nats."""
        if bool((self.stds == 0).any()):
            raise ValueError("a mixture with point masses (std 0) has no density")
        return torch.logsumexp(self._log_joint(x.to(_F64).flatten(1), 1.0, self.stds**2), dim=1)

    def marginal(self, schedule: Schedule, t: float) -> GaussianMixture:
        """The exact law of x_t = alpha x0 + sigma eps: a mixture of N(alpha mu_k, v_k I)."""
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
        stds = (alpha**2 * self.stds**2 + sigma**2).sqrt()
        return GaussianMixture(alpha * self.means, stds, self.weights, self.labels)

    def _log_joint(self, x: Tensor, alpha, var: Tensor) -> Tensor:
        """log w_k + log N(x; alpha mu_k, var_k I) for x (B, D): shape (B, K)."""
        mu = self.means.flatten(1).to(x.device)  # (K, D); alpha is a float or (B, 1), var (K,) or (B, K)
        d2 = ((x**2).sum(1, keepdim=True) - 2 * alpha * (x @ mu.T) + alpha**2 * (mu**2).sum(1)).clamp(min=0)
        log_w = torch.log(self.weights).to(x.device)
        return log_w - 0.5 * d2 / var - 0.5 * mu.shape[1] * torch.log(2 * math.pi * var)

    def denoiser(self, schedule: Schedule) -> MixtureDenoiser:
        return MixtureDenoiser(self, schedule)

    def classifier(self, schedule: Schedule) -> MixtureClassifier:
        return MixtureClassifier(self, schedule)


def finite_set(points: Tensor, labels: Tensor | None = None) -> GaussianMixture:
    """The empirical distribution of a data set (N, *shape): its exact denoiser is a softmax over
    the points, and DDIM with it turns noise back into training points."""
    points = torch.as_tensor(points, dtype=_F64)
    return GaussianMixture.create(points, torch.zeros(points.shape[0], dtype=_F64), None, labels)


def _coefficients(schedule: Schedule, t: float | Tensor, device) -> tuple:
    """alpha, sigma at t: floats for a scalar t, (B, 1) float64 tensors for per-example times."""
    if isinstance(t, Tensor) and t.ndim > 0:
        t64 = t.to(_F64).cpu()
        return schedule.alpha(t64).view(-1, 1).to(device), schedule.sigma(t64).view(-1, 1).to(device)
    return schedule.alpha(float(t)).item(), schedule.sigma(float(t)).item()


class MixtureClassifier:
    """classifier(x_t, t) -> (B, classes) exact log p(y | x_t), differentiable in x_t (float64)."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        self.mixture, self.schedule = mixture, schedule
        self.classes = int(mixture.labels.max()) + 1

    def __call__(self, x: Tensor, t: float | Tensor, cond=None) -> Tensor:
        m = self.mixture
        alpha, sigma = _coefficients(self.schedule, t, x.device)
        var = (alpha**2 * m.stds.to(x.device) ** 2 + sigma**2).clamp(min=torch.finfo(_F64).tiny)
        logits = m._log_joint(x.to(_F64).flatten(1), alpha, var)  # (B, K)
        labels = m.labels.to(x.device)
        per_class = torch.stack([torch.logsumexp(logits[:, labels == y], dim=1) for y in range(self.classes)], 1)
        return per_class - torch.logsumexp(per_class, dim=1, keepdim=True)


class MixtureDenoiser:
    """denoise(x_t, t, cond=None) -> E[x0 | x_t] exactly. cond: None, (B,) class labels or a Condition
    holding them, where label -1 means unconditional. Computed in float64, returned in x's dtype."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule):
        self.mixture, self.schedule = mixture, schedule

    def __call__(self, x: Tensor, t: float | Tensor, cond: Tensor | None = None) -> Tensor:
        m = self.mixture
        x64 = x.to(_F64).flatten(1)  # (B, D)
        alpha, sigma = _coefficients(self.schedule, t, x.device)
        s2 = m.stds.to(x.device) ** 2  # (K,)
        # v_k = alpha^2 s_k^2 + sigma^2, (K,) or (B, K); floored so a point mass at sigma = 0 gives
        # its limit (the nearest point) rather than 0 / 0.
        var = (alpha**2 * s2 + sigma**2).clamp(min=torch.finfo(_F64).tiny)
        logits = m._log_joint(x64, alpha, var)  # (B, K)
        labels = cond.labels if isinstance(cond, Condition) else cond
        if labels is not None:
            labels = torch.as_tensor(labels, device=logits.device).view(-1, 1)
            allowed = (labels < 0) | (labels == m.labels.to(logits.device))
            logits = logits.masked_fill(~allowed, -math.inf)
        r = torch.softmax(logits, dim=1)  # responsibilities (B, K)
        gain = alpha * s2 / var  # (K,) or (B, K): alpha s_k^2 / v_k
        mu = m.means.flatten(1).to(x.device)
        x0 = (r * (1 - alpha * gain)) @ mu + x64 * (r * gain).sum(1, keepdim=True)
        return x0.view_as(x).to(x.dtype)


@dataclass(frozen=True)
class GaussianData:
    """Gaussian data N(mean, cov) over tensors of any shape, held in float64 by the eigendecomposition
    cov = U diag(lam) U^T. Its noised marginal N(alpha mean, alpha^2 cov + sigma^2 I) shares the
    eigenvectors U, so everything below is elementwise in the eigenbasis:

        x0_hat = mean + U diag(alpha lam / (alpha^2 lam + sigma^2)) U^T (x_t - alpha mean)

    the conditional mean of jointly Gaussian (x0, x_t) (Bishop 2006, eq. 2.116; Rasmussen & Williams
    2006, eq. A.6), whose error covariance has eigenvalues lam sigma^2 / (alpha^2 lam + sigma^2).
    """

    mean: Tensor  # (*shape) float64
    eigenvalues: Tensor  # (D,) lam >= 0, D = prod(shape), ascending
    eigenvectors: Tensor  # (D, D) orthonormal columns U

    def __post_init__(self):
        D = self.mean.numel()
        if self.mean.ndim < 1 or D < 1:
            raise ValueError(f"mean must have the sample shape (at least one dimension), got {tuple(self.mean.shape)}")
        if self.eigenvalues.shape != (D,) or self.eigenvectors.shape != (D, D):
            raise ValueError(f"eigenvalues must be ({D},) and eigenvectors ({D}, {D}), got "
                             f"{tuple(self.eigenvalues.shape)} and {tuple(self.eigenvectors.shape)}")
        if bool((self.eigenvalues < 0).any()):
            raise ValueError(f"eigenvalues must be >= 0, got a minimum of {self.eigenvalues.min().item()}")

    @classmethod
    def create(cls, mean, cov) -> GaussianData:
        """From a mean (*shape) and a symmetric covariance (D, D), D = prod(shape); eigenvalues that
        rounding makes slightly negative are clamped to 0."""
        mean = torch.as_tensor(mean, dtype=_F64)
        cov = torch.as_tensor(cov, dtype=_F64)
        D = mean.numel()
        if cov.shape != (D, D):
            raise ValueError(f"cov must have shape ({D}, {D}) for a mean of shape {tuple(mean.shape)}, "
                             f"got {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * float(cov.abs().max())):
            raise ValueError("cov must be symmetric")
        lam, U = torch.linalg.eigh(0.5 * (cov + cov.T))
        return cls(mean, lam.clamp(min=0), U)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def cov(self) -> Tensor:
        """U diag(lam) U^T, (D, D) float64."""
        U = self.eigenvectors
        return (U * self.eigenvalues) @ U.T

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n true samples (n, *shape) in float64: mean + U diag(sqrt(lam)) z, z ~ N(0, I)."""
        z = torch.randn(n, self.dim, generator=generator, dtype=_F64)  # (n, D)
        x = (z * self.eigenvalues.sqrt()) @ self.eigenvectors.T  # (n, D)
        return self.mean + x.view((n,) + self.shape)

    def log_prob(self, x: Tensor, schedule: Schedule, t: float | Tensor) -> Tensor:
        """Exact log-density (n,) in nats of x (n, *shape) under the law of x_t at time t:
        N(alpha mean, alpha^2 cov + sigma^2 I), evaluated in the eigenbasis (variances v_i)."""
        x64 = x.to(_F64).flatten(1)  # (n, D)
        alpha, sigma = _coefficients(schedule, t, x.device)
        v = alpha**2 * self.eigenvalues.to(x.device) + sigma**2  # (D,) or (n, D)
        if bool((v <= 0).any()):
            raise ValueError("this marginal is singular (a zero eigenvalue and sigma = 0): it has no density")
        y = (x64 - alpha * self.mean.to(x.device).flatten()) @ self.eigenvectors.to(x.device)  # (n, D)
        return -0.5 * (y**2 / v + torch.log(2 * math.pi * v)).sum(-1)

    def denoising_mse(self, schedule: Schedule, t: float) -> float:
        """The minimum expected squared error per dimension, E|x0 - E[x0 | x_t]|^2 / D at time t: the
        mean over eigenvalues of lam sigma^2 / (alpha^2 lam + sigma^2) (0 where sigma = 0)."""
        alpha, sigma = schedule.alpha(float(t)).item(), schedule.sigma(float(t)).item()
        lam = self.eigenvalues
        var = alpha**2 * lam + sigma**2
        return (lam * sigma**2 / var.clamp(min=torch.finfo(_F64).tiny)).mean().item()

    def denoiser(self, schedule: Schedule) -> GaussianDenoiser:
        return GaussianDenoiser(self, schedule)


class GaussianDenoiser:
    """denoise(x_t, t, cond=None) -> E[x0 | x_t] exactly for GaussianData (see its docstring). The law
    has no classes: cond must be None or labels that are all -1 (bare or in a Condition). Computed in
    float64, returned in x's dtype and on x's device; t a float or a (B,) tensor."""

    def __init__(self, data: GaussianData, schedule: Schedule):
        self.data, self.schedule = data, schedule

    def __call__(self, x: Tensor, t: float | Tensor, cond: Tensor | None = None) -> Tensor:
        d = self.data
        labels = cond.labels if isinstance(cond, Condition) else cond  # a Condition's labels, or bare (B,) labels
        if labels is not None and bool((torch.as_tensor(labels) >= 0).any()):
            raise ValueError("GaussianData has no classes: cond must be None or labels that are all -1 (unconditional)")
        if tuple(x.shape[1:]) != d.shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, d.shape))}), got {tuple(x.shape)}")
        alpha, sigma = _coefficients(self.schedule, t, x.device)
        lam, U = d.eigenvalues.to(x.device), d.eigenvectors.to(x.device)
        mean = d.mean.to(x.device).flatten()  # (D,)
        y = (x.to(_F64).flatten(1) - alpha * mean) @ U  # (B, D) coordinates in the eigenbasis
        # alpha lam / (alpha^2 lam + sigma^2), (D,) or (B, D); at sigma = 0 a direction of zero variance
        # gets its limit 0 rather than 0 / 0, so the clean end projects x onto the support.
        gain = alpha * lam / (alpha**2 * lam + sigma**2).clamp(min=torch.finfo(_F64).tiny)
        x0 = mean + (gain * y) @ U.T  # (B, D)
        return x0.view_as(x).to(x.dtype)
