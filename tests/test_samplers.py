import pytest
import torch

from oracle_nets import oracle_network
from unnoise.convergence import CASES, measure
from unnoise.grids import time_grid
from unnoise.noise import per_sample_generators
from unnoise.parameterization import PARAMETERIZATIONS, NetworkDenoiser, get_parameterization
from unnoise.samplers import SAMPLERS, StepInfo, get_sampler
from unnoise.schedules import get_schedule

SCHEDULES = ["ddpm", "cosine", "vp", "ve", "edm", "flow", "ddpm-ztsnr"]
STOCHASTIC = ["ddpm", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "euler_maruyama", "pc", "annealed_langevin"]


def start(mixture, schedule, n=32, seed=0):
    x, _ = mixture.marginal(schedule, 1.0).sample(n, torch.Generator().manual_seed(seed))
    return x


@pytest.fixture(scope="module")
def exact_runs() -> dict:
    """Each (schedule, sampler)'s samples from the oracle denoiser itself, drawn once: they do not depend
    on the parameterisation (the mixture, x_T, grid and seed are fixed)."""
    return {}


@pytest.mark.parametrize("sname", SCHEDULES)
@pytest.mark.parametrize("pname", list(PARAMETERIZATIONS))
def test_every_sampler_every_schedule_every_parameterization(mixture, sname, pname, exact_runs):
    # Through the adapters, a network that predicts the oracle's targets must sample exactly as the
    # oracle denoiser does, for every sampler.
    schedule, param = get_schedule(sname), get_parameterization(pname)
    net_denoise = NetworkDenoiser(oracle_network(mixture, schedule, param), param, schedule)
    x_T, times = start(mixture, schedule), time_grid(schedule, 6, "trailing")
    for name, sampler in SAMPLERS.items():
        opts = {"rtol": 1e-7, "atol": 1e-7} if name == "ode_adaptive" else {}
        if pname in ("eps", "edm", "consistency") and schedule.alpha(1.0).item() == 0:
            with pytest.raises(ValueError, match="alpha = 0"):
                sampler(net_denoise, schedule, x_T, times, generator=torch.Generator().manual_seed(1), **opts)
            continue
        ours = sampler(net_denoise, schedule, x_T, times, generator=torch.Generator().manual_seed(1), **opts)
        if (sname, name) not in exact_runs:
            exact_runs[sname, name] = sampler(mixture.denoiser(schedule), schedule, x_T, times,
                                              generator=torch.Generator().manual_seed(1), **opts)
        exact = exact_runs[sname, name]
        assert torch.isfinite(ours).all(), name
        assert torch.allclose(ours, exact, rtol=1e-6, atol=1e-6), (name, (ours - exact).abs().max())


ORDERED = [c for c in CASES if c.order is not None]


def order_steps(case) -> tuple[int, ...]:
    # PLMS (order 4) reaches its asymptotic regime later than the others.
    return (128, 256, 512) if case.order == 4 else (32, 64, 128)


@pytest.fixture(scope="module")
def order_reports() -> dict:
    """measure's report per step range, filled by the first case that needs it: the cases of one range
    share x_T, the truth sets and the tight reference solve (most of the work), and each row is
    bit for bit what measuring its case alone gives."""
    return {}


@pytest.mark.parametrize("case", ORDERED, ids=lambda c: c.label)
def test_convergence_order(mixture, ddpm, case, order_reports):
    steps = order_steps(case)
    if steps not in order_reports:
        cases = [c for c in ORDERED if order_steps(c) == steps]
        order_reports[steps] = measure(mixture, ddpm, steps=steps, n=200, cases=cases)
    row = next(r for r in order_reports[steps].rows if r.case == case)
    assert row.order >= case.order - 0.2, (row.errors, row.order)


def test_equivalent_samplers_agree(mixture, ddpm):
    x_T, times = start(mixture, ddpm), time_grid(ddpm, 12, "logsnr")
    den = mixture.denoiser(ddpm)

    def run(name, **opts):
        return get_sampler(name)(den, ddpm, x_T, times, generator=torch.Generator().manual_seed(5), **opts)

    # DDIM with eta = 0 is Euler in the VE view; with eta = 1 it is DDPM's ancestral step, which is
    # also Euler ancestral; DPM-Solver++ SDE with eta = 0 is the ODE solver.
    assert torch.allclose(run("euler"), run("ddim"), atol=1e-12)
    assert torch.allclose(run("ddpm"), run("ddim", eta=1.0), atol=1e-12)
    assert torch.allclose(run("euler_ancestral"), run("ddpm"), atol=1e-12)
    assert torch.allclose(run("dpmpp_2m_sde", eta=0.0), run("dpmpp_2m"), atol=1e-12)
    assert torch.allclose(run("plms", warmup="multistep")[:0], run("plms")[:0])


@pytest.mark.parametrize("name", STOCHASTIC + ["heun"])
def test_same_seed_same_sample_whatever_the_batch(mixture, ddpm, name):
    opts = {"s_churn": 10.0} if name == "heun" else {}
    x_T, times = start(mixture, ddpm, n=6), time_grid(ddpm, 8, "trailing")
    den, sampler = mixture.denoiser(ddpm), get_sampler(name)
    whole = sampler(den, ddpm, x_T, times, generator=per_sample_generators(7, 6), **opts)
    order = [4, 5, 3]  # a later half, shuffled
    part = sampler(den, ddpm, x_T[order], times, generator=[per_sample_generators(7, 6)[i] for i in order], **opts)
    assert torch.allclose(part, whole[order], atol=1e-12)
    again = sampler(den, ddpm, x_T, times, generator=per_sample_generators(7, 6), **opts)
    assert torch.equal(again, whole)
    other = sampler(den, ddpm, x_T, times, generator=per_sample_generators(8, 6), **opts)
    assert not torch.allclose(other, whole)


def test_callback_sees_every_step_and_may_replace_x(mixture, ddpm):
    seen: list[StepInfo] = []
    times = time_grid(ddpm, 5, "trailing")

    def callback(info: StepInfo):
        seen.append(info)
        return torch.zeros_like(info.x) if info.i == 4 else None

    out = get_sampler("dpmpp_2m")(mixture.denoiser(ddpm), ddpm, start(mixture, ddpm), times, callback=callback)
    assert [s.i for s in seen] == [0, 1, 2, 3, 4]
    assert [s.t for s in seen] == times[:-1].tolist() and seen[-1].t_next == 0.0
    assert all(s.x0_hat is not None and s.x.shape == (32, 2) for s in seen)
    assert torch.equal(out, torch.zeros(32, 2, dtype=torch.float64))


def test_samplers_leave_the_input_untouched(mixture, ddpm):
    x_T = start(mixture, ddpm)
    copy = x_T.clone()
    for name, sampler in SAMPLERS.items():
        sampler(mixture.denoiser(ddpm), ddpm, x_T, time_grid(ddpm, 4, "trailing"))
        assert torch.equal(x_T, copy), name


def test_bad_arguments(mixture, ddpm):
    den, x = mixture.denoiser(ddpm), start(mixture, ddpm)
    with pytest.raises(ValueError, match="decrease strictly"):
        get_sampler("ddim")(den, ddpm, x, [0.5, 0.7, 0.0])
    with pytest.raises(ValueError, match="must lie in"):
        get_sampler("ddim")(den, ddpm, x, [1.0, -0.5])
    with pytest.raises(ValueError, match="ode_adaptive needs times ending at exactly 0"):
        get_sampler("ode_adaptive")(den, ddpm, x, [1.0, 0.5])
    with pytest.raises(ValueError, match="at least 2 entries"):
        get_sampler("heun")(den, ddpm, x, [0.0])
    with pytest.raises(ValueError, match="eta must lie in"):
        get_sampler("ddim")(den, ddpm, x, [1.0, 0.0], eta=2.0)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        get_sampler("unipc")(den, ddpm, x, [1.0, 0.0], order=5)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'.*ddim"):
        get_sampler("dpm")
    with pytest.raises(ValueError, match="2 generators for a batch of 32"):
        get_sampler("ddpm")(den, ddpm, x, [1.0, 0.5, 0.0], generator=per_sample_generators(0, 2))


@pytest.mark.parametrize("sname", ["ddpm", "edm", "flow"])
def test_annealed_langevin_default_is_stable_and_an_unstable_step_is_refused(mixture, sname):
    # The default step is 0.2 s~_L^2 on any grid (Song & Ermon's ratio); the fixed 2e-5 it replaced
    # made every sample non-finite on flow's trailing grid (step factor 9.98 > 2).
    schedule = get_schedule(sname)
    times = time_grid(schedule, 400, "trailing")
    out = get_sampler("annealed_langevin")(mixture.denoiser(schedule), schedule, start(mixture, schedule, n=256),
                                           times, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all()
    st_last = (schedule.sigma(times[-2]) / schedule.alpha(times[-2])).item()
    with pytest.raises(ValueError, match=r"step_lr / \(2 s~\^2\) = 2.5 must be < 2"):
        get_sampler("annealed_langevin")(mixture.denoiser(schedule), schedule, start(mixture, schedule, n=4), times,
                                         step_lr=5 * st_last**2)


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "ddpm", "euler_ancestral", "euler_maruyama", "consistency"])
def test_part_of_a_path_continues_exactly(mixture, name):
    # A grid ending above 0 returns x there; continuing from it on the rest of the grid gives what the
    # whole grid gives, bit for bit, for every sampler whose steps carry no history (the same
    # generator continues its draws).
    schedule = get_schedule("edm")
    den, x_T, times = mixture.denoiser(schedule), start(mixture, schedule), time_grid(schedule, 8, "karras")
    sampler = get_sampler(name)
    whole = sampler(den, schedule, x_T, times, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    part = sampler(den, schedule, x_T, times[:4], generator=gen)
    assert not torch.equal(part, whole)
    assert torch.equal(sampler(den, schedule, part, times[3:], generator=gen), whole)
