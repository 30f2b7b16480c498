import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from unnoise.checkpoint import load_checkpoint
from unnoise.config import load_config
from unnoise.losses import DiffusionLoss
from unnoise.training.ema import ema_decay
from unnoise.training.loop import train

TINY = {
    "data": {"name": "moons"},
    "model": {"preset": "mlp_toy", "hidden": 32, "depth": 2},
    "diffusion": {"schedule": "edm", "parameterization": "edm"},
    "train": {"steps": 200, "batch_size": 64, "lr": 1e-3, "warmup_steps": 10, "log_every": 10,
              "checkpoint_every": 100, "keep_checkpoints": 10},
    "sample": {"n": 64, "steps": 4},
}


def config(tmp_path, name, **train):
    tree = json.loads(json.dumps(TINY))
    tree["train"].update(train)
    tree["out"] = str(tmp_path / name)
    return load_config(None, tree=tree)


def losses(run):
    lines = (run / "log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def test_ema_decay_warm_up():
    assert ema_decay(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay(1, 0.999, True) == pytest.approx(2 / 11)
    assert ema_decay(10, 0.999, True) == pytest.approx(11 / 20)
    assert ema_decay(10_000, 0.999, True) == 0.999
    assert ema_decay(0, 0.999, False) == 0.999


def _same_checkpoints(a, b):
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.step == cb.step
    for k in ca.model:
        assert torch.equal(ca.model[k], cb.model[k]), k
        assert torch.equal(ca.ema[k], cb.ema[k]), k
    sa, sb = ca.state["optimizer"]["state"], cb.state["optimizer"]["state"]
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (k, name)
    assert ca.state["position"] == cb.state["position"]


def test_resume_is_bit_exact(tmp_path):
    straight = config(tmp_path, "straight")
    train(straight, quiet=True)
    half = config(tmp_path, "chain", steps=100)
    train(half, quiet=True)
    rest = config(tmp_path, "chain")
    train(rest, resume="latest", quiet=True)
    _same_checkpoints(tmp_path / "straight" / "checkpoints", tmp_path / "chain" / "checkpoints")
    assert losses(tmp_path / "straight") == losses(tmp_path / "chain")


def test_three_chained_resumes(tmp_path):
    train(config(tmp_path, "straight"), quiet=True)
    for i, steps in enumerate((50, 100, 150, 200)):
        train(config(tmp_path, "chain", steps=steps), resume="latest" if i else None, quiet=True)
    _same_checkpoints(tmp_path / "straight" / "checkpoints", tmp_path / "chain" / "checkpoints")


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    real = DiffusionLoss.__call__
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        calls["n"] += 1
        out = real(self, *args, **kwargs)
        return out * math.nan if calls["n"] in (5, 6) else out

    monkeypatch.setattr(DiffusionLoss, "__call__", sometimes_nan)
    summary = train(config(tmp_path, "nan", steps=20), quiet=True)
    assert summary.step == 20 and summary.skipped == 2  # the counter only counts real steps
    records = [json.loads(x) for x in (tmp_path / "nan" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("nonfinite")] == [4, 4]

    calls["n"] = -10_000  # from now on: always NaN after the first few
    monkeypatch.setattr(DiffusionLoss, "__call__", lambda self, *a, **k: real(self, *a, **k) * math.nan)
    with pytest.raises(RuntimeError, match="3 non-finite losses or gradients in a row"):
        train(config(tmp_path, "nan2", steps=20, max_nonfinite=3), quiet=True)


def test_config_errors_name_the_key(tmp_path):
    tree = json.loads(json.dumps(TINY))
    tree["train"]["learning_rate"] = 1e-3
    with pytest.raises(ValueError, match="unknown key train.learning_rate; did you mean 'lr'"):
        load_config(None, tree=tree)
    with pytest.raises(ValueError, match="train.steps must be a whole number in 1..1000000000, got .many."):
        load_config(None, tree=TINY, overrides=["train.steps=many"])
    with pytest.raises(ValueError, match="unknown section \\[trian\\]; did you mean 'train'"):
        load_config(None, tree=TINY, overrides=["trian.steps=3"])
    with pytest.raises(ValueError, match="preset must be one of"):
        load_config(None, tree={**TINY, "model": {"preset": "unet_huge"}})
    assert load_config(None, tree=TINY, overrides=["train.lr=0.5"]).train.lr == 0.5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, tree, entry=train):
    """One rank of a torchrun-like launch: `entry(config, quiet=True)`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    entry(load_config(None, tree=tree), quiet=True)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    # float64: Adam divides by sqrt(v), which magnifies float32 summation-order differences (1e-5 here)
    one = config(tmp_path, "one", steps=20, checkpoint_every=20, dtype="float64")
    train(one, quiet=True)
    tree = dict(one.tree, out=str(tmp_path / "two"))
    mp.spawn(_ddp_worker, args=(2, _free_port(), tree), nprocs=2, join=True)
    a, b = load_checkpoint(tmp_path / "one" / "checkpoints"), load_checkpoint(tmp_path / "two" / "checkpoints")
    assert a.step == b.step == 20
    for k in a.model:
        assert torch.allclose(a.model[k], b.model[k], rtol=0, atol=1e-6), (k, (a.model[k] - b.model[k]).abs().max())
    # A two-process run resumes on one process and follows the same global batches.
    train(config(tmp_path, "one", steps=30, checkpoint_every=10, dtype="float64"), resume="latest", quiet=True)
    train(config(tmp_path, "two", steps=30, checkpoint_every=10, dtype="float64"), resume="latest", quiet=True)
    a, b = load_checkpoint(tmp_path / "one" / "checkpoints"), load_checkpoint(tmp_path / "two" / "checkpoints")
    assert a.step == b.step == 30
    for k in a.model:
        assert torch.allclose(a.model[k], b.model[k], rtol=0, atol=1e-6), k


def test_every_shipped_config_loads_and_builds():
    from importlib.resources import files

    from unnoise.models import build_model

    shipped = sorted(Path(str(files("unnoise") / "configs")).glob("*.toml"))
    assert {p.stem for p in shipped} >= {"mnist-demo", "fashion-unet", "fashion-dit", "toy-2d"}
    for path in shipped:
        config = load_config(path)
        net = build_model(config.model)
        assert sum(p.numel() for p in net.parameters()) > 0, path
