import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from unnoise.cli import _run_config, build_parser, main


def test_help_lists_every_option_with_its_default(capsys):
    subparsers = build_parser()._subparsers._group_actions[0].choices
    for command, parser in subparsers.items():
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        for action in options:
            assert action.option_strings[-1] in text and action.help
        assert text.count("(default:") == len(options)


def samplers_command_wrote(out: str, folder: Path) -> None:
    """What every `unnoise samplers` run leaves: a row per sampler, the convergence plot, the scatter."""
    for name in ("ddim", "heun", "dpmpp_2m", "unipc", "plms", "annealed_langevin"):
        assert name in out
    assert (folder / "samplers_convergence.png").stat().st_size > 10_000
    assert (folder / "samplers_samples.png").stat().st_size > 10_000


def test_check_fails_when_a_bound_is_missed(tmp_path, capsys):
    # With 2 and 4 steps nothing is in its asymptotic regime, and a zero margin fails every
    # stochastic sampler: --check must say so through its exit status, after writing the report.
    code = main(["samplers", "--n", "100", "--steps", "2,4", "--stochastic-steps", "4", "--margin", "0",
                 "--out", str(tmp_path), "--check"])
    assert code == 1
    captured = capsys.readouterr()
    assert "check failed" in captured.err
    samplers_command_wrote(captured.out, tmp_path)


def exit_status(argv: list[str]) -> int:
    """main's return value, or the status argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_bad_values_give_one_line_errors(tmp_path, capsys):
    # Through the installed entry point once (exit status, no traceback), the other cases in process.
    result = subprocess.run([sys.executable, "-m", "unnoise.cli", "samplers", "--steps", "5", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "need at least two step counts" in result.stderr and "Traceback" not in result.stderr
    for args, message in ((["samplers", "--schedule", "nope"], "unknown schedule 'nope'"),
                          (["samplers", "--n", "0"], "expected a whole number >= 1")):
        assert exit_status([*args, "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_and_samples(tmp_path, capsys, monkeypatch):
    # The README's main job, cut to a few seconds of training and one row of the class grid (drawing
    # the config's 100 samples took most of a minute): it must leave a grid, a loss curve and a
    # checkpoint that `unnoise sample` can read.
    import unnoise.cli

    packaged = unnoise.cli.load_config
    monkeypatch.setattr(unnoise.cli, "load_config", lambda path, overrides: packaged(path, [*overrides, "sample.n=10"]))
    assert main(["demo", "--minutes", "0.1", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "samples.png" in out
    assert (tmp_path / "demo" / "samples.png").stat().st_size > 1_000
    assert (tmp_path / "demo" / "loss.png").is_file()
    assert main(["sample", str(tmp_path / "demo"), "--n", "4", "--steps", "3", "--out", str(tmp_path / "s.npz")]) == 0
    import numpy as np

    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (4, 1, 28, 28)


def test_train_and_sample_commands(tmp_path, capsys):
    run = tmp_path / "toy"
    assert main(["train", "toy-2d", "--set", "train.steps=30", "--set", "train.checkpoint_every=10",
                 "--out", str(run)]) == 0
    assert "trained 30 steps" in capsys.readouterr().out
    assert main(["train", "toy-2d", "--set", "train.steps=40", "--out", str(run), "--resume", "latest"]) == 0
    assert "trained 10 steps (40 in all)" in capsys.readouterr().out
    assert main(["sample", str(run), "--n", "16", "--seed", "3", "--out", str(tmp_path / "a.npz")]) == 0
    assert main(["sample", str(run), "--n", "16", "--seed", "3", "--out", str(tmp_path / "b.npz")]) == 0
    import numpy as np

    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert a["samples"].shape == (16, 2) and np.array_equal(a["samples"], b["samples"])
    assert main(["sample", str(run), "--out", str(tmp_path / "x.jpg")]) == 2  # only .png or .npz
    assert main(["train", "no-such-config"]) == 2
    assert main(["sample", str(run), "--label", "1", "--out", str(tmp_path / "c.png")]) == 2  # unconditional


@pytest.mark.slow
def test_default_samplers_check_passes(tmp_path, capsys):
    # The documented command, with its defaults: every sampler meets its bound, and the report and
    # both figures are written.
    code = main(["samplers", "--check", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    samplers_command_wrote(captured.out, tmp_path)


def test_version_list_and_package_files(capsys):
    import unnoise
    from importlib.metadata import version
    from importlib.resources import files

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"unnoise {version('unnoise')}"
    assert unnoise.__version__ == version("unnoise")
    assert main(["list", "samplers"]) == 0
    assert capsys.readouterr().out.split() == list(unnoise.samplers.SAMPLERS)
    assert main(["list", "configs"]) == 0
    assert {"mnist-demo", "signals-1d", "toy-2d"} <= set(capsys.readouterr().out.split())
    assert main(["list", "datasets"]) == 0 and "signals" in capsys.readouterr().out.split()
    assert (files("unnoise") / "py.typed").is_file()  # type information ships with the package


def test_a_run_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path, monkeypatch):
    # `unnoise train fashion-unet --resume latest` run where a folder fashion-unet stands (e.g. inside
    # runs/): the name is still the shipped config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist-demo").mkdir()
    config = _run_config(argparse.Namespace(config=Path("mnist-demo"), overrides=[], out=None))
    assert config.data.name == "mnist"
