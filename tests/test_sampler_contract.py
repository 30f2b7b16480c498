"""What every registered sampler promises beyond its numbers: no autograd graph unless the caller
asks for one (by passing an x that requires grad), and bounded work for the adaptive solver."""

import pytest
import torch

from unnoise.grids import time_grid
from unnoise.parameterization import EpsPrediction, NetworkDenoiser
from unnoise.samplers import SAMPLERS, ode_adaptive
from unnoise.schedules import get_schedule


class Net(torch.nn.Module):
    """A small trainable eps-network on 4-D points: its parameters require grad, as in training."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(5, 4)

    def forward(self, x, t, cond=None):
        return self.layer(torch.cat([x, t.to(x.dtype).expand(len(x))[:, None]], dim=1))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_no_graph_unless_x_requires_grad(name):
    schedule = get_schedule("ddpm")
    net = Net()
    denoise = NetworkDenoiser(net, EpsPrediction(), schedule)
    times = time_grid(schedule, 4, "trailing")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    out = SAMPLERS[name](denoise, schedule, x, times, generator=torch.Generator().manual_seed(1))
    assert not out.requires_grad and out.grad_fn is None
    # asked for: the sample is differentiable in the start and in the network's parameters
    start = x.clone().requires_grad_(True)
    out = SAMPLERS[name](denoise, schedule, start, times, generator=torch.Generator().manual_seed(1))
    out.square().sum().backward()
    assert start.grad is not None and torch.isfinite(start.grad).all() and start.grad.abs().sum() > 0
    assert net.layer.weight.grad is not None and net.layer.weight.grad.abs().sum() > 0


def test_ode_adaptive_stops_at_its_cap_on_network_calls(mixture, ddpm):
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    times = time_grid(ddpm, 4, "trailing")
    calls = []

    def counted(x_t, t, cond=None):
        calls.append(t)
        return mixture.denoiser(ddpm)(x_t, t, cond)

    ode_adaptive(counted, ddpm, x, times, rtol=1e-6, atol=1e-6)
    needed = len(calls)
    calls.clear()
    assert ode_adaptive(counted, ddpm, x, times, rtol=1e-6, atol=1e-6, max_nfe=needed).shape == x.shape
    assert len(calls) == needed  # the cap counts every call, the final x0_hat included
    with pytest.raises(ValueError, match=f"needs more than max_nfe = {needed - 1} network calls at rtol = 1e-06"):
        ode_adaptive(counted, ddpm, x, times, rtol=1e-6, atol=1e-6, max_nfe=needed - 1)
    for bad in (dict(max_nfe=1), dict(rtol=0.0), dict(max_nfe=2.5)):
        with pytest.raises(ValueError, match="ode_adaptive needs rtol > 0, atol > 0 and a whole max_nfe >= 2"):
            ode_adaptive(counted, ddpm, x, times, **bad)
