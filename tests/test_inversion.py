"""Inversion of deterministic samplers, checked against exact denoisers (float64 throughout)."""

import math

import numpy as np
import pytest
import torch

from unnoise.grids import time_grid
from unnoise.oracle import GaussianData
from unnoise.samplers import StepInfo, get_sampler
from unnoise.samplers.inversion import ddim_invert, fixed_point_invert, slerp
from unnoise.schedules import get_schedule

CASES = [("edm", "karras"), ("cosine", "trailing"), ("flow", "trailing")]  # (schedule, spacing)
F64 = torch.float64


def rms(x):
    return x.square().mean().sqrt().item()


def relative(a, b):
    """Worst per-sample |a - b| / |b|."""
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


def noise(mixture, schedule, n=64, seed=2):
    z, _ = mixture.marginal(schedule, 1.0).sample(n, torch.Generator().manual_seed(seed))
    return z


@pytest.mark.parametrize("sname, spacing", CASES)
def test_ddim_inversion_round_trip_is_first_order(mixture, sname, spacing):
    # Each explicit inversion step takes x0_hat at the lower point instead of the upper one: a local
    # error O(h^2), so the round trip (invert, then ddim on the same grid) is off by C/N + O(1/N^2).
    # The O(1/N^2) term pulls the fitted slope a little above -1 at these N (measured -0.94 to
    # -0.98); |slope + 1| < 0.1 still tells order 1 from order 0 (no convergence) and order 2.
    schedule = get_schedule(sname)
    den = mixture.denoiser(schedule)
    x0, _ = mixture.sample(256, torch.Generator().manual_seed(1))
    steps = (25, 50, 100, 200)
    errors = []
    for n in steps:
        times = time_grid(schedule, n, spacing)
        x_T = ddim_invert(den, schedule, x0, times)
        errors.append(rms(get_sampler("ddim")(den, schedule, x_T, times) - x0))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope + 1) < 0.1, (errors, slope)
    assert errors[-1] < 0.02, errors


@pytest.mark.parametrize("name", ["ddim", "heun"])
@pytest.mark.parametrize("sname, spacing", CASES)
def test_fixed_point_inversion_is_exact(mixture, sname, spacing, name):
    # x = sampler(z) has an exact preimage: the sampler's map z -> x is one-to-one (each DDIM step's
    # Jacobian k I + m J has eigenvalues >= k > 0; the last step's, J, is positive for data with
    # spread), so solving every step to tol must give back x on regenerating, and z itself up to the
    # residuals carried up through the inverse steps, which expand by as much as the flow contracts
    # (|z| / |x| in the directions where it contracts most). Measured at 100 steps: round trip
    # 2e-7 .. 8e-7, |z_hat - z| / |z| <= 5e-6 (explicit inversion: 3e-2 .. 0.16), at most 10 updates
    # per step (median 3).
    schedule, sampler = get_schedule(sname), get_sampler(name)
    den = mixture.denoiser(schedule)
    times = time_grid(schedule, 100, spacing)
    z = noise(mixture, schedule)
    x = sampler(den, schedule, z, times)
    z_hat, report = fixed_point_invert(den, schedule, x, times, sampler=name)
    assert report.converged and len(report.iterations) == 100, report
    assert max(report.iterations) <= 20, report.iterations
    assert rms(sampler(den, schedule, z_hat, times) - x) <= 1e-5
    assert relative(z_hat, z) <= 1e-4
    assert relative(ddim_invert(den, schedule, x, times), z) > 1e-2  # what the explicit inversion misses


def test_fixed_point_inversion_is_limited_only_by_tol(mixture):
    # The gap to z shrinks in proportion to tol, down to float64 round-off: at tol 1e-11 it is 1.4e-10.
    schedule = get_schedule("flow")
    den, times = mixture.denoiser(schedule), time_grid(schedule, 100, "trailing")
    z = noise(mixture, schedule)
    x = get_sampler("ddim")(den, schedule, z, times)
    z_hat, report = fixed_point_invert(den, schedule, x, times, tol=1e-11)
    assert report.converged and relative(z_hat, z) <= 1e-8


@pytest.mark.parametrize("sname, spacing", [("edm", "karras"), ("flow", "trailing")])
def test_fixed_point_converges_on_coarse_grids_for_gaussian_data(sname, spacing):
    # For Gaussian data log p_t is concave, so every eigenvalue of a DDIM step's Jacobian lies in
    # [k, a_s / a_t] and c = a_t / a_s contracts every step, however large: by 1 - exp(-h) at worst
    # above t = 0, and the last step by 1 - a_t J_min. That last one is slow on flow's grid: at
    # s~ = 0.11 it squashes the direction of std 0.03 by J ~ 0.07 (161 updates; edm's needs 1).
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    data = GaussianData.create(torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=F64),
                               (q * torch.tensor([0.03, 0.1, 0.3, 1.0], dtype=F64) ** 2) @ q.T)
    schedule = get_schedule(sname)
    den, times = data.denoiser(schedule), time_grid(schedule, 10, spacing)
    a, s = schedule.alpha(1.0).item(), schedule.sigma(1.0).item()
    z = a * data.sample(64, g) + s * torch.randn(64, 4, generator=g, dtype=F64)
    x = get_sampler("ddim")(den, schedule, z, times)
    z_hat, report = fixed_point_invert(den, schedule, x, times, max_iter=400)
    assert report.converged, report
    assert relative(z_hat, z) <= 1e-4


def test_inversion_walks_up_and_leaves_the_data_alone(mixture):
    schedule = get_schedule("cosine")
    den, times = mixture.denoiser(schedule), time_grid(schedule, 8, "trailing")
    x0, _ = mixture.sample(16, torch.Generator().manual_seed(3))
    kept = x0.clone()
    for invert in (ddim_invert, fixed_point_invert):
        seen: list[StepInfo] = []
        out = invert(den, schedule, x0, times, callback=seen.append)
        x_T = out[0] if isinstance(out, tuple) else out
        assert [s.i for s in seen] == list(range(8))
        assert [(s.t, s.t_next) for s in seen] == list(zip(times.tolist()[:0:-1], times.tolist()[-2::-1]))
        assert torch.equal(seen[-1].x, x_T)
        assert torch.equal(x0, kept)


def test_slerp_endpoints_and_angle():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)  # float32
    assert torch.equal(slerp(z0, z1, 0.0), z0) and torch.equal(slerp(z0, z1, 1.0), z1)
    assert slerp(z0, z1, 0.3).dtype == torch.float32
    # Constant angular speed along the great circle: angle(z0, slerp(w)) = w theta, for equal norms (the
    # formula of Shoemake and of Song et al. §5.3 leans towards the longer of two unequal vectors).
    a, b = z0.double().flatten(1), z1.double().flatten(1)
    b = b * (a.norm(dim=1) / b.norm(dim=1)).unsqueeze(1)
    theta = torch.arccos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)))
    for w in (0.25, 0.5, 0.9):
        p = slerp(a, b, w)
        angle = torch.arccos((a * p).sum(1) / (a.norm(dim=1) * p.norm(dim=1)))
        assert torch.allclose(angle, w * theta, atol=1e-9)
    # Per-sample weights, and one pair fanned out over many weights.
    w = torch.linspace(0, 1, 8)
    assert torch.allclose(slerp(a, b, w), torch.stack([slerp(a[i:i + 1], b[i:i + 1], w[i])[0] for i in range(8)]))
    fan = slerp(z0[:1], z1[:1], w)
    assert fan.shape == (8, 3, 16, 16) and torch.equal(fan[0], z0[0]) and torch.equal(fan[-1], z1[0])


def test_slerp_keeps_gaussian_norms():
    # Two independent N(0, I) noises in D dims are nearly orthogonal with norms ~ sqrt(D) (relative
    # spread 1 / sqrt(2D) = 1.1 %). Their midpoint by lerp has norm ~ sqrt(D / 2): not a typical noise.
    # slerp stays between the two norms (exactly so for cos theta >= 0; the cross term with
    # |cos theta| ~ 1 / sqrt(D) moves it by far less than the 1e-3 allowed), and keeps equal norms.
    D, g = 4096, torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(64, D, generator=g, dtype=F64), torch.randn(64, D, generator=g, dtype=F64)
    n0, n1 = z0.norm(dim=1), z1.norm(dim=1)
    for w in torch.linspace(0, 1, 11).tolist():
        n = slerp(z0, z1, w).norm(dim=1)
        assert bool(((n >= torch.minimum(n0, n1) * (1 - 1e-3)) & (n <= torch.maximum(n0, n1) * (1 + 1e-3))).all())
    assert ((z0 + z1) / 2).norm(dim=1).max() / math.sqrt(D) < 0.75
    z1_same = z1 * (n0 / n1).unsqueeze(1)
    assert torch.allclose(slerp(z0, z1_same, 0.37).norm(dim=1), n0, rtol=1e-12)


def test_slerp_parallel_and_opposite():
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert torch.allclose(slerp(z, 2 * z, 0.25), 1.25 * z, rtol=1e-12)  # the limit theta -> 0: lerp
    assert torch.allclose(slerp(z, z, 0.5), z, rtol=1e-12)
    with pytest.raises(ValueError, match="opposite"):
        slerp(z, -z, 0.5)
    with pytest.raises(ValueError, match="zero"):
        slerp(z, torch.zeros_like(z), 0.5)


def test_refusals(mixture):
    schedule = get_schedule("flow")
    den, times = mixture.denoiser(schedule), time_grid(schedule, 10, "trailing")
    x0, _ = mixture.sample(4, torch.Generator().manual_seed(0))
    for name in ("dpmpp_2m", "ddpm", "euler_ancestral", "no_such_sampler"):
        with pytest.raises(ValueError, match=f"one-step deterministic sampler \\(ddim, euler, heun\\), got '{name}'"):
            fixed_point_invert(den, schedule, x0, times, sampler=name)
    for bad in (-1.0, 0.0):
        with pytest.raises(ValueError, match="tol must be > 0"):
            fixed_point_invert(den, schedule, x0, times, tol=bad)
    for invert in (ddim_invert, fixed_point_invert):
        with pytest.raises(ValueError, match="decrease strictly"):
            invert(den, schedule, x0, times.flip(0))
        with pytest.raises(ValueError, match="exactly 0"):
            invert(den, schedule, x0, times[:-1])
        with pytest.raises(ValueError, match="nothing to invert"):
            invert(den, schedule, x0, [1.0, 0.0])  # alpha(1) = 0: every x_T gives the same sample
