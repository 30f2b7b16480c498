import numpy as np
import pytest
import torch

from unnoise.grids import SPACINGS, time_at, time_grid
from unnoise.schedules import PRESETS, get_schedule


@pytest.mark.parametrize("name", list(PRESETS) + ["ddpm-ztsnr"])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_grids_decrease_and_end_at_zero_once(name, spacing, steps):
    s = get_schedule(name)
    t_max = 1.0 if spacing not in ("karras", "logsnr", "karras-trailing") or name in ("ddpm", "vp", "ve", "edm") else 0.99
    grid = time_grid(s, steps, spacing, t_max=t_max)
    assert grid.shape == (steps + 1,)
    assert bool((grid[1:] < grid[:-1]).all())
    assert grid[-1].item() == 0.0 and bool((grid[:-1] > 0).all())
    if spacing in ("trailing", "linspace", "karras", "logsnr", "karras-trailing"):
        assert grid[0].item() == pytest.approx(t_max)


def test_index_spacings_match_the_usual_timesteps():
    # Written from the definitions of diffusers' timestep spacings (timestep k is t = (k + 1) / T).
    s, T, n = get_schedule("ddpm"), 1000, 12
    linspace = np.linspace(0, T - 1, n).round()[::-1]
    leading = (np.arange(0, n) * (T // n)).round()[::-1] + 1
    trailing = np.round(np.arange(T, 0, -T / n)) - 1
    for spacing, k, offset in (("linspace", linspace, 0), ("leading", leading, 1), ("trailing", trailing, 0)):
        grid = time_grid(s, n, spacing, offset=offset)[:-1].numpy()
        np.testing.assert_allclose(grid * T - 1, k, atol=1e-9, err_msg=spacing)


def test_karras_and_logsnr_spacing():
    s = get_schedule("edm")
    grid = time_grid(s, 10, "karras")
    sig = s.sigma_tilde(grid[:-1])
    rho = 7
    frac = torch.linspace(0, 1, 10, dtype=torch.float64)
    expected = (80 ** (1 / rho) + frac * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    assert torch.allclose(sig, expected, rtol=1e-10)
    # karras-trailing: the 10 noisiest of karras's 11 levels, so its 2n-step grid holds the n-step one
    open_grid = s.sigma_tilde(time_grid(s, 10, "karras-trailing")[:-1])
    frac = torch.arange(10, dtype=torch.float64) / 10
    assert torch.allclose(open_grid, (80 ** (1 / rho) + frac * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho,
                          rtol=1e-10)
    assert torch.allclose(time_grid(s, 20, "karras-trailing")[::2], time_grid(s, 10, "karras-trailing"), rtol=1e-12)
    lam = get_schedule("ddpm").log_snr(time_grid(get_schedule("ddpm"), 9, "logsnr")[:-1])
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(8), rtol=1e-8)


def test_impossible_requests_are_refused():
    s = get_schedule("ddpm")
    with pytest.raises(ValueError, match="steps must be a whole number >= 1, got 0"):
        time_grid(s, 0)
    with pytest.raises(ValueError, match="1001 steps asked of a discrete schedule with only 1000"):
        time_grid(s, 1001, "trailing")
    assert time_grid(s, 1001, "karras").shape == (1002,)  # continuous spacings are not bound by T
    with pytest.raises(ValueError, match="unknown spacing 'uniform'"):
        time_grid(s, 10, "uniform")
    with pytest.raises(ValueError, match="finite noise level"):
        time_grid(get_schedule("flow"), 10, "karras")
    with pytest.raises(ValueError, match="t_max"):
        time_grid(s, 10, t_max=1.5)


@pytest.mark.parametrize("sname", ["edm", "ddpm", "vp"])
@pytest.mark.parametrize("spacing", ["karras", "logsnr", "trailing"])
def test_time_at_is_the_grids_own_interpolation(sname, spacing):
    # fraction f of the way from the clean end is the grid point f of the way: the same quantity spaced evenly
    schedule, steps = get_schedule(sname), 9
    grid = time_grid(schedule, steps, spacing)
    inner = range(1, steps - 1) if spacing != "trailing" else range(0, steps)
    frac = (lambda k: 1 - k / (steps - 1)) if spacing != "trailing" else (lambda k: 1 - k / steps)
    for k in inner:
        assert abs(time_at(schedule, frac(k), spacing) - grid[k].item()) < 1e-9, (k, spacing)
    assert time_at(schedule, 0.0, spacing) == 0.0 and time_at(schedule, 1.0, spacing) == 1.0
    with pytest.raises(ValueError, match="fraction must lie in"):
        time_at(schedule, 1.5, spacing)
