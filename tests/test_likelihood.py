"""Likelihoods against the Gaussian mixture's closed-form density."""

import math

import pytest
import torch

from unnoise.likelihood import PIXEL_BIN, dequantize, discretized_gaussian_nll, image_nll, ode_nll, vlb
from unnoise.oracle import GaussianMixture
from unnoise.schedules import get_schedule

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(dim=3, components=4, seed=1, std_range=(0.15, 0.3))


@pytest.mark.parametrize("name", ["ddpm", "edm", "flow", "cosine"])
def test_ode_nll_with_the_exact_denoiser_is_within_001_bits_of_truth(mixture, name):
    # Truth is the closed-form density of x_{t_min} (the ODE starts there) and, a hair away, of x_0.
    # The remaining error is the prior's (N(0, alpha_1^2 + sigma_1^2) vs the true marginal at t = 1)
    # and the solver's at rtol = atol = 1e-6; both are far below 0.01 bits/dim.
    schedule = get_schedule(name)
    x, _ = mixture.sample(64, generator=torch.Generator().manual_seed(2))
    nll, calls = ode_nll(mixture.denoiser(schedule), schedule, x, trace="exact", rtol=1e-6, atol=1e-6)
    truth = -mixture.marginal(schedule, schedule.t_min).log_prob(x)
    err_bits = (nll - truth).abs() / (3 * LN2)
    assert err_bits.max() < 0.01, err_bits.max()
    assert abs((nll - (-mixture.log_prob(x))).mean() / (3 * LN2)) < 0.01
    assert 50 < calls < 2000


def test_hutchinson_estimates_are_unbiased(mixture):
    schedule = get_schedule("edm")
    x, _ = mixture.sample(1, generator=torch.Generator().manual_seed(3))
    x = x.expand(400, -1).clone()  # one point, 400 probes: the spread is the estimator's alone
    denoise = mixture.denoiser(schedule)
    exact, _ = ode_nll(denoise, schedule, x[:1], trace="exact", rtol=1e-6, atol=1e-6)
    for trace in ("rademacher", "gaussian"):
        est, _ = ode_nll(denoise, schedule, x, trace=trace, rtol=1e-6, atol=1e-6,
                         generator=torch.Generator().manual_seed(4))
        se = est.std() / math.sqrt(len(est))
        assert est.std() > 1e-3  # the probes do vary the estimate ...
        assert abs(est.mean() - exact[0]) < 4 * se  # ... around the exact value


def _on_pixel_grid(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def test_dequantised_nll_and_vlb_bound_the_discrete_probability(mixture):
    # Data on the 8-bit grid; -log P(k) ~ -log p(x) - D log(bin) for a density smooth on the bin's scale.
    schedule = get_schedule("ddpm")
    x, _ = mixture.sample(256, generator=torch.Generator().manual_seed(2))
    x = _on_pixel_grid(x)
    truth = (-mixture.log_prob(x) - 3 * math.log(PIXEL_BIN)) / (3 * LN2)  # bits/dim
    denoise = mixture.denoiser(schedule)
    ode = image_nll(denoise, schedule, x, trace="exact", generator=torch.Generator().manual_seed(0))
    mean, se = ode.summary()
    assert abs(mean - truth.mean().item()) < 0.01 and se > 0
    # The VLB (T = 1000) is an upper bound: above the truth, and close with the "large" variance,
    # further with the "small" one (the true reverse variance lies between the two).
    large = vlb(denoise, schedule, x, variance="large", generator=torch.Generator().manual_seed(0))
    small = vlb(denoise, schedule, x, variance="small", generator=torch.Generator().manual_seed(0))
    gap_large = (large.bits_per_dim - truth).mean().item()
    gap_small = (small.bits_per_dim - truth).mean().item()
    se_large = (large.bits_per_dim - truth).std().item() / 16
    assert -3 * se_large < gap_large < 0.1
    assert gap_small > gap_large


def test_discretized_gaussian_decoder_sums_to_one_over_the_levels():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, std in [(0.0, 0.01), (0.99, 0.05), (-1.2, 0.3)]:
        nll = discretized_gaussian_nll(levels.view(-1, 1), torch.full((256, 1), mean, dtype=torch.float64), std)
        assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_gaussian_decoder_in_both_far_tails():
    from scipy.stats import norm

    x0 = torch.tensor([[0.2]], dtype=torch.float64)
    for mean in (0.0, 0.1, 0.4):  # the bin 10 to 20 standard deviations above or below the mean
        z = ((0.2 - PIXEL_BIN / 2 - mean) / 0.01, (0.2 + PIXEL_BIN / 2 - mean) / 0.01)
        truth = -math.log(norm.sf(z[0]) - norm.sf(z[1])) if mean < 0.2 else -math.log(norm.cdf(z[1]) - norm.cdf(z[0]))
        got = discretized_gaussian_nll(x0, torch.tensor([[mean]], dtype=torch.float64), 0.01).item()
        assert got == pytest.approx(truth, rel=1e-9)


def test_dequantize_fills_each_bin():
    x = torch.tensor([[-1.0, 0.0, 1.0]]).expand(10000, -1)
    y = dequantize(x, torch.Generator().manual_seed(0))
    assert ((y - x).abs() <= PIXEL_BIN / 2).all()
    assert (y - x).std().item() == pytest.approx(PIXEL_BIN / math.sqrt(12), rel=0.03)


def test_bad_options_are_named(mixture):
    schedule = get_schedule("edm")
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="trace must be one of exact, rademacher, gaussian, got 'hutch'"):
        ode_nll(mixture.denoiser(schedule), schedule, x, trace="hutch")
    with pytest.raises(ValueError, match="t_start must lie in"):
        ode_nll(mixture.denoiser(schedule), schedule, x, t_start=1.5)
    with pytest.raises(ValueError, match="variance must be 'small' or 'large'"):
        vlb(mixture.denoiser(schedule), schedule, x, variance="big")
