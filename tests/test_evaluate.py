"""`unnoise eval` end to end on a tiny class-conditional MNIST run, and the sweep's bookkeeping."""

import json

import pytest

from unnoise.cli import main
from unnoise.config import load_config
from unnoise.eval import EvalOptions, SweepRow, at_budget, best_per_budget, format_sweep, steps_for_nfe
from unnoise.features import FeatureConfig, save_feature_net, train_feature_net
from unnoise.training.loop import train

TREE = {
    "data": {"name": "mnist"},
    "model": {"preset": "unet_tiny", "image_size": 28, "in_channels": 1, "out_channels": 1, "num_classes": 10},
    "diffusion": {"schedule": "edm", "parameterization": "edm"},
    "loss": {"weighting": "edm", "time_sampling": "lognormal"},
    "train": {"steps": 20, "batch_size": 16, "lr": 1e-3, "warmup_steps": 2, "log_every": 10, "checkpoint_every": 20,
              "label_dropout": 0.1},
    "sample": {"sampler": "heun", "steps": 3, "spacing": "karras", "n": 10, "guidance": 2.0},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    train(load_config(None, tree={**TREE, "out": str(out)}), quiet=True)
    return out


def test_eval_prints_and_writes_every_metric(run, capsys):
    args = ["eval", str(run), "--n", "40", "--batch-size", "16", "--metrics", "fd,kid,pr,acc,nn,nll,vlb",
            "--nll-n", "3", "--rtol", "1e-2", "--atol", "1e-2", "--vlb-steps", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("FD[mnist-cnn]", "KID[mnist-cnn] se", "precision[mnist-cnn]", "recall[mnist-cnn]",
                 "accuracy[mnist-cnn]", "nn_train median", "nll bits/dim", "vlb bits/dim",
                 "FD[mnist-cnn] floor (40 training images, same classes)"):
        assert name in out
    written = sorted((run / "checkpoints").glob("step_*/eval-heun-3-g2.0-n40.json"))
    assert len(written) == 1
    result = json.loads(written[0].read_text())
    assert result["nfe"] == 5 and result["guidance"] == 2.0 and result["features"] == "mnist-cnn"
    floor = result["FD[mnist-cnn] floor (40 training images, same classes)"]
    assert result["FD[mnist-cnn]"] > floor > 0  # 20 steps of training are far from real digits
    assert 0 <= result["accuracy[mnist-cnn]"] <= 1
    assert result["nll images"] == 3 and result["nll bits/dim"] > 0 and result["nll bits/dim se"] > 0
    # An untrained-ish model: the bound sits far above a good one (~1 bit/dim), yet is finite.
    assert 0 < result["vlb bits/dim"] < 100


def test_reference_statistics_are_cached_and_keyed_by_the_feature_network(run, tmp_path, capsys):
    ckpt = next((run / "checkpoints").glob("step_*"))
    base = ["eval", str(run), "--n", "8", "--batch-size", "8", "--metrics", "fd", "--steps", "1"]
    assert main(base) == 0
    cached = sorted(ckpt.glob("reference-*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert main(base) == 0 and cached[0].stat().st_mtime_ns == stamp  # reused, not recomputed
    other = save_feature_net(*train_feature_net(FeatureConfig(data="mnist", channels=(8, 8, 8), feature_dim=16,
                                                               epochs=1, limit=256)), tmp_path / "f.safetensors")
    assert main([*base, "--features", str(other)]) == 0
    assert len(list(ckpt.glob("reference-*.safetensors"))) == 2  # a new network, new statistics
    assert "FD[f]" in capsys.readouterr().out


def test_sweep_writes_table_json_and_plot(run, capsys):
    assert main(["eval", str(run), "--sweep", "--samplers", "ddim,heun,ode_adaptive", "--budgets", "2,4",
                 "--n", "12", "--batch-size", "12"]) == 0
    out = capsys.readouterr().out
    assert "| ddim |" in out and "| heun |" in out and "**" in out
    ckpt = next((run / "checkpoints").glob("step_*"))
    rows = json.loads((ckpt / "sweep.json").read_text())["rows"]
    assert {(r["sampler"], r["nfe"]) for r in rows if r["sampler"] != "ode_adaptive"} == {
        ("ddim", 2), ("ddim", 4), ("heun", 1), ("heun", 3)}  # heun: 2N - 1 calls, so 1 fits a budget of 2
    assert any(r["sampler"] == "ode_adaptive" and "tolerance" in r for r in rows)
    assert (ckpt / "sweep.png").stat().st_size > 10_000


def test_steps_for_nfe_counts_calls():
    cache = {}
    assert steps_for_nfe("ddim", 10, cache) == (10, 10)
    assert steps_for_nfe("heun", 10, cache) == (5, 9)  # 2N - 1 calls
    assert steps_for_nfe("heun", 1, cache) == (1, 1)


def test_best_per_budget_and_the_table():
    def row(sampler, nfe, fd):
        return SweepRow(sampler, steps=nfe, nfe=nfe, fd=fd, kid=0.0, kid_se=0.0, seconds=0.0)

    rows = [row("a", 2, 5.0), row("a", 4, 3.0), row("b", 3, 4.0)]
    assert at_budget(rows, 3) == {"a": rows[0], "b": rows[2]}
    best = best_per_budget(rows, (2, 3, 4))
    assert best[2] is rows[0] and best[3] is rows[2] and best[4] is rows[1]
    table = format_sweep(rows, (2, 3, 4))
    assert "| a | **5** | 5 (2) | **3** |" in table and "| b |  | **4** | 4 (3) |" in table


def test_bad_options_are_named(run, capsys):
    with pytest.raises(ValueError, match="unknown metrics \\['fid'\\]; choose from fd, kid"):
        EvalOptions(metrics=("fid",))
    assert main(["eval", str(run), "--metrics", "fd,fid"]) == 2
    assert "unknown metrics ['fid']" in capsys.readouterr().err
    assert main(["eval", str(run), "--sweep", "--samplers", "nope"]) == 2
    assert "unknown sampler 'nope'" in capsys.readouterr().err
