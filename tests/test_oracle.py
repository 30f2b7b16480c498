import math

import pytest
import torch

from unnoise.oracle import GaussianData, GaussianMixture, finite_set
from unnoise.samplers import ddim
from unnoise.grids import time_grid
from unnoise.schedules import get_schedule


def test_denoiser_matches_monte_carlo(mixture, ddpm):
    # E[x0 | x_t] = sum_i x0_i p(x_t | x0_i) / sum_i p(x_t | x0_i) over true draws x0_i.
    g = torch.Generator().manual_seed(1)
    x0, _ = mixture.sample(400_000, g)
    t = 0.45
    alpha, sigma = ddpm.alpha(t).item(), ddpm.sigma(t).item()
    x_t = torch.tensor([[0.3, -0.2], [-0.9, 0.5]], dtype=torch.float64)
    exact = mixture.denoiser(ddpm)(x_t, t)
    for k in range(2):
        logw = -((x_t[k] - alpha * x0) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)
        estimate = (w[:, None] * x0).sum(0)
        ess = 1 / (w**2).sum()  # effective sample size
        spread = ((w[:, None] * (x0 - estimate) ** 2).sum(0)).sqrt()
        assert torch.all((estimate - exact[k]).abs() < 5 * spread / ess.sqrt()), (estimate, exact[k], ess)


@pytest.mark.parametrize("name", ["ddpm", "ve", "flow", "cosine"])
def test_denoiser_is_tweedie(mixture, name):
    # Tweedie: alpha x0_hat = x + sigma^2 grad log p_t(x), with p_t the exact marginal.
    s = get_schedule(name)
    t = 0.3
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    log_p = mixture.marginal(s, t).log_prob(x).sum()
    (score,) = torch.autograd.grad(log_p, x)
    alpha, sigma = s.alpha(t).item(), s.sigma(t).item()
    expected = (x.detach() + sigma**2 * score) / alpha
    assert torch.allclose(mixture.denoiser(s)(x.detach(), t), expected, atol=1e-10)


def test_log_prob_integrates_to_one():
    m = GaussianMixture.create(torch.tensor([[-1.0], [0.5]]), torch.tensor([0.2, 0.4]), torch.tensor([0.3, 0.7]))
    grid = torch.linspace(-5, 5, 20001, dtype=torch.float64)[:, None]
    integral = torch.trapezoid(m.log_prob(grid).exp(), grid[:, 0])
    assert integral.item() == pytest.approx(1.0, abs=1e-9)


def test_marginal_moments(mixture, ddpm):
    t = 0.6
    marg = mixture.marginal(ddpm, t)
    g = torch.Generator().manual_seed(3)
    x0, _ = mixture.sample(200_000, g)
    x_t = ddpm.alpha(t).item() * x0 + ddpm.sigma(t).item() * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    xs, _ = marg.sample(200_000, g)
    assert torch.allclose(xs.mean(0), x_t.mean(0), atol=0.01)
    assert torch.allclose(xs.std(0), x_t.std(0), atol=0.01)


def test_conditional_denoiser_is_the_submixture(mixture, ddpm):
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    m = GaussianMixture(mixture.means, mixture.stds, mixture.weights, labels)
    keep = labels == 2
    sub = GaussianMixture.create(m.means[keep], m.stds[keep], m.weights[keep])
    x = torch.randn(16, 2, dtype=torch.float64)
    cond = torch.full((16,), 2)
    assert torch.allclose(m.denoiser(ddpm)(x, 0.5, cond), sub.denoiser(ddpm)(x, 0.5), atol=1e-12)
    cond[:8] = -1  # -1: unconditional
    assert torch.allclose(m.denoiser(ddpm)(x, 0.5, cond)[:8], m.denoiser(ddpm)(x[:8], 0.5), atol=1e-12)


def test_ddim_with_exact_denoiser_returns_training_points(ddpm):
    points = torch.rand(20, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    data = finite_set(points)
    x_T = torch.randn(50, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = ddim(data.denoiser(ddpm), ddpm, x_T, time_grid(ddpm, 50, "trailing"))
    dist = torch.cdist(out.flatten(1), points.flatten(1)).min(dim=1).values
    assert dist.max().item() < 1e-6


def test_point_mass_at_clean_end_gives_nearest_point(ddpm):
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[0.2, 0.1], [0.9, 0.7]], dtype=torch.float64)
    assert torch.equal(finite_set(points).denoiser(ddpm)(x, 0.0), points)


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="weights must sum to 1"):
        GaussianMixture(torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
                        torch.tensor([0.5, 0.6], dtype=torch.float64), torch.arange(2))
    with pytest.raises(ValueError, match="stds must have shape"):
        GaussianMixture.create(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="no density"):
        finite_set(torch.zeros(2, 2)).log_prob(torch.zeros(1, 2))
    assert math.isfinite(GaussianMixture.random().log_prob(torch.zeros(1, 2)).item())


def _gaussian(shape=(2, 3), seed=0, rank=None) -> GaussianData:
    """A random N(mean, A A^T) over `shape`, of full rank unless `rank` columns of A are given."""
    g = torch.Generator().manual_seed(seed)
    D = math.prod(shape)
    A = torch.randn(D, rank or D, generator=g, dtype=torch.float64) * 0.4
    return GaussianData.create(torch.randn(shape, generator=g, dtype=torch.float64), A @ A.T)


@pytest.mark.parametrize("name", ["ddpm", "ve", "flow", "cosine", "edm"])
def test_gaussian_denoiser_is_the_dense_conditional_mean(name):
    # Bishop 2006, eq. 2.116 with a dense solve: mean + alpha S (alpha^2 S + sigma^2 I)^-1 (x - alpha mean).
    s, data = get_schedule(name), _gaussian()
    S, mu = data.cov, data.mean.flatten()
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    per_example = data.denoiser(s)(x, t)
    for i in range(5):
        alpha, sigma = s.alpha(t[i]).item(), s.sigma(t[i]).item()
        noised_cov = alpha**2 * S + sigma**2 * torch.eye(6, dtype=torch.float64)
        solve = torch.linalg.solve(noised_cov, x[i].flatten() - alpha * mu)
        expected = (mu + alpha * S @ solve).view(2, 3)
        assert torch.allclose(per_example[i], expected, rtol=1e-9, atol=1e-10), (name, t[i])
        assert torch.allclose(data.denoiser(s)(x[i : i + 1], t[i].item())[0], expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["ddpm", "flow", "edm"])
def test_gaussian_data_with_isotropic_cov_is_a_one_component_mixture(name):
    s, g = get_schedule(name), torch.Generator().manual_seed(2)
    mean, std = torch.randn(1, 4, 2, generator=g, dtype=torch.float64), 0.3
    data = GaussianData.create(mean[0], std**2 * torch.eye(8, dtype=torch.float64))
    mixture = GaussianMixture.create(mean, std)
    x = torch.randn(7, 4, 2, generator=g, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        assert torch.allclose(data.denoiser(s)(x, t), mixture.denoiser(s)(x, t), atol=1e-12)
        assert torch.allclose(data.log_prob(x, s, t), mixture.marginal(s, t).log_prob(x), atol=1e-9)


@pytest.mark.parametrize("rank", [None, 3])
def test_gaussian_denoising_mse_matches_monte_carlo(ddpm, rank):
    # E|x0 - E[x0 | x_t]|^2 / D estimated from 100k draws, within 4 standard errors; a denoiser that
    # shrinks 10% less than the optimal one must be measurably worse (the test has power).
    data, g, n, t = _gaussian(rank=rank), torch.Generator().manual_seed(3), 100_000, 0.4
    alpha, sigma = ddpm.alpha(t).item(), ddpm.sigma(t).item()
    x0 = data.sample(n, g)
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x0_hat = data.denoiser(ddpm)(x_t, t)
    errors = (x0 - x0_hat).square().flatten(1).mean(1)  # (n,)
    exact = data.denoising_mse(ddpm, t)
    assert abs(errors.mean().item() - exact) < 4 * errors.std().item() / math.sqrt(n), (errors.mean(), exact)
    worse = (x0 - (x0_hat + 0.1 * (x_t / alpha - x0_hat))).square().flatten(1).mean(1)
    assert worse.mean().item() - exact > 10 * worse.std().item() / math.sqrt(n)
    assert data.denoising_mse(ddpm, 0.0) == 0.0


def test_gaussian_sample_has_the_mean_and_cov():
    data, n = _gaussian(), 200_000
    x = data.sample(n, torch.Generator().manual_seed(4)).flatten(1)  # (n, 6)
    assert x.shape == (n, 6)
    sd = data.cov.diagonal().sqrt()
    assert ((x.mean(0) - data.mean.flatten()).abs() < 5 * sd / math.sqrt(n)).all()
    assert torch.allclose(torch.cov(x.T), data.cov, atol=5 * sd.max().item() ** 2 * math.sqrt(2 / n))


@pytest.mark.parametrize("name", ["ddpm", "ve", "cosine"])
def test_gaussian_denoiser_is_tweedie_of_its_log_prob(name):
    # alpha x0_hat = x + sigma^2 grad log p_t(x): the denoiser and log_prob describe one marginal.
    s, data, t = get_schedule(name), _gaussian(rank=4), 0.3
    x = torch.randn(8, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).requires_grad_()
    (score,) = torch.autograd.grad(data.log_prob(x, s, t).sum(), x)
    alpha, sigma = s.alpha(t).item(), s.sigma(t).item()
    assert torch.allclose(data.denoiser(s)(x.detach(), t), (x.detach() + sigma**2 * score) / alpha, atol=1e-10)


def test_gaussian_denoiser_at_sigma_zero_returns_x_in_its_dtype(ddpm):
    data = _gaussian()
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(6))  # float32
    for t in (0.0, torch.zeros(4)):
        out = data.denoiser(ddpm)(x, t)
        assert out.dtype == torch.float32 and torch.allclose(out, x, atol=1e-6)
    assert torch.equal(data.denoiser(ddpm)(x, 0.5, torch.full((4,), -1)), data.denoiser(ddpm)(x, 0.5))


def test_bad_gaussian_data_is_refused(ddpm):
    with pytest.raises(ValueError, match=r"cov must have shape \(6, 6\)"):
        GaussianData.create(torch.zeros(2, 3), torch.eye(5))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianData.create(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="no classes"):
        _gaussian().denoiser(ddpm)(torch.zeros(1, 2, 3), 0.5, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2, 3\)"):
        _gaussian().denoiser(ddpm)(torch.zeros(1, 6), 0.5)
    with pytest.raises(ValueError, match="no density"):
        _gaussian(rank=2).log_prob(torch.zeros(1, 2, 3), ddpm, 0.0)
