"""`unnoise distill` end to end on small runs: every student is a normal run that `unnoise sample`
reads with no extra flags, resumes bit-exactly (with its target network), trains on two processes
as on one, and bad requests are refused before any work."""

import json

import pytest
import torch
import torch.multiprocessing as mp
from test_train import _ddp_worker, _free_port

from unnoise.checkpoint import load_checkpoint, run_config
from unnoise.cli import main
from unnoise.config import OBJECTIVE_NAMES, load_config
from unnoise.distill import distill, student_config
from unnoise.objectives import OBJECTIVES
from unnoise.objectives.reflow import PAIRS_FILE
from unnoise.training.loop import train

FAST = {"batch_size": 16, "log_every": 5, "warmup_steps": 2, "checkpoint_every": 5, "keep_checkpoints": 5}


def teacher(tmp_path, name, **diffusion):
    tree = {"data": {"name": "moons", "num_points": 400}, "model": {"preset": "mlp_toy", "hidden": 32, "depth": 1},
            "diffusion": diffusion or {"schedule": "edm", "parameterization": "edm"},
            "train": {**FAST, "steps": 10}, "sample": {"n": 8, "steps": 4, "sampler": "heun"},
            "out": str(tmp_path / name)}
    if diffusion.get("schedule") == "flow":
        tree["sample"].update(sampler="dpmpp_2m", spacing="trailing")
        tree["loss"] = {"weighting": "simple", "time_sampling": "logit-normal"}
    train(load_config(None, tree=tree), quiet=True)
    return str(tmp_path / name)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {"edm": teacher(root, "edm"), "flow": teacher(root, "flow", schedule="flow", parameterization="velocity")}


def test_every_method_makes_a_run_that_samples_with_no_extra_flags(tmp_path, teachers):
    steps = ["--set", "train.steps=6", "--set", f"train.batch_size={FAST['batch_size']}"]
    assert main(["distill", teachers["edm"], "--method", "cd", "--out", str(tmp_path / "cd"), *steps]) == 0
    assert main(["distill", teachers["edm"], "--method", "progressive", "--rounds", "2", "--out",
                 str(tmp_path / "pd"), "--set", "distill.teacher_steps=8", *steps]) == 0
    assert main(["distill", teachers["flow"], "--method", "reflow", "--out", str(tmp_path / "rf"),
                 "--set", "distill.pairs=64", "--set", "distill.teacher_steps=4", *steps]) == 0
    expected = {"cd": ("consistency", "consistency", 1), "pd/steps_004": ("edm", "ddim", 4),
                "pd/steps_002": ("edm", "ddim", 2), "rf": ("velocity", "ddim", 4)}
    for run, (parameterization, sampler, nfe) in expected.items():
        config = run_config(tmp_path / run)
        assert (config.diffusion.parameterization, config.sample.sampler, config.sample.steps) == \
            (parameterization, sampler, nfe), run
        out = tmp_path / f"{run.replace('/', '-')}.npz"
        assert main(["sample", str(tmp_path / run), "--n", "4", "--out", str(out)]) == 0
    assert run_config(tmp_path / "pd/steps_002").distill.teacher == str(tmp_path / "pd/steps_004")  # the chain
    assert run_config(tmp_path / "cd").distill.teacher == teachers["edm"]
    pairs = tmp_path / "rf" / PAIRS_FILE
    assert pairs.is_file()
    stamp = pairs.stat().st_mtime_ns  # resuming reuses the pairs; other pair settings are refused before work
    assert main(["distill", teachers["flow"], "--method", "reflow", "--out", str(tmp_path / "rf"), "--resume",
                 "--set", "distill.pairs=64", "--set", "distill.teacher_steps=4", "--set", "train.steps=8",
                 "--set", f"train.batch_size={FAST['batch_size']}"]) == 0
    assert pairs.stat().st_mtime_ns == stamp and load_checkpoint(tmp_path / "rf").step == 8
    with pytest.raises(ValueError, match="holds pairs drawn with"):
        distill(teachers["flow"], "reflow", ["distill.pairs=32", "distill.teacher_steps=4"], out=str(tmp_path / "rf"),
                resume=True, quiet=True)


def test_bad_requests_are_refused_in_one_line(tmp_path, teachers, capsys):
    cases = [
        (["distill", teachers["edm"], "--method", "cd", "--out", str(tmp_path / "x"), "--set", "distill.solver=rk4"],
         "distill.solver must be one of heun, dpmpp_2s, ddim"),
        (["distill", teachers["edm"], "--method", "progressive", "--rounds", "4", "--set", "distill.teacher_steps=12",
          "--out", str(tmp_path / "x")], "--rounds 4 must halve the teacher's 12 steps"),
        (["distill", teachers["edm"], "--method", "reflow", "--out", str(tmp_path / "x")],
         "reflow trains a rectified flow"),
        (["distill", teachers["edm"], "--method", "cd", "--rounds", "2", "--out", str(tmp_path / "x")],
         "--rounds is for progressive distillation"),
        (["distill", str(tmp_path / "nothing"), "--method", "cd"], "nothing"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "x").exists()  # nothing was written
    main(["distill", teachers["edm"], "--method", "cd", "--out", str(tmp_path / "cd"), "--set", "train.steps=2",
          "--set", "train.batch_size=16"])
    capsys.readouterr()
    assert main(["distill", teachers["edm"], "--method", "cd", "--out", str(tmp_path / "cd")]) == 2
    assert "holds checkpoints already" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["cd", "progressive", "reflow"])
def test_students_resume_bit_exactly(tmp_path, teachers, method):
    source = teachers["flow" if method == "reflow" else "edm"]
    extra = {"cd": [], "progressive": ["distill.teacher_steps=8"], "reflow": ["distill.pairs=64",
                                                                              "distill.teacher_steps=4"]}[method]
    sets = [*extra, "train.batch_size=16", "train.checkpoint_every=4", "train.keep_checkpoints=5"]
    straight = distill(source, method, [*sets, "train.steps=8"], out=str(tmp_path / "straight"), quiet=True).runs[-1]
    distill(source, method, [*sets, "train.steps=4"], out=str(tmp_path / "chain"), quiet=True)
    chain = distill(source, method, [*sets, "train.steps=8"], out=str(tmp_path / "chain"), resume=True,
                    quiet=True).runs[-1]
    a, b = load_checkpoint(straight), load_checkpoint(chain)
    assert a.step == b.step == 8
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]) and torch.equal(a.ema[key], b.ema[key]), key
    for key, value in a.state["objective"].get("target", {}).items():  # cd's target network too
        assert torch.equal(value, b.state["objective"]["target"][key]), key
    assert ("target" in a.state["objective"]) == (method == "cd")


@pytest.mark.slow
def test_cd_on_two_processes_computes_what_one_computes(tmp_path, teachers):
    one = student_config(teachers["edm"], "cd", ["train.steps=4", "train.batch_size=16", "train.dtype=float64"],
                         str(tmp_path / "one"))
    train(one, quiet=True)
    mp.spawn(_ddp_worker, args=(2, _free_port(), {**one.tree, "out": str(tmp_path / "two")}), nprocs=2, join=True)
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    for key in a.model:
        assert torch.allclose(a.model[key], b.model[key], rtol=0, atol=1e-6), key
    for key, value in a.state["objective"]["target"].items():
        assert torch.allclose(value, b.state["objective"]["target"][key], rtol=0, atol=1e-6), key
    assert json.loads((tmp_path / "one" / "log.jsonl").read_text().splitlines()[-1])["levels"] == 18


def test_every_objective_name_a_config_accepts_has_its_objective():
    assert tuple(OBJECTIVES) == OBJECTIVE_NAMES
