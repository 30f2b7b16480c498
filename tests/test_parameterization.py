import math

import pytest
import torch

from unnoise.oracle import GaussianMixture
from oracle_nets import oracle_network
from unnoise.parameterization import PARAMETERIZATIONS, NetworkDenoiser, get_parameterization, path_point
from unnoise.schedules import PRESETS, get_schedule


@pytest.mark.parametrize("pname", list(PARAMETERIZATIONS))
@pytest.mark.parametrize("sname", list(PRESETS))
def test_target_round_trip(pname, sname):
    schedule, param = get_schedule(sname), get_parameterization(pname)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    t = schedule.t_min + (0.999 - schedule.t_min) * torch.rand(16, generator=g, dtype=torch.float64)
    p = path_point(schedule, t, x0.ndim)
    x_t = p.alpha * x0 + p.sigma * eps
    assert torch.allclose(param.x0(param.target(x0, eps, p), x_t, p), x0, atol=1e-9)


@pytest.mark.parametrize("pname", list(PARAMETERIZATIONS))
def test_network_denoiser_reproduces_the_oracle(pname):
    mixture, schedule = GaussianMixture.random(), get_schedule("ddpm")
    param = get_parameterization(pname)
    denoise = NetworkDenoiser(oracle_network(mixture, schedule, param), param, schedule)
    x = torch.randn(32, 2, dtype=torch.float64)
    for t in (0.01, 0.5, 0.97):
        expected = mixture.denoiser(schedule)(x, t)
        assert torch.allclose(denoise(x, t), expected, atol=1e-9)  # float t: cached scalars
        assert torch.allclose(denoise(x, torch.full((32,), t, dtype=torch.float64)), expected, atol=1e-9)


def test_edm_preconditioning_matches_karras_table_1():
    param = get_parameterization("edm")
    sigma, sd = 2.5, 0.5
    p = path_point(get_schedule("edm"), torch.tensor([sigma / 80]), 2)
    c_skip, c_out, c_in = param._coefficients(p)
    assert c_skip.item() == pytest.approx(sd**2 / (sigma**2 + sd**2))
    assert c_out.item() == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2))
    assert c_in.item() == pytest.approx(1 / math.sqrt(sigma**2 + sd**2))
    assert param.loss_weight(p).item() == pytest.approx((sigma**2 + sd**2) / (sigma * sd) ** 2)
    _, c_noise = param.network_inputs(torch.zeros(1, 2), p)
    assert c_noise.item() == pytest.approx(math.log(sigma) / 4)


def test_eps_prediction_refuses_alpha_zero():
    schedule = get_schedule("flow")
    denoise = NetworkDenoiser(lambda x, t, c: x, get_parameterization("eps"), schedule)
    with pytest.raises(ValueError, match="eps-prediction cannot give x0 where alpha = 0"):
        denoise(torch.zeros(2, 2), 1.0)


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="unknown parameterization 'noise'.*eps, x0, v, velocity, edm"):
        get_parameterization("noise")
