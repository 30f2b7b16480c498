"""Editing checked against exact laws. With the exact denoiser of Gaussian data every step of SDEdit,
of the replacement method and of RePaint is linear-Gaussian, so the exact law of each method's own
output is computable (mean and covariance carried through the same steps): the implementation must
draw from it. The true conditional law of Gaussian data given the known coordinates is closed form:
each method's distance to it is measured exactly, without sampling."""

import math
from dataclasses import replace

import pytest
import torch
from oracle_nets import oracle_network
from scipy.stats import chi2, norm

from unnoise.edit import _runs, inpaint, repaint_schedule, sdedit
from unnoise.grids import time_grid
from unnoise.models.interface import ModelInterface
from unnoise.oracle import GaussianData, GaussianMixture
from unnoise.parameterization import X0Prediction
from unnoise.pipeline import DEFAULT_SETTINGS, Pipeline
from unnoise.schedules import get_schedule

D = 16
IDX = torch.arange(D)
LAW = GaussianData.create(torch.linspace(-0.5, 0.5, D), 0.9 ** (IDX[:, None] - IDX[None, :]).abs().double())
KEEP = IDX < D // 2  # the first half known
COSINE = get_schedule("cosine")


class OracleNet(torch.nn.Module):
    """The exact x0_hat of a law (LAW unless given) as a float64 network (its one parameter only sets the dtype)."""

    def __init__(self, schedule, law=LAW):
        super().__init__()
        self.x0 = oracle_network(law, schedule, X0Prediction())
        self.dtype_anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, cond=None):
        return self.x0(x, t, cond)


def oracle_pipe(schedule=COSINE, steps=20) -> Pipeline:
    return Pipeline.from_network(OracleNet(schedule), X0Prediction(), schedule, ModelInterface((D,), 0),
                                 defaults=replace(DEFAULT_SETTINGS, sampler="ddpm", steps=steps, spacing="trailing"))


def guide() -> torch.Tensor:
    return LAW.sample(1, torch.Generator().manual_seed(7))  # (1, D)


# ---- the exact laws ---------------------------------------------------------------------------

def coefficients(schedule, t):
    return schedule.alpha(t).item(), schedule.sigma(t).item()


def step_law(m, P, schedule, t, s, sampler):
    """(m, P) of x_s after one ddpm (variance 'small') or ddim step from x_t ~ N(m, P) with the exact
    denoiser x0_hat = K x + (I - a_t K) mu, K = a_t C (a_t^2 C + s_t^2 I)^-1 (linear in x)."""
    (a_t, s_t), (a_s, s_s) = coefficients(schedule, t), coefficients(schedule, s)
    C, mu, eye = LAW.cov, LAW.mean, torch.eye(D, dtype=torch.float64)
    K = a_t * C @ torch.linalg.inv(a_t**2 * C + s_t**2 * eye)
    if s_s == 0:
        A, b, q = K, (eye - a_t * K) @ mu, 0.0
    elif sampler == "ddpm":
        r = a_t * s_s / (a_s * s_t)
        A, b = r * s_s / s_t * eye + a_s * (1 - r * r) * K, a_s * (1 - r * r) * (eye - a_t * K) @ mu
        q = s_s**2 * (1 - r * r)
    else:  # ddim: x_s = a_s x0_hat + (s_s / s_t)(x - a_t x0_hat)
        k = s_s / s_t
        A, b, q = k * eye + (a_s - k * a_t) * K, (a_s - k * a_t) * (eye - a_t * K) @ mu, 0.0
    return A @ m + b, A @ P @ A.T + q * eye


def inpaint_law(schedule, times, path, y, sampler="ddpm"):
    """The exact law of inpaint's output: its descents (a step, then the known part set to
    a_s y + s_s z) and its jumps back up (x_hi = (a_hi / a_lo) x_lo + noise), as inpaint takes them."""
    keep = KEEP.double()
    m = torch.zeros(D, dtype=torch.float64)
    P = coefficients(schedule, times[0].item())[1] ** 2 * torch.eye(D, dtype=torch.float64)
    for lo, hi in _runs(path):
        if hi > lo:
            for i in range(lo, hi):
                m, P = step_law(m, P, schedule, times[i].item(), times[i + 1].item(), sampler)
                a_s, s_s = coefficients(schedule, times[i + 1].item())
                m = (1 - keep) * m + keep * a_s * y
                P = (1 - keep)[:, None] * P * (1 - keep)[None, :] + torch.diag(s_s**2 * keep)
        else:
            a_lo, s_lo = coefficients(schedule, times[lo].item())
            a_hi, s_hi = coefficients(schedule, times[hi].item())
            ratio = a_hi / a_lo
            m, P = ratio * m, ratio**2 * P + (s_hi**2 - (ratio * s_lo) ** 2) * torch.eye(D, dtype=torch.float64)
    return m, P


def true_conditional(y):
    """N(mu_u + C_uk C_kk^-1 (y_k - mu_k), C_uu - C_uk C_kk^-1 C_ku) of the unknown coordinates."""
    C, mu, k, u = LAW.cov, LAW.mean, KEEP, ~KEEP
    gain = C[u][:, k] @ torch.linalg.inv(C[k][:, k])
    return mu[u] + gain @ (y[k] - mu[k]), C[u][:, u] - gain @ C[k][:, u]


def kl(m0, P0, m1, P1) -> float:
    """KL(N(m0, P0) || N(m1, P1)) in nats."""
    inv = torch.linalg.inv(P1)
    d = m1 - m0
    return 0.5 * (torch.trace(inv @ P0) + d @ inv @ d - len(m0) + torch.logdet(P1) - torch.logdet(P0)).item()


def assert_draws_from(x, m, P, what):
    """Sample mean by its chi-square (Hotelling with known P) and covariance entries by their z-scores,
    each at a family-wise false-alarm rate of about 1e-3."""
    n, d = x.shape
    diff = x.mean(0) - m
    stat = (n * diff @ torch.linalg.solve(P, diff)).item()
    assert stat < chi2.ppf(1 - 1e-3, d), f"{what}: the mean is off (chi-square {stat:.1f} on {d} dof)"
    S = torch.cov(x.T)
    z = (S - P) / ((P**2 + torch.outer(P.diagonal(), P.diagonal())) / n).sqrt()
    limit = norm.ppf(1 - 1e-3 / (2 * d * (d + 1) / 2))
    assert z.abs().max() < limit, f"{what}: a covariance entry is off by {z.abs().max():.1f} standard errors"
    return stat


# ---- tests ------------------------------------------------------------------------------------

def test_repaint_schedule_walks_each_stretch_resample_times():
    # 6 steps, jump 2, r = 3: jumps from 1 and 3 steps above t = 0 (b = 1, 1 + j <= steps - j)
    path = repaint_schedule(6, 2, 3)
    assert path == [0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6]
    assert repaint_schedule(5, 1, 1) == list(range(6))  # the replacement method: one descent
    calls = sum(b > a for a, b in zip(path, path[1:]))
    assert calls == 6 + (3 - 1) * 2 * 2  # steps + (r - 1) j per jump point
    assert max(repaint_schedule(20, 5, 2)) == 20 and repaint_schedule(20, 5, 2).count(20) == 1  # t = 0 once
    with pytest.raises(ValueError, match="resample must be a whole number >= 1, got 0"):
        repaint_schedule(6, 2, 0)


@pytest.mark.parametrize("resample, jump", [(1, 1), (4, 3)])
def test_inpaint_draws_from_its_exact_law(resample, jump):
    """Replacement and RePaint with the exact denoiser: 10,000 draws against the method's own law;
    the known coordinates come out as the guide's, bit for bit."""
    pipe, y, n = oracle_pipe(), guide(), 10_000
    out = inpaint(pipe, y.expand(n, D), KEEP, resample=resample, jump=jump, seed=3)
    assert torch.equal(out[:, KEEP], y.expand(n, D)[:, KEEP])
    times = time_grid(COSINE, 20, "trailing")
    m, P = inpaint_law(COSINE, times, repaint_schedule(20, jump, resample), y[0])
    u = ~KEEP
    assert_draws_from(out[:, u], m[u], P[u][:, u], f"inpaint r={resample} j={jump}")
    if resample > 1:  # the test can tell RePaint from replacement
        m1, P1 = inpaint_law(COSINE, times, repaint_schedule(20, 1, 1), y[0])
        with pytest.raises(AssertionError, match="is off"):
            assert_draws_from(out[:, u], m1[u], P1[u][:, u], "the replacement law")


def test_sdedit_draws_from_its_exact_law():
    """SDEdit at strength 0.6 with DDIM: x_t0 = a y + s z, then the linear ODE steps."""
    pipe, y, n = oracle_pipe(), guide(), 10_000
    out = sdedit(pipe, y.expand(n, D), 0.6, sampler="ddim", steps=10, seed=1)
    a, s = coefficients(COSINE, 0.6)
    m, P = a * y[0], s**2 * torch.eye(D, dtype=torch.float64)
    times = time_grid(COSINE, 10, "trailing", t_max=0.6)
    for i in range(10):
        m, P = step_law(m, P, COSINE, times[i].item(), times[i + 1].item(), "ddim")
    assert_draws_from(out, m, P, "sdedit")


def test_repaint_bias_falls_with_resampling_but_stays():
    """The methods against the true conditional, exactly (KL in nats, 50 steps, jump 10): replacement
    is badly biased; RePaint's bias falls with r and has not vanished at r = 10."""
    y, times = guide()[0], time_grid(COSINE, 50, "trailing")
    truth = true_conditional(y)
    u = ~KEEP
    kls = {}
    for r in (1, 2, 5, 10):
        m, P = inpaint_law(COSINE, times, repaint_schedule(50, 10, r), y)
        kls[r] = kl(m[u], P[u][:, u], *truth)
    print("KL(method || truth) by r:", {r: round(v, 4) for r, v in kls.items()})
    assert kls[1] > kls[2] > kls[5] > kls[10] > 0.01 * kls[1]


def test_bad_input_is_refused():
    pipe, y = oracle_pipe(), guide()
    with pytest.raises(ValueError, match="strength must lie in"):
        sdedit(pipe, y, 1.5)
    with pytest.raises(ValueError, match="keep must hold 0"):
        inpaint(pipe, y, torch.full((D,), 0.5))
    with pytest.raises(ValueError, match="does not fit"):
        inpaint(pipe, y, torch.ones(3))
    with pytest.raises(ValueError, match="nothing to inpaint"):
        inpaint(pipe, y, torch.ones(D))
    with pytest.raises(ValueError, match="images must have shape"):
        sdedit(pipe, torch.zeros(1, 3), 0.5)


# ---- the Gaussian-mixture oracle: the exact conditional is the mixture re-weighted ----------------

MEANS = torch.tensor([[-0.4, -0.6], [-0.4, 0.6], [0.4, 0.0], [0.0, 0.0]], dtype=torch.float64)
MIX = GaussianMixture.create(MEANS, 0.15, torch.tensor([0.1, 0.4, 0.3, 0.2]))


def mixture_pipe() -> Pipeline:
    net = OracleNet(COSINE, MIX)
    return Pipeline.from_network(net, X0Prediction(), COSINE, ModelInterface((2,), 0),
                                 defaults=replace(DEFAULT_SETTINGS, sampler="ddpm", steps=50, spacing="trailing"))


def nearest_component(u):
    """Each value of the unknown coordinate assigned to the component of nearest mean (hard counts)."""
    return (u[:, None] - MEANS[None, :, 1]).abs().argmin(1)


def test_inpainting_a_mixture_against_its_exact_conditional():
    """Coordinate 0 known (y = -0.25), coordinate 1 generated. Given y the components are re-weighted by
    w_c N(y; m_c0, s^2) and coordinate 1 is their mixture. The assignment counts of 4,000 completions
    (50 steps) against the truth's, by chi-square on 2 dof (components 2 and 3 share coordinate 1's
    mean and so one count; the third has mass 7e-5): replacement is rejected outright; RePaint
    (r = 10, j = 10) comes closer, by more than 3 sd of the difference, and is still biased."""
    y, n = torch.tensor([[-0.25, 0.0]], dtype=torch.float64), 4_000
    w = MIX.weights * torch.exp(-0.5 * ((y[0, 0] - MEANS[:, 0]) / 0.15) ** 2)
    w = w / w.sum()
    c = torch.multinomial(w, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    truth = torch.bincount(nearest_component(MEANS[c, 1] + 0.15 * torch.randn(len(c), dtype=torch.float64)),
                           minlength=4).double() / len(c)
    live = truth > 1e-3
    stats = {}
    for r in (1, 10):
        out = inpaint(mixture_pipe(), y.expand(n, 2), torch.tensor([True, False]), resample=r, jump=10, seed=1)
        counts = torch.bincount(nearest_component(out[:, 1]), minlength=4).double()
        stats[r] = (((counts - n * truth) ** 2 / (n * truth))[live].sum().item(), (counts / n).tolist())
    print("chi-square and masses by r:", stats, "truth:", truth.tolist())
    dof = int(live.sum()) - 1
    assert stats[1][0] > chi2.ppf(1 - 1e-6, dof) and stats[10][0] > chi2.ppf(1 - 1e-6, dof)
    # the two statistics are independent noncentral chi-squares, each of variance 2 (dof + 2 lambda)
    spread = math.sqrt(sum(2 * (dof + 2 * stats[r][0]) for r in (1, 10)))  # sd of their difference
    assert stats[1][0] - stats[10][0] > 3 * spread
