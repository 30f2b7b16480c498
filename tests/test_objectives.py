"""The one training loop runs every objective with the same guarantees: a resumed run ends
bit-identical to an uninterrupted one, two DDP processes compute what one computes, and a new
objective (here a distillation-shaped one, with a frozen teacher and a second EMA) plugs in
without touching the loop."""

import json
import math

import pytest
import torch
import torch.multiprocessing as mp
from test_train import _ddp_worker, _free_port

from unnoise.checkpoint import load_checkpoint
from unnoise.config import load_config
from unnoise.models import build_model
from unnoise.objectives import DiffusionObjective, LossOutput
from unnoise.training.ema import EMA
from unnoise.training.loop import train

TRAIN = {"steps": 8, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "log_every": 2, "checkpoint_every": 4,
         "keep_checkpoints": 5}
RUNS = {
    "classifier": {
        "data": {"name": "mnist"}, "diffusion": {"schedule": "edm", "parameterization": "edm"},
        "model": {"preset": "classifier_small", "base_channels": 8, "channel_mult": [1, 2], "attention_factors": [2],
                  "head_channels": 16},
        "train": TRAIN,
    },
    "autoencoder": {  # with its discriminator from step 2: a second optimiser in the resume state
        "data": {"name": "mnist", "image_size": 16, "fit": "resize"},
        "model": {"preset": "autoencoder_tiny", "in_channels": 1},
        "autoencoder": {"perceptual_weight": 0.0, "disc_start": 2, "scale_images": 50},
        "train": TRAIN,
    },
    "signals": {
        "data": {"name": "signals", "num_points": 64, "length": 32},
        "model": {"preset": "unet1d_small", "image_size": 32, "base_channels": 8, "channel_mult": [1, 2],
                  "attention_factors": [2], "head_channels": 16},
        "train": TRAIN, "sample": {"n": 4, "steps": 2},
    },
}


def _run(tmp_path, kind, name, **train_overrides):
    tree = json.loads(json.dumps(RUNS[kind]))
    tree["train"].update(train_overrides)
    return load_config(None, tree={**tree, "out": str(tmp_path / name)})


def _same(a, b, atol=0.0):
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.step == cb.step
    for k in ca.model:
        assert torch.allclose(ca.model[k], cb.model[k], rtol=0, atol=atol), (k, (ca.model[k] - cb.model[k]).abs().max())
        assert torch.allclose(ca.ema[k], cb.ema[k], rtol=0, atol=atol), k
    return ca, cb


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_every_objective_resumes_bit_exactly(tmp_path, kind):
    train(_run(tmp_path, kind, "straight"), quiet=True)
    train(_run(tmp_path, kind, "chain", steps=4), quiet=True)
    summary = train(_run(tmp_path, kind, "chain"), resume="latest", quiet=True)
    assert summary.trained == 4 and summary.step == 8
    a, b = _same(tmp_path / "straight" / "checkpoints", tmp_path / "chain" / "checkpoints")
    assert a.state["objective"].keys() == b.state["objective"].keys()
    if kind == "autoencoder":  # the discriminator and its optimiser resume exactly too
        da, db = a.state["objective"]["discriminator"], b.state["objective"]["discriminator"]
        assert all(torch.equal(da[k], db[k]) for k in da)
        oa, ob = a.state["objective"]["disc_optimizer"]["state"], b.state["objective"]["disc_optimizer"]["state"]
        assert oa.keys() == ob.keys() and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
        assert a.config["latent_scale"] == b.config["latent_scale"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "signals", "autoencoder"])
def test_two_processes_compute_what_one_computes(tmp_path, kind):
    # the autoencoder with its discriminator: the adaptive weight is taken from gradients averaged
    # over the ranks, as one process computes it from the whole batch
    # float64: Adam divides by sqrt(v), which magnifies float32 summation-order differences; the
    # autoencoder trains in float32 (its perceptual network is float32), so it gets a float32 bound
    float64 = kind != "autoencoder"
    one = _run(tmp_path, kind, "one", steps=4, **({"dtype": "float64"} if float64 else {}))
    train(one, quiet=True)
    mp.spawn(_ddp_worker, args=(2, _free_port(), {**one.tree, "out": str(tmp_path / "two")}), nprocs=2, join=True)
    _same(tmp_path / "one" / "checkpoints", tmp_path / "two" / "checkpoints", atol=1e-6 if float64 else 1e-4)


class TeacherRegression(DiffusionObjective):
    """A distillation-shaped objective: the student regresses a frozen teacher's x0 estimate at the
    same x_t, and keeps a target network as a second EMA in the resume state."""

    def __init__(self, config, run):
        super().__init__(config, run)
        g = torch.Generator().manual_seed(123)
        self.teacher = build_model(config.model).to(run.device).requires_grad_(False)  # frozen, not trained
        for weight in self.teacher.parameters():  # a teacher that is not the zero function
            weight.add_(0.3 * torch.randn(weight.shape, generator=g))
        self.target = EMA(self.network)

    def loss(self, net, batch, step):
        p = self.loss_fn
        t, x0, noise = batch["t"], batch["x0"], batch["noise"]
        alpha, sigma = (v.view(-1, *[1] * (x0.ndim - 1)).float() for v in (p.schedule.alpha(t), p.schedule.sigma(t)))
        x_t = alpha * x0 + sigma * noise
        with torch.no_grad():
            goal = self.teacher(x_t, t.float())
        return LossOutput(((net(x_t, t.float()) - goal) ** 2).mean())

    def after_step(self, batch, out, step):
        self.target.update(self.network, 0.9)

    def state_dict(self):
        return {**super().state_dict(), "target": self.target.shadow}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.target.shadow = state["target"]


def test_a_new_objective_plugs_into_the_loop_unchanged(tmp_path):
    tree = {"data": {"name": "moons"}, "model": {"preset": "mlp_toy", "hidden": 16, "depth": 1},
            "train": {**TRAIN, "steps": 20, "checkpoint_every": 10}, "sample": {"n": 8, "steps": 2}}

    def run(name, steps, resume=None):
        config = load_config(None, tree={**tree, "train": {**tree["train"], "steps": steps}, "out": str(tmp_path / name)})
        return train(config, make_objective=TeacherRegression, resume=resume, quiet=True)

    run("straight", 20)
    run("chain", 10)
    run("chain", 20, resume="latest")
    a, b = _same(tmp_path / "straight" / "checkpoints", tmp_path / "chain" / "checkpoints")
    for k, v in a.state["objective"]["target"].items():  # the second EMA resumes exactly too
        assert torch.equal(v, b.state["objective"]["target"][k]), k
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log) and log[-1]["loss"] < log[0]["loss"]  # it learns the teacher
