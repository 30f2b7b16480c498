import subprocess
import sys

import pytest

from unnoise.cli import build_parser, main


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


def test_samplers_check_small_run(tmp_path, capsys):
    code = main(["samplers", "--n", "200", "--steps", "128,256,512", "--stochastic-steps", "64", "--margin", "100",
                 "--out", str(tmp_path), "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("ddim", "heun", "dpmpp_2m", "unipc", "plms", "annealed_langevin"):
        assert name in out
    assert (tmp_path / "samplers_convergence.png").stat().st_size > 10_000


def test_check_fails_when_a_bound_is_missed(tmp_path, capsys):
    # With 2 and 4 steps nothing is in its asymptotic regime, and a zero margin fails every
    # stochastic sampler: --check must say so through its exit status.
    code = main(["samplers", "--n", "100", "--steps", "2,4", "--stochastic-steps", "4", "--margin", "0",
                 "--out", str(tmp_path), "--check"])
    assert code == 1
    assert "check failed" in capsys.readouterr().err


def test_bad_values_give_one_line_errors(tmp_path):
    for args, message in ((["samplers", "--steps", "5"], "need at least two step counts"),
                          (["samplers", "--schedule", "nope"], "unknown schedule 'nope'"),
                          (["samplers", "--n", "0"], "expected a whole number >= 1")):
        result = subprocess.run([sys.executable, "-m", "unnoise.cli", *args, "--out", str(tmp_path)],
                                capture_output=True, text=True)
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr


def test_demo_writes_pictures(tmp_path, capsys):
    assert main(["demo", "--n", "300", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "demo_samples.png").stat().st_size > 10_000
    assert "dpmpp_2m" in capsys.readouterr().out


@pytest.mark.slow
def test_default_samplers_check_passes(tmp_path):
    # The documented command, with its defaults: every sampler meets its bound.
    result = subprocess.run([sys.executable, "-m", "unnoise.cli", "samplers", "--check", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
