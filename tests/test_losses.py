import math

import pytest
import torch

from unnoise.losses import DiffusionLoss, LossConfig
from unnoise.parameterization import PARAMETERIZATIONS, get_parameterization, path_point
from unnoise.schedules import get_schedule


class RandomNet:
    """A 'network' whose output is fixed noise: the loss identities hold for any output."""

    def __init__(self, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.last = None

    def __call__(self, x, t, cond=None):
        self.last = torch.randn(x.shape, generator=self.g, dtype=x.dtype)
        return self.last


@pytest.mark.parametrize("pname", list(PARAMETERIZATIONS))
@pytest.mark.parametrize("weighting", ["min-snr", "edm"])
def test_weights_are_x0_weights_carried_to_the_output(pname, weighting):
    # Every weighting is a weight on |x0_hat - x0|^2; the loss in output space must equal it.
    schedule, param = get_schedule("ddpm"), get_parameterization(pname)
    loss = DiffusionLoss(schedule, param, LossConfig(weighting=weighting, time_sampling="uniform"))
    x0 = torch.randn(32, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.rand(32, dtype=torch.float64) * 0.98 + 0.01
    net = RandomNet()
    per_example = loss(net, x0, noise=eps, t=t)
    p = path_point(schedule, t, 4)
    x_t = p.alpha * x0 + p.sigma * eps
    x0_hat = param.x0(net.last, x_t, p)
    expected = loss.x0_weight(t) * ((x0_hat - x0) ** 2).flatten(1).mean(1)
    assert torch.allclose(per_example.double(), expected, rtol=1e-5)


def test_simple_weighting_is_plain_mse_on_the_target():
    schedule, param = get_schedule("ddpm"), get_parameterization("eps")
    loss = DiffusionLoss(schedule, param, LossConfig(weighting="simple", time_sampling="uniform"))
    x0, eps = torch.randn(8, 5), torch.randn(8, 5)
    net = RandomNet()
    per_example = loss(net, x0, noise=eps, t=torch.full((8,), 0.5))
    assert torch.allclose(per_example, ((net.last - eps) ** 2).mean(1))


def test_min_snr_on_eps_is_hangs_weight():
    # Hang et al. 2023: for eps-prediction the weight is min(SNR, gamma) / SNR.
    schedule = get_schedule("ddpm")
    loss = DiffusionLoss(schedule, get_parameterization("eps"), LossConfig(weighting="min-snr", min_snr_gamma=5.0))
    t = torch.tensor([0.05, 0.3, 0.9], dtype=torch.float64)
    snr = (schedule.alpha(t) / schedule.sigma(t)) ** 2
    p = path_point(schedule, t, 2)
    w = loss._output_weight(t, p, torch.zeros(3, 1, dtype=torch.float64))
    assert torch.allclose(w.double(), torch.clamp(snr, max=5.0) / snr, rtol=1e-6)


def test_time_sampling():
    edm = DiffusionLoss(get_schedule("edm"), get_parameterization("edm"), LossConfig(p_mean=-1.2, p_std=1.2))
    t = edm.sample_times(200_000, torch.Generator().manual_seed(0))
    log_sigma = torch.log(get_schedule("edm").sigma_tilde(t))
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)
    ddpm = DiffusionLoss(get_schedule("ddpm"), get_parameterization("eps"), LossConfig(time_sampling="uniform"))
    t = ddpm.sample_times(10_000, torch.Generator().manual_seed(0))
    k = t * 1000
    assert torch.allclose(k, k.round()) and k.min() >= 1 and k.max() <= 1000
    assert math.isclose(k.float().mean().item(), 500.5, rel_tol=0.02)


def test_bad_loss_config():
    with pytest.raises(ValueError, match="weighting must be one of"):
        LossConfig(weighting="snr")
    with pytest.raises(ValueError, match="time_sampling"):
        LossConfig(time_sampling="beta")
