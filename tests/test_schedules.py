import math

import pytest
import torch

from unnoise.schedules import PRESETS, ddpm_linear, from_alphas_cumprod, get_schedule, zero_terminal_snr

ALL = list(PRESETS) + ["ddpm-ztsnr", "vp-ztsnr"]
VP = ["ddpm", "cosine", "vp", "ddpm-ztsnr", "vp-ztsnr"]


def times(schedule, n=501):
    return torch.cat([torch.tensor([schedule.t_min]), torch.linspace(schedule.t_min, 1, n, dtype=torch.float64)[1:]])


@pytest.mark.parametrize("name", ALL)
def test_clean_end_and_noisy_end(name):
    s = get_schedule(name)
    assert s.alpha(0.0).item() == 1.0 and s.sigma(0.0).item() == 0.0
    assert s.log_snr(0.0).item() == math.inf
    lam = s.log_snr(times(s))
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must decrease strictly in t"


@pytest.mark.parametrize("name", VP)
def test_variance_preserving(name):
    s = get_schedule(name)
    t = torch.rand(1000, dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_log_snr_inverse_round_trip(name):
    s = get_schedule(name)
    t = times(s)
    lam = s.log_snr(t)
    finite = torch.isfinite(lam)
    assert torch.allclose(s.t_from_log_snr(lam[finite]), t[finite], rtol=0, atol=1e-9)
    assert s.t_from_log_snr(math.inf).item() == 0.0


def test_ddpm_alpha_bar_is_product_of_betas():
    s = ddpm_linear()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    for i in (1, 2, 10, 500, 999, 1000):
        expected = torch.prod(1 - betas[:i])
        assert s.alpha(i / 1000).item() ** 2 == pytest.approx(expected.item(), rel=1e-12)


def test_ddpm_interpolates_log_snr_between_indices():
    s = ddpm_linear()
    lo, hi = s.log_snr(0.25), s.log_snr(0.251)
    assert s.log_snr(0.2505).item() == pytest.approx(0.5 * (lo + hi).item(), rel=1e-12)


def test_closed_forms():
    assert get_schedule("ve").sigma(0.5).item() == pytest.approx(0.01 * (50 / 0.01) ** 0.5)
    assert get_schedule("edm").sigma(1.0).item() == 80.0
    assert get_schedule("edm").sigma(get_schedule("edm").t_min).item() == pytest.approx(0.002)
    flow = get_schedule("flow")
    assert flow.alpha(0.3).item() == pytest.approx(0.7) and flow.sigma(0.3).item() == pytest.approx(0.3)
    vp = get_schedule("vp")  # Song et al. 2021: log alpha(1) = -(20 - 0.1)/4 - 0.1/2
    assert math.log(vp.alpha(1.0).item()) == pytest.approx(-(19.9 / 4) - 0.05, rel=1e-12)
    cos = get_schedule("cosine")
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cos.alpha(0.4).item() ** 2 == pytest.approx(f(0.4) / f(0.0), rel=1e-12)
    assert cos.alpha(1.0).item() == 0.0


def test_zero_terminal_snr():
    base = ddpm_linear()
    s = zero_terminal_snr(base)
    assert s.alpha(1.0).item() == 0.0 and s.log_snr(1.0).item() == -math.inf
    assert s.alpha(1 / 1000).item() == pytest.approx(base.alpha(1 / 1000).item(), rel=1e-12)
    # Lin et al. Algorithm 1: sqrt(alpha_bar) is an affine map of the original.
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    ratio = (s.alpha(t) - s.alpha(0.3)) / (base.alpha(t) - base.alpha(0.3))
    assert torch.allclose(ratio, ratio[0].expand(3), rtol=1e-10)


def test_derivatives_match_finite_differences():
    for name in ("flow", "vp", "cosine", "edm"):
        s = get_schedule(name)
        t, h = torch.tensor([0.2, 0.6], dtype=torch.float64), 1e-6
        d_alpha, d_sigma = s.derivatives(t)
        assert torch.allclose(d_alpha, (s.alpha(t + h) - s.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
        assert torch.allclose(d_sigma, (s.sigma(t + h) - s.sigma(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown schedule 'ddmp'.*ddpm"):
        get_schedule("ddmp")
    with pytest.raises(ValueError, match="beta_start"):
        ddpm_linear(beta_start=0.5, beta_end=0.1)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        from_alphas_cumprod(torch.tensor([0.5, 0.9]))


def test_zero_terminal_snr_needs_variance_preserving():
    with pytest.raises(ValueError, match="variance-preserving"):
        get_schedule("ve-ztsnr")
