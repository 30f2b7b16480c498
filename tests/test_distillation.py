"""Few-step methods against closed-form truth: consistency models (distillation and training),
progressive distillation, rectified flow with reflow and minibatch-OT coupling, and straightness.

Gaussian data N(mu, s^2 I) has an exact consistency function, f*(x, s~) = mu + sqrt(s^2 + s_min^2) /
sqrt(s^2 + s~^2) (x - mu) (the probability-flow ODE maps quantiles to quantiles), and an exact
1-rectified flow; mixtures and point masses have exact denoisers to distil from (unnoise.oracle).
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from oracle_nets import oracle_network
from scipy.integrate import quad
from scipy.optimize import linear_sum_assignment
from scipy.stats import norm

from unnoise.config import load_config
from unnoise.coupling import ot_pairing
from unnoise.data import TensorSet
from unnoise.grids import time_grid
from unnoise.models import build_model
from unnoise.models.interface import ModelInterface
from unnoise.noise import per_sample_generators
from unnoise.objectives import ConsistencyObjective, DiffusionObjective, ProgressiveObjective, ReflowObjective
from unnoise.objectives.consistency import ct_levels, karras_levels, lognormal_level_weights
from unnoise.objectives.progressive import progressive_target
from unnoise.objectives.reflow import draw_pairs
from unnoise.objectives.teacher import ode_step
from unnoise.oracle import GaussianMixture
from unnoise.parameterization import ConsistencyParameterization, NetworkDenoiser, VelocityPrediction
from unnoise.pipeline import DEFAULT_SETTINGS, Pipeline
from unnoise.samplers import consistency, ddim, heun
from unnoise.schedules import get_schedule
from unnoise.straightness import straightness
from unnoise.training.loop import train

EDM, FLOW = get_schedule("edm"), get_schedule("flow")
MU, S = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.5  # the Gaussian data N(MU, S^2 I)
GAUSS = GaussianMixture.create(MU[None], S)
S_MIN = 0.002  # EDM's t_min, the consistency boundary by default


def f_star(x: torch.Tensor, level: float) -> torch.Tensor:
    """The exact consistency function of GAUSS at noise level s~ (VE view; edm has alpha = 1)."""
    return MU + math.sqrt(S**2 + S_MIN**2) / math.sqrt(S**2 + level**2) * (x - MU)


def points(law: GaussianMixture, n: int, seed: int) -> TensorSet:
    x, labels = law.sample(n, torch.Generator().manual_seed(seed))
    return TensorSet(x.float(), None, name="points")


def config(tmp_path, name: str, objective: str, steps: int, **sections) -> object:
    """A 2-D MLP run of `objective` (edm unless the sections say otherwise)."""
    tree = {"data": {"name": "gaussians"}, "model": {"preset": "mlp_toy", "hidden": 128, "depth": 3},
            "diffusion": {"schedule": "edm", "parameterization": "consistency"},
            "train": {"objective": objective, "steps": steps, "batch_size": 256, "lr": 1e-3, "warmup_steps": 100,
                      "log_every": 500, "checkpoint_every": 0, "ema_decay": 0.99},
            "sample": {"sampler": "consistency", "steps": 1, "spacing": "karras-trailing", "n": 16},
            "out": str(tmp_path / name)}
    for key, values in sections.items():
        tree[key] = {**tree.get(key, {}), **values}
    return load_config(None, tree=tree)


def trained(config, make) -> Pipeline:
    """Train with objective `make(config, run)`; the EMA weights as a pipeline."""
    train(config, make_objective=make, quiet=True)
    return Pipeline.load(config.out)


# ---- consistency models -----------------------------------------------------------------------


def test_the_boundary_condition_holds_exactly_whatever_the_network():
    param = ConsistencyParameterization(0.5, S_MIN)
    t_min = EDM.t_min
    for seed in range(3):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
        f = NetworkDenoiser(lambda x, t, cond=None: net(x) * 100, param, EDM)
        x = torch.randn(64, 2, dtype=torch.float64)
        assert torch.equal(f(x, t_min), x)
        assert not torch.allclose(f(x, 2 * t_min), x)  # only at the boundary


@pytest.mark.parametrize(("solver", "order"), [("heun", 2), ("dpmpp_2s", 2), ("ddim", 1)])
def test_the_teacher_step_solvers_converge_at_their_order(solver, order):
    # Composing the solver's steps down the N levels is the function CD converges to; against f* its
    # error falls as N^-order (the levels are Karras's, so the steps shrink as 1/N).
    den, errors = GAUSS.denoiser(EDM), []
    sizes = (20, 40, 80)
    for n in sizes:
        t = EDM.t_from_sigma_tilde(karras_levels(S_MIN, 80.0, n, 7.0))
        x = MU + 80.0 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        y = x
        for k in range(n - 1, 0, -1):
            y = ode_step(den, EDM, y, t[k].expand(len(y)), t[k - 1].expand(len(y)), None, solver)
        errors.append(((y - f_star(x, 80.0)) ** 2).mean().sqrt().item())
    slope = -np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.25, (errors, slope)


def rmse_to_f_star(f) -> float:
    """RMSE(f, f*) / s over the 40-level Karras discretisation, x from each level's marginal."""
    g, squares = torch.Generator().manual_seed(1), []
    for level in karras_levels(S_MIN, 80.0, 40, 7.0).tolist():
        x = GAUSS.sample(2000, g)[0] + level * torch.randn(2000, 2, generator=g, dtype=torch.float64)
        squares.append(((f(x.float(), EDM.t_from_sigma_tilde(level).item()).double() - f_star(x, level)) ** 2).mean())
    return torch.stack(squares).mean().sqrt().item() / S


def test_cd_with_the_exact_teacher_learns_the_exact_consistency_function(tmp_path):
    # Heun's discretisation with N = 40 levels is 0.010 s away from f* (the test above measures the
    # composition: N = 18 would be 0.056 s), so the trained f may spend 0.01 s on optimisation.
    run = config(tmp_path, "cd", "cd", 4000, distill={"levels": 40})
    pipe = trained(run, lambda c, r: ConsistencyObjective(c, r, dataset=points(GAUSS, 20_000, 0),
                                                          teacher=GAUSS.denoiser(EDM)))
    rmse = rmse_to_f_star(pipe.denoiser)  # at the levels CD trains at, uniformly
    assert rmse < 0.02, rmse
    x = torch.randn(500, 2)  # and after training the boundary still holds exactly
    assert torch.equal(pipe.denoiser(x, EDM.t_min), x)


def test_ct_without_a_teacher_moves_towards_the_exact_consistency_function(tmp_path):
    # Consistency training's target is the network itself one level down, on x0 + s_n z with the same
    # z: a one-sample estimate of the ODE step, unbiased only as the levels merge, and slow to carry the
    # boundary up 1281 levels. At its defaults and 4,000 steps it measured 0.21 s, from 0.82 s for the
    # untrained network (F = 0).
    run = config(tmp_path, "ct", "ct", 4000)
    pipe = trained(run, lambda c, r: ConsistencyObjective(c, r, dataset=points(GAUSS, 20_000, 0)))
    untrained = NetworkDenoiser(build_model(run.model), pipe.denoiser.parameterization, EDM)
    before, after = rmse_to_f_star(untrained), rmse_to_f_star(pipe.denoiser)
    assert before > 0.5 and after < 0.3, (before, after)


def test_the_consistency_sampler_draws_the_exact_law_from_the_exact_consistency_function():
    # With f*, Alg. 1 is exact at every step count: x0 ~ N(mu, s^2 + s_min^2) (up to s~_max = 80's
    # factor 6400 / (6400 + s^2) in one step). The sample variance of n points has standard error
    # sqrt(2 / n) relative, so 4 standard errors of n = 40,000 is 2.8 %.
    def f(x, t, cond=None):
        return f_star(x.double(), EDM.sigma_tilde(t).item()).to(x.dtype)

    n = 40_000
    for steps in (1, 2, 5):
        times = time_grid(EDM, steps, "karras-trailing")
        x = consistency(f, EDM, 80.0 * torch.randn(n, 2, dtype=torch.float64), times,
                        generator=torch.Generator().manual_seed(steps))
        var = (S**2 + S_MIN**2) * (6400 / (6400 + S**2) if steps == 1 else 1.0)
        assert abs(x.var(0) / var - 1).max() < 4 * math.sqrt(2 / n), (steps, x.var(0), var)
        assert ((x.mean(0) - MU).abs() < 4 * math.sqrt(var / n)).all()


def test_ct_levels_double_on_the_schedule_and_the_lognormal_weights():
    # Song & Dhariwal 2023, eq. 11 with s0 = 10, s1 = 1280, K = 80,000: K' = 10,000; N goes 11, 21,
    # 41, ..., 1281 and stays there.
    assert [ct_levels(k, 80_000, 11, 1280) for k in (0, 9_999, 10_000, 20_000, 69_999, 70_000, 79_999)] == \
        [11, 11, 21, 41, 641, 1281, 1281]
    levels = karras_levels(S_MIN, 80.0, 1281, 7.0)
    w = lognormal_level_weights(levels, -1.1, 2.0)
    assert w.shape == (1280,) and abs(w.sum().item() - 1) < 1e-12
    # the mass between two levels is the lognormal's, truncated to [s_min, 80]: the pair where the
    # weights' cumulative sum passes 1/2 holds that truncated law's median
    lo, hi = (norm.cdf((math.log(v) + 1.1) / 2.0) for v in (S_MIN, 80.0))
    median = math.exp(-1.1 + 2.0 * norm.ppf((lo + hi) / 2))
    pair = int(torch.searchsorted(w.cumsum(0), torch.tensor(0.5, dtype=torch.float64)))
    assert levels[pair] <= median <= levels[pair + 1]


# ---- progressive distillation -------------------------------------------------------------------


def test_the_progressive_target_of_point_mass_data_is_x0_exactly():
    # One point: every x0 estimate is the point, so two DDIM steps land where one does, and x~ = y.
    y = torch.tensor([[0.7, -0.4]], dtype=torch.float64)
    point = GaussianMixture.create(y, 0.0)
    grid = time_grid(EDM, 8, "karras-trailing")
    z = 80 * torch.randn(100, 2, dtype=torch.float64)
    for i in range(len(grid) - 2):
        t, mid, end = (torch.full((100,), v) for v in (grid[i].item(), (grid[i] + grid[i + 1]).item() / 2,
                                                      grid[i + 1].item()))
        target = progressive_target(point.denoiser(EDM), EDM, z, t, mid, end)
        assert torch.allclose(target, y.expand(100, 2), rtol=0, atol=1e-12), i


def test_cd_one_step_samples_land_on_the_teachers_ode_endpoint(tmp_path, mixture):
    # Consistency is pathwise: the one-step sample from z is the teacher's ODE endpoint from z. The
    # discretisation (N = 40, Heun) puts the CD fixed point 0.004 from the fine ODE here; the paired
    # RMSE must be well below the data's own spread (0.39 per coordinate).
    run = config(tmp_path, "cd", "cd", 4000, distill={"levels": 40})
    pipe = trained(run, lambda c, r: ConsistencyObjective(c, r, dataset=points(mixture, 20_000, 0),
                                                          teacher=mixture.denoiser(EDM)))
    z = 80 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ode = heun(mixture.denoiser(EDM), EDM, z, time_grid(EDM, 200, "karras"))
    one = pipe.sample(2000, x=z.float(), t_start=1.0).double()  # the run's own sampler: consistency, 1 step
    spread = mixture.sample(20_000, torch.Generator().manual_seed(7))[0].std(0).mean().item()
    paired = ((one - ode) ** 2).mean().sqrt().item()
    assert paired < 0.15 * spread, (paired, spread)


def test_progressive_students_beat_their_teachers_at_half_the_steps_every_round(tmp_path, mixture):
    # Round k: the student at N/2 DDIM steps against the teacher at N from the same z, compared with
    # the teacher's own N/2-step path; the first teacher is the exact denoiser, each later one the
    # previous round's student run (loaded from its folder, as unnoise distill chains them).
    data, steps = points(mixture, 20_000, 0), 8
    exact = teacher = mixture.denoiser(EDM)
    z = 80 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))
    for k in range(3):
        n = steps // 2
        run = config(tmp_path, f"round{k}", "progressive", 1500, diffusion={"parameterization": "edm"},
                     sample={"sampler": "ddim", "steps": n}, loss={"weighting": "truncated-snr"},
                     distill={"teacher_steps": steps, "teacher": str(tmp_path / f"round{k - 1}") if k else ""})
        student = trained(run, lambda c, r: ProgressiveObjective(c, r, dataset=data, teacher=None if k else exact))

        def path(denoise, m):
            return ddim(denoise, EDM, z.double() if denoise is exact else z, time_grid(EDM, m, "karras-trailing"))

        goal = path(teacher, steps).float()
        ours = ((path(student.denoiser, n).float() - goal) ** 2).mean().sqrt().item()
        theirs = ((path(teacher, n).float() - goal) ** 2).mean().sqrt().item()
        assert ours < 0.5 * theirs, (k, ours, theirs)
        teacher, steps = student.denoiser, n


# ---- rectified flow, reflow, OT coupling, straightness ------------------------------------------


def rf_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """The exact 1-rectified flow from N(0, I) (t = 1) to GAUSS (t = 0): E[z - x0 | x_t], with
    x_t = (1 - t) x0 + t z ~ N((1 - t) mu, ((1 - t)^2 s^2 + t^2) I) and Cov(z - x0, x_t) = t - (1 - t) s^2."""
    return -MU + (t - (1 - t) * S**2) / ((1 - t) ** 2 * S**2 + t**2) * (x - (1 - t) * MU)


class OracleNet(torch.nn.Module):
    """The exact velocity of a law as a float64 network (its one parameter only sets the dtype)."""

    def __init__(self, law: GaussianMixture):
        super().__init__()
        self.velocity = oracle_network(law, FLOW, VelocityPrediction())
        self.dtype_anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t, cond=None):
        return self.velocity(x, t, cond)


def oracle_flow(law: GaussianMixture) -> Pipeline:
    """The exact 1-rectified flow of `law` (its exact denoiser on the flow path) as a pipeline."""
    return Pipeline.from_network(OracleNet(law), VelocityPrediction(), FLOW, ModelInterface((2,), 0),
                                 defaults=replace(DEFAULT_SETTINGS, spacing="trailing"))


def flow_config(tmp_path, name: str, steps: int, **sections):
    return config(tmp_path, name, sections.pop("objective", "diffusion"), steps,
                  diffusion={"schedule": "flow", "parameterization": "velocity"},
                  loss={"weighting": "simple", "time_sampling": "uniform", **sections.pop("loss", {})},
                  sample={"sampler": "ddim", "steps": 1, "spacing": "trailing"}, **sections)


def w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """The exact 2-Wasserstein distance between two equal-size point sets (an assignment)."""
    cost = torch.cdist(a.double(), b.double()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    return cost[rows, cols].mean().sqrt().item()


def test_the_exact_gaussian_flow_is_the_closed_form_and_a_trained_one_learns_it(tmp_path):
    # The velocity adapter on the exact denoiser is the closed form to rounding (the formula and the
    # adapter agree); a trained 1-RF is measured against it where the data go, t in [0.05, 0.95].
    run = flow_config(tmp_path, "rf", 3000, train={"ema_decay": 0.999})
    pipe = trained(run, lambda c, r: DiffusionObjective(c, r, dataset=points(GAUSS, 20_000, 0)))
    exact = oracle_network(GAUSS, FLOW, VelocityPrediction())
    g, errors, sizes = torch.Generator().manual_seed(2), [], []
    for t in (0.05, 0.25, 0.5, 0.75, 0.95):
        x = (1 - t) * GAUSS.sample(4000, g)[0] + t * torch.randn(4000, 2, generator=g, dtype=torch.float64)
        want = rf_velocity(x, t)
        assert torch.allclose(exact(x, torch.full((4000,), t, dtype=torch.float64)), want, rtol=1e-10, atol=1e-10)
        got = pipe.denoiser.net(x.float(), torch.full((4000,), t)).double()
        errors.append(((got - want) ** 2).mean().item())
        sizes.append((want**2).mean().item())
    # measured 0.035 to 0.039 (9 % at t = 0.05, where z - x0 is mostly noise; 2.5 % elsewhere); a
    # wrong sign, time direction or target is off by O(1)
    rel = math.sqrt(sum(errors) / sum(sizes))
    assert rel < 0.06, rel


def test_straightness_of_the_exact_gaussian_flow_is_its_integral():
    # The exact flow maps quantiles: x_t = (1 - t) mu + sig_t z with sig_t = sqrt((1 - t)^2 s^2 + t^2),
    # so v - (x_1 - x_0) = (sig_t' - 1 + s) z and S = int_0^1 (sig_t' - 1 + s)^2 dt per dimension. The
    # measure is a left Riemann sum over an Euler path: first order in 1/steps.
    def integrand(t):
        return ((t - (1 - t) * S**2) / math.sqrt((1 - t) ** 2 * S**2 + t**2) - 1 + S) ** 2

    # the paths' own noises (sample i draws from the generator of (0, i)): the truth for this draw
    z = torch.stack([torch.randn(2, generator=g) for g in per_sample_generators(0, 4000)]).double()
    truth = quad(integrand, 0, 1)[0] * (z**2).mean().item()
    pipe = oracle_flow(GAUSS)
    errors = [abs(straightness(pipe, 4000, steps=m, progress=False) - truth) for m in (50, 100, 200)]
    assert errors[2] < 0.02 * truth, (errors, truth)
    assert 1.6 < errors[0] / errors[1] < 2.4 and 1.6 < errors[1] / errors[2] < 2.4, errors  # order 1
    point = GaussianMixture.create(MU[None], 0.0)  # a point mass: every path is a straight line
    assert straightness(oracle_flow(point), 100, steps=10, progress=False) < 1e-12


def test_reflow_straightens_the_flow_and_improves_one_step_samples(tmp_path, mixture):
    exact = oracle_flow(mixture)  # the exact 1-rectified flow of the mixture
    pairs = draw_pairs(exact, 20_000, sampler="dpmpp_2m", steps=50, progress=False)
    run = flow_config(tmp_path, "2rf", 2000, objective="reflow")
    pipe = trained(run, lambda c, r: ReflowObjective(c, r, pairs=pairs))
    s1, s2 = (straightness(p, 2000, steps=50, progress=False) for p in (exact, pipe))
    assert s2 < s1 / 5, (s1, s2)
    truth = mixture.sample(2000, torch.Generator().manual_seed(11))[0]
    one_step = [w2(p.sample(2000, seed=4, sampler="ddim", steps=1, spacing="trailing"), truth) for p in (exact, pipe)]
    assert one_step[1] < one_step[0], one_step


def test_minibatch_ot_coupling_straightens_the_learned_flow(tmp_path, mixture):
    data, s = points(mixture, 20_000, 0), {}
    for coupling in ("independent", "ot"):
        run = flow_config(tmp_path, coupling, 1500, loss={"coupling": coupling})
        pipe = trained(run, lambda c, r: DiffusionObjective(c, r, dataset=data))
        s[coupling] = straightness(pipe, 2000, steps=50, progress=False)
    assert s["ot"] < 0.5 * s["independent"], s


def test_ot_pairing_is_the_optimal_assignment():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
    pi = ot_pairing(x0, noise)
    assert sorted(pi.tolist()) == list(range(64))  # a permutation: the noise's marginal is untouched
    best = ((x0 - noise[pi]) ** 2).sum()
    for _ in range(200):  # no swap of two partners lowers the cost
        i, j = torch.randint(64, (2,), generator=g).tolist()
        swapped = pi.clone()
        swapped[[i, j]] = pi[[j, i]]
        assert ((x0 - noise[swapped]) ** 2).sum() >= best - 1e-5
