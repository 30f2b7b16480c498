import math

import pytest
import torch

from unnoise.oracle import GaussianMixture, finite_set
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
