"""Every stochastic sampler, at its default options, against the truth: per-component mass, mean and
variance of its samples of a well-separated Gaussian mixture, on the ddpm, edm and flow schedules.

A distance with a noise floor (convergence.py) missed biases of +8 % in a component's variance and
shifts of 2-3 % in its mass. Here each is tested on its own, with bounds from the sampling noise
plus a discretisation allowance derived for the grid actually used.

Notation (steps.py): the VE view x~ = x / alpha, s~ = sigma / alpha, lambda = -log s~; a step
s~_t -> s~_s has r = s~_s / s~_t = exp(-h). For one component N(m, s^2) (per coordinate) the noised
law at level s~ is N(m, s^2 (1 + u)) with u = s~^2 / s^2, and where the component's responsibility
is 1 the exact denoiser is x0_hat = m + (x~ - m) / (1 + u). Every step below is then linear in x~
and Gaussian noise, so the within-component variance follows a scalar recursion.

1. The last step returns x0_hat at the grid's last noisy level s~_L (steps.py), so even an exact
   solve ends with variance s^2 g_L, g_L = 1 / (1 + u_L) (0.987 at worst here): the target.
2. The two first-order reverse steps, for small h and a correct law at s~_t:
   - the posterior (ancestral) step, x_s ~ q(x_s | x_t, x0 = x0_hat) (Ho et al. 2020, eq. 6-7),
     misses the term (1 - r^2)^2 Var(x0 | x_t) of the true reverse transition's variance: a local
     error of -4 h^2 s^2 u / (1 + u);
   - Euler-Maruyama on the reverse SDE (Song et al. 2021, eq. 6) has the same mean and the noise
     variance s~_t^2 (1 - r^2), not r^2 s~_t^2 (1 - r^2): a local error of +4 h^2 s^2 u^2 / (1 + u).
   Both multiply a variance deviation by 1 - 4 h u / (1 + u) a step, and d u / d lambda = -2 u, so
   a deviation made at u reaches the clean end times exp(-int 4 u / (1 + u) d lambda) = (1 + u)^-2.
   The output's relative variance error is then
       posterior  -sum_i 4 h_i^2 u_i / (1 + u_i)^3,     Euler-Maruyama  +sum_i 4 h_i^2 u_i^2 / (1 + u_i)^3,
   both equal to h on a grid uniform in lambda (each kernel integrates to 1 over lambda).
   Exact recursions at the grids below (each sampler run on one Gaussian with its noise draws
   replaced by basis vectors, a development check) agree with these sums to 0.02 % for ddpm,
   euler_ancestral and euler_maruyama, and put every other sampler between the two: ddim (eta 0.5)
   -0.5 .. -1.4 %, pc +0.4 .. +0.8 %, dpmpp_2m_sde <= +0.3 %, heun (churn) and dpmpp_3m_sde <= 0.07 %.
3. Annealed Langevin dynamics at a finite step has a law of its own: its variance is predicted by
   its recursion (`annealed_langevin_variance`), not by the truth, and its masses are off.
"""

import functools
import itertools
import math

import pytest
import torch
from scipy import stats

from unnoise.grids import time_grid
from unnoise.oracle import GaussianMixture
from unnoise.samplers import get_sampler
from unnoise.schedules import get_schedule

# Four components in 8-D, stds 0.088-0.279, weights 0.206-0.307, means at least 3.8 (s_i + s_j)
# apart: the true mixture's own Bayes rule mislabels 1.5e-5 of its samples (measured on 200,000),
# so labelling samples by it costs the tests nothing.
MIXTURE = GaussianMixture.random(dim=8, components=4, seed=0)
N = 8000

# Grids: the [sample] default spacing (karras, Karras et al. 2022 eq. 5, the grid EDM is defined
# with) where it exists; flow has alpha = 0 at t = 1, where only an index spacing can start, and
# trailing is time_grid's default. At 1000 steps the first-order errors of 2. are 0.6-1.6 % (2.8 %
# for flow's narrowest component under the posterior step). Not edm with trailing: its levels are linear in s~, the last is
# s~_L = 80 / 1000 = 0.08 and the last steps have h = log 2, log 3/2, ..., so every sampler is far
# off there (exact recursions: ddpm -34 .. -60 %, euler_maruyama +14 .. +22 %, pc +10 .. +18 %).
GRIDS = {"ddpm": ("karras", 1000), "edm": ("karras", 1000), "flow": ("trailing", 1000)}
LANGEVIN_LEVELS = 200  # annealed_langevin calls the denoiser 10 times a level

# (name, options, expected variance error): "posterior" and "euler_maruyama" their own first-order
# error of 2., "between" anything between those two.
CASES = [
    ("ddpm", {}, "posterior"),
    ("euler_ancestral", {}, "posterior"),  # the same step as ddpm (test_equivalent_samplers_agree)
    ("ddim", {"eta": 0.5}, "between"),
    ("heun", {"s_churn": 40.0}, "between"),
    ("dpmpp_2m_sde", {}, "between"),
    ("dpmpp_3m_sde", {}, "between"),
    ("euler_maruyama", {}, "euler_maruyama"),
    ("pc", {}, "between"),
]

# Bounds. A within-component variance ratio from n_k samples x 8 coordinates about a known mean has
# standard error sqrt(2 / (8 n_k)): 1.0-1.2 % here (n_k = 1,650-2,450). Z = 4 is a two-sided
# p = 6e-5 a check, under 1 % that one of the 108 checks (27 runs x 4 components) fails by chance,
# while a +8 % bias still clears 4 standard errors plus the allowance in most components (noise 5 %
# too strong, +6 to +14 % in variance, failed every run here, checked once by hand). Masses
# and means pass above p = 1e-4: moving 2.5 % of the samples between two components (chi-square
# noncentrality 36-46) fails with probability 0.94-0.99 (scipy.stats.ncx2). SLACK is for what the
# one-Gaussian derivation leaves out (responsibilities below 1 at high noise, O(h^3)): over 4 seeds
# x 3 schedules, the measured mean deviation from it was -0.7 .. +0.5 % per component, none of them
# 2 standard errors (0.2-0.35 %) from zero.
Z, P_MIN, SLACK = 4.0, 1e-4, 0.005


def noise_levels(schedule, times) -> list[float]:
    """s~ at each noisy time of the grid (inf where alpha = 0)."""
    t = times[:-1]
    return (schedule.sigma(t) / schedule.alpha(t)).tolist()


def first_order_errors(levels: list[float], s: float) -> tuple[float, float]:
    """Relative variance errors of the posterior step and of Euler-Maruyama for a component of std s
    (module docstring, 2.), u taken at each step's geometric midpoint. A step from alpha = 0 is
    left out: its u is infinite and both kernels vanish there."""
    posterior = euler_maruyama = 0.0
    for hi, lo in itertools.pairwise(levels):
        if math.isinf(hi):
            continue
        h, u = math.log(hi / lo), hi * lo / s**2
        posterior -= 4 * h * h * u / (1 + u) ** 3
        euler_maruyama += 4 * h * h * u * u / (1 + u) ** 3
    return posterior, euler_maruyama


def expected_variance(kind: str, levels: list[float], s: float) -> tuple[float, float]:
    """(low, high) of the output's variance / s^2 on this grid (module docstring, 1. and 2.)."""
    target = 1 / (1 + levels[-1] ** 2 / s**2)
    posterior, euler_maruyama = first_order_errors(levels, s)
    low = euler_maruyama if kind == "euler_maruyama" else posterior
    high = posterior if kind == "posterior" else euler_maruyama
    return target * (1 + low), target * (1 + high)


def annealed_langevin_variance(levels: list[float], s: float, steps_per_level: int = 10,
                               step_lr: float | None = None) -> float:
    """Output variance / s^2 of annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) for one
    component N(m, s^2), the single-Gaussian analysis of Song & Ermon 2020 (§3.3): at level i,
    x~ <- x~ + (a_i / 2) score + sqrt(a_i) z with a_i = step_lr s~_i^2 / s~_L^2 and score
    -(x~ - m) / v_i, v_i = s^2 + s~_i^2, so V <- (1 - a_i / (2 v_i))^2 V + a_i; x~ is carried
    unchanged between levels and the output is x0_hat at s~_L, variance g_L^2 V. One level's fixed
    point, v_i / (1 - a_i / (4 v_i)), is wider than p_t, and 10 steps do not reach it from the
    wider level before. Starts from the exact law at the first finite level (levels at alpha = 0
    are passed with DDIM, and the next one is hundreds of times wider than the data)."""
    last = levels[-1]
    step_lr = 0.2 * last**2 if step_lr is None else step_lr  # the sampler's default
    var = None
    for level in levels:
        if math.isinf(level):
            continue
        v = s * s + level * level
        var = v if var is None else var
        a = step_lr * level**2 / last**2
        for _ in range(steps_per_level):
            var = (1 - a / (2 * v)) ** 2 * var + a
    g = s * s / (s * s + last * last)
    return g * g * var / (s * s)


@functools.cache
def draw(name: str, options: tuple, sname: str, seed: int = 0):
    """N samples from the sampler, started from the exact marginal at the grid's first time, and the
    grid's noise levels. Cached: a run serves every test of it."""
    schedule = get_schedule(sname)
    spacing, steps = GRIDS[sname]
    times = time_grid(schedule, LANGEVIN_LEVELS if name == "annealed_langevin" else steps, spacing)
    x_T, _ = MIXTURE.marginal(schedule, times[0].item()).sample(N, torch.Generator().manual_seed(seed))
    out = get_sampler(name)(MIXTURE.denoiser(schedule), schedule, x_T, times,
                            generator=torch.Generator().manual_seed(seed + 1), **dict(options))
    return out.double(), noise_levels(schedule, times)


def by_component(x) -> list:
    """The samples of each component (as labelled by the true mixture's Bayes rule), minus its mean."""
    label = MIXTURE.classifier(get_schedule("edm"))(x, 0.0).argmax(1)  # t = 0: the data, any schedule
    return [x[label == k] - MIXTURE.means[k] for k in range(len(MIXTURE.weights))]


def mass_p(parts) -> float:
    """Chi-square test of the component counts against N times the true weights (K - 1 dof)."""
    return stats.chisquare([len(d) for d in parts], N * MIXTURE.weights.numpy()).pvalue


def mean_p(parts) -> float:
    """n_k |mean_k - mu_k|^2 / var_k summed over the K components is chi-square with K D dof
    (var_k measured, so a variance bias does not show up as a mean bias)."""
    chi2 = sum(len(d) * (d.mean(0) ** 2).sum().item() / (d**2).mean().item() for d in parts)
    return stats.chi2.sf(chi2, len(parts) * MIXTURE.dim)


def variance_ratios(parts) -> list[float]:
    """Each component's variance about its true mean, over its true variance s_k^2."""
    return [(d**2).mean().item() / MIXTURE.stds[k].item() ** 2 for k, d in enumerate(parts)]


def assert_variances(parts, bounds) -> None:
    """ratio_k within (low_k, high_k), widened by Z standard errors and SLACK (relative)."""
    for k, (d, ratio, (low, high)) in enumerate(zip(parts, variance_ratios(parts), bounds)):
        room = Z * math.sqrt(2 / (d.numel())) + SLACK
        assert low * (1 - room) <= ratio <= high * (1 + room), (k, ratio, low, high, room)


@pytest.mark.slow
@pytest.mark.parametrize("sname", list(GRIDS))
@pytest.mark.parametrize("name, options, kind", CASES, ids=[c[0] for c in CASES])
def test_masses_means_and_variances_match_the_truth(name, options, kind, sname):
    x, levels = draw(name, tuple(options.items()), sname)
    parts = by_component(x)
    assert mass_p(parts) > P_MIN, [len(d) for d in parts]
    assert mean_p(parts) > P_MIN, mean_p(parts)
    assert_variances(parts, [expected_variance(kind, levels, s) for s in MIXTURE.stds.tolist()])


@pytest.mark.slow
@pytest.mark.parametrize("sname", list(GRIDS))
def test_annealed_langevin_means_and_variances_follow_its_recursion(sname):
    # The recursion predicts +9.0 .. +9.4 % (ddpm), +8.7 .. +10.2 % (edm) and +9.8 .. +20.6 % (flow)
    # at 200 levels: the algorithm's own bias, not the truth's (annealed_langevin's docstring).
    x, levels = draw("annealed_langevin", (), sname)
    parts = by_component(x)
    assert mean_p(parts) > P_MIN, mean_p(parts)
    predicted = [annealed_langevin_variance(levels, s) for s in MIXTURE.stds.tolist()]
    assert_variances(parts, [(r, r) for r in predicted])


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="annealed Langevin leaves mass where the modes separate: at 200 levels "
                   "the widest component gets 22.4-23.5 % of the samples against 20.6 % (annealed_langevin's "
                   "docstring); a pass means the docstring is out of date")
@pytest.mark.parametrize("sname", list(GRIDS))
def test_annealed_langevin_masses(sname):
    x, _ = draw("annealed_langevin", (), sname)
    assert mass_p(by_component(x)) > P_MIN
