"""The pipeline: load once, sample many. Seeds follow the sample index whatever the batching; a
start from a given x at a given t is the sampler run on the rest of the grid; callbacks see each
batch's rows and generators and may replace x; bad requests are refused before any work."""

import pytest
import torch

from unnoise.conditioning import Condition
from unnoise.config import load_config
from unnoise.grids import time_grid
from unnoise.noise import per_sample_generators
from unnoise.pipeline import PROMPT_BANKS, Pipeline
from unnoise.samplers import get_sampler
from unnoise.training.loop import train

TREE = {"data": {"name": "gaussians"}, "model": {"preset": "mlp_toy", "hidden": 32, "depth": 2, "num_classes": 8},
        "train": {"steps": 60, "batch_size": 64, "log_every": 30, "checkpoint_every": 60, "label_dropout": 0.1},
        "sample": {"n": 16, "steps": 6, "guidance": 2.0}}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "run"
    train(load_config(None, tree={**TREE, "out": str(out)}), quiet=True)
    return Pipeline.load(out, "cpu")


@pytest.mark.parametrize("sampler", ["heun", "euler_ancestral"])  # deterministic, and stochastic per sample
def test_sample_i_depends_on_seed_and_index_not_on_batching(pipe, sampler):
    whole = pipe.sample(12, sampler=sampler, seed=5)
    assert whole.shape == (12, 2)
    assert torch.allclose(pipe.sample(12, sampler=sampler, seed=5, batch_size=5), whole, atol=1e-6)
    assert torch.allclose(pipe.sample(4, sampler=sampler, seed=5, first=8), whole[8:], atol=1e-6)  # classes follow i
    assert not torch.allclose(pipe.sample(12, sampler=sampler, seed=6), whole)


def test_a_start_from_x_at_t_is_the_sampler_on_the_rest_of_the_grid(pipe):
    x0 = pipe.sample(6, seed=1)
    x_t = pipe.add_noise(x0, 0.3, seed=1)
    got = pipe.sample(6, label=2, x=x_t, t_start=0.3, steps=4, spacing="karras", guidance=1.0)
    times = time_grid(pipe.schedule, 4, "karras", t_max=0.3)
    expected = get_sampler("heun")(pipe.denoiser, pipe.schedule, x_t, times, cond=Condition(labels=torch.full((6,), 2)))
    assert torch.allclose(got, expected, atol=1e-6)
    # a start at t = 1 from the seeds' own noise is the plain sample
    noise = torch.stack([torch.randn(2, generator=g) for g in per_sample_generators(3, 6)])
    start = noise * pipe.schedule.sigma(1.0).item()
    assert torch.allclose(pipe.sample(6, x=start, t_start=1.0, seed=3), pipe.sample(6, seed=3), atol=1e-6)
    # add_noise draws from its own stream: not the noise the sampler then draws for the same seed
    eps = (pipe.add_noise(torch.zeros(6, 2), 1.0, seed=3) / pipe.schedule.sigma(1.0).item())
    assert not torch.allclose(eps, noise)
    explicit = pipe.sample(6, label=2, x=x_t, times=times, guidance=1.0)
    assert torch.allclose(explicit, expected, atol=1e-6)
    # part of a path: the state at the grid's last time (undecoded), from which the rest continues
    ddim = dict(label=2, sampler="ddim", guidance=1.0, decode=False)
    middle = pipe.sample(6, x=x_t, times=times[:3], **ddim)
    assert torch.allclose(pipe.sample(6, x=middle, times=times[2:], **ddim), pipe.sample(6, x=x_t, times=times, **ddim),
                          atol=1e-6)
    with pytest.raises(ValueError, match="times ends at t = .* > 0, where x is still noisy: pass decode=False"):
        pipe.sample(6, x=x_t, times=times[:3])


def test_the_callback_sees_rows_and_generators_and_may_replace_x(pipe):
    seen = []

    def look(batch):
        seen.append((batch.step.i, tuple(batch.rows), len(batch.generators)))
        if batch.step.t_next == 0:
            return torch.zeros_like(batch.step.x)  # the last state replaced: the sample is what we say

    out = pipe.sample(5, batch_size=3, first=10, steps=3, sampler="euler", callback=look)
    assert {rows for _, rows, _ in seen} == {(10, 11, 12), (13, 14)}
    assert [i for i, rows, _ in seen if rows == (13, 14)] == [0, 1, 2] and all(n == len(r) for _, r, n in seen)
    assert torch.equal(out, torch.zeros(5, 2))


def test_bad_requests_are_refused_before_any_work(pipe):
    x = torch.zeros(4, 2)
    cases = [
        (dict(t_start=0.5), "t_start = 0.5 needs x"),
        (dict(x=x), "x needs t_start"),
        (dict(x=torch.zeros(4, 3), t_start=0.5), r"x must have shape \(4, 2\)"),
        (dict(x=x, t_start=0.5, spacing="leading", steps=7), "starts at t = .*not at t_start = 0.5"),
        (dict(sampler="heun", options={"eta": 1.0}), "heun takes no option eta; its options: s_churn"),
        (dict(sampler="foo"), "unknown sampler 'foo'"),
        (dict(label=8), r"label must be a class in 0..7 for this model, got 8"),
        (dict(labels=torch.tensor([0, 1, 2, 9])), r"labels must be 4 classes in 0..7"),
        (dict(prompts=["a dog"]), "no text conditioning"),
        (dict(guidance=float("nan")), "guidance must be a finite number"),
        (dict(batch_size=0), "batch_size must be a whole number >= 1"),
        (dict(cond=Condition(labels=torch.zeros(4, dtype=torch.long))), r"cond sets \['labels'\]"),
        (dict(cond=Condition(image=torch.zeros(4, 1, 2))), "takes no image condition"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe.sample(4, **kwargs)


def test_unconditional_models_refuse_guidance_and_prompt_banks_stay_bounded(tmp_path, pipe, monkeypatch):
    plain = {**TREE, "model": {**TREE["model"], "num_classes": 0}, "sample": {"n": 4},
             "train": {**TREE["train"], "steps": 2, "checkpoint_every": 2, "label_dropout": 0.0}}
    train(load_config(None, tree={**plain, "out": str(tmp_path / "u")}), quiet=True)
    unconditional = Pipeline.load(tmp_path / "u")
    with pytest.raises(ValueError, match="guidance 3 needs a conditional model"):
        unconditional.sample(2, guidance=3.0)
    # a server sees endless prompt sets: the pipeline keeps the PROMPT_BANKS most recently used
    encoded = []
    monkeypatch.setattr("unnoise.pipeline.load_text_encoder", lambda config: None)
    monkeypatch.setattr("unnoise.pipeline.prompt_bank", lambda encoder, prompts: encoded.append(prompts) or FakeBank())
    for k in range(PROMPT_BANKS + 3):
        pipe._bank((f"p{k}",))
    pipe._bank(("p5",))  # kept: no new encoding
    assert len(encoded) == PROMPT_BANKS + 3 and len(pipe._banks) == PROMPT_BANKS
    pipe._bank(("p0",))  # evicted long ago: encoded again
    assert len(encoded) == PROMPT_BANKS + 4 and ("p5",) in pipe._banks


class FakeBank:
    def to(self, device):
        return self
