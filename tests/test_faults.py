"""Faults and bad input: corrupted checkpoints, bad command lines, a full disk, a read-only folder,
torn logs, branches of a run's history. For every case the command either gives the correct result
or exits non-zero with one line naming the file, key or value: never a traceback, never a hang,
never exit 0 with a wrong result.

The checkpoint cases are generated: for each file of a real checkpoint, truncations, byte flips,
tensors of the wrong shape or dtype, NaN and Inf, missing and extra entries (those written with a
matching checksum, so that the checks behind the checksum are reached too), and malformed JSON.
"""

import faulthandler
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from unnoise.checkpoint import list_checkpoints, load_checkpoint
from unnoise.cli import main
from unnoise.config import load_config
from unnoise.plots import read_losses
from unnoise.objectives import objective_for
from unnoise.training.loop import TrainingStopped, train

TOY = {"data": {"name": "moons", "num_points": 512}, "model": {"preset": "mlp_toy", "hidden": 32, "depth": 2},
       "train": {"steps": 6, "batch_size": 32, "log_every": 2, "checkpoint_every": 2, "keep_checkpoints": 10},
       "sample": {"n": 8, "steps": 2}}
CASE_SECONDS = 60  # no case may take longer: a hang fails the run instead of stalling CI


def _toml(tree: dict, path: Path) -> Path:
    lines = []
    for section, values in tree.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        else:
            lines.insert(0, f"{section} = {json.dumps(values)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    train(load_config(None, tree={**TOY, "out": str(out)}), quiet=True)
    return out


def _one_line_failure(code: int, err: str, names: list[str]) -> None:
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("unnoise "), err
    assert any(name in lines[0] for name in names), (names, err)


def _cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    faulthandler.dump_traceback_later(CASE_SECONDS, exit=True, file=sys.__stderr__)
    try:
        code = main([str(a) for a in argv])
    finally:
        faulthandler.cancel_dump_traceback_later()
    return code, capsys.readouterr().err


# ---- generated corruptions of a checkpoint ---------------------------------------------------------


def _rehash(folder: Path) -> None:
    """Record the current files' checksums, as a writer that corrupted them consistently would."""
    config = json.loads((folder / "config.json").read_text())
    config["sha256"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in config["sha256"]}
    (folder / "config.json").write_text(json.dumps(config))


def _edit_tensors(folder: Path, name: str, edit) -> None:
    tensors = load_file(folder / name)
    save_file(edit(dict(tensors)), folder / name)
    _rehash(folder)


def _first_float(t: dict) -> str:
    return next(k for k, v in sorted(t.items()) if v.is_floating_point() and v.numel() > 1)


def _corruptions(seed: int, flips: int):
    """(label, file it names, corrupt(folder)) for every kind of damage to every file."""
    rng = random.Random(seed)
    files = ["model.safetensors", "ema.safetensors", "state.safetensors", "state.json", "config.json"]
    for name in files:
        for cut in (0, 1, 7, "half", -1):
            def truncate(folder, name=name, cut=cut):
                data = (folder / name).read_bytes()
                keep = len(data) // 2 if cut == "half" else (len(data) + cut if cut == -1 else cut)
                (folder / name).write_bytes(data[:keep])
            yield f"truncate {name} to {cut}", name, truncate
        for k in range(flips):
            def flip(folder, name=name, k=k):
                data = bytearray((folder / name).read_bytes())
                at = rng.randrange(len(data))
                data[at] ^= 1 << rng.randrange(8)
                (folder / name).write_bytes(bytes(data))
            yield f"flip a bit of {name} #{k}", name, flip
    for name in ("model.safetensors", "ema.safetensors", "state.safetensors"):
        edits = {
            "a tensor of the wrong shape": lambda t: {**t, _first_float(t): torch.zeros(7, 7)},
            "a tensor of the wrong dtype": lambda t: {**t, _first_float(t): t[_first_float(t)].double()},
            "NaN": lambda t: {**t, _first_float(t): torch.full_like(t[_first_float(t)], float("nan"))},
            "Inf": lambda t: {**t, _first_float(t): torch.full_like(t[_first_float(t)], float("inf"))},
            "a missing entry": lambda t: {k: v for k, v in t.items() if k != _first_float(t)},
            "an extra entry": lambda t: {**t, "extra.weight": torch.zeros(3)},
        }
        for label, edit in edits.items():
            yield f"{label} in {name}", name, lambda folder, name=name, edit=edit: _edit_tensors(folder, name, edit)
    json_edits = {
        "not JSON": lambda c: "{not json",
        "a list": lambda c: "[]",
        "no tree": lambda c: json.dumps({k: v for k, v in c.items() if k != "tree"}),
        "a tree that is a number": lambda c: json.dumps({**c, "tree": 5}),
        "a negative step": lambda c: json.dumps({**c, "step": -3}),
        "a step that is text": lambda c: json.dumps({**c, "step": "ten"}),
        "sha256 that is a list": lambda c: json.dumps({**c, "sha256": []}),
        "deep nesting": lambda c: "[" * 100_000 + "]" * 100_000,
        "an unknown model preset": lambda c: json.dumps({**c, "tree": {**c["tree"], "model": {"preset": "nope"}}}),
    }
    for label, edit in json_edits.items():
        def rewrite(folder, edit=edit):
            (folder / "config.json").write_text(edit(json.loads((folder / "config.json").read_text())))
        yield f"config.json: {label}", "config.json", rewrite
    state_edits = {
        "the optimiser's moment 7x7 (the memory-corruption case)":
            lambda s: _set_moment(s, torch.zeros(7, 7)),
        "a step that is text": lambda s: {**s, "step": "ten"},
        "no optimiser": lambda s: {k: v for k, v in s.items() if k != "optimizer"},
        "an RNG state of the wrong length": lambda s: {**s, "torch_rng": {"$tensor": "/optimizer/state/0/step"}},
    }
    for label, edit in state_edits.items():
        yield f"state: {label}", "state", lambda folder, edit=edit: _edit_state(folder, edit)


def _set_moment(skeleton: dict, value: torch.Tensor) -> dict:
    skeleton["__replace__"] = value
    return skeleton


def _edit_state(folder: Path, edit) -> None:
    skeleton = edit(json.loads((folder / "state.json").read_text()))
    replacement = skeleton.pop("__replace__", None)
    if replacement is not None:  # the first exp_avg, replaced with a matching checksum
        tensors = load_file(folder / "state.safetensors")
        key = next(k for k in sorted(tensors) if k.endswith("exp_avg"))
        tensors[key] = replacement
        save_file(tensors, folder / "state.safetensors")
    (folder / "state.json").write_text(json.dumps(skeleton))
    _rehash(folder)


def _run_corruptions(run: Path, tmp_path: Path, capsys, seed: int, flips: int) -> Counter:
    good = list_checkpoints(run / "checkpoints")[-1]
    config = _toml({**TOY, "train": {**TOY["train"], "steps": 8}}, tmp_path / "toy.toml")
    counts = Counter()
    for label, name, corrupt in _corruptions(seed, flips):
        folder = tmp_path / "case" / good.name
        shutil.rmtree(tmp_path / "case", ignore_errors=True)
        shutil.copytree(good, folder)
        corrupt(folder)
        out = tmp_path / "x.npz"
        out.unlink(missing_ok=True)
        code, err = _cli(capsys, "sample", folder, "--n", "4", "--out", out)
        if code == 0:  # a correct result: finite samples (e.g. a bit flipped in the unused model weights)
            with np.load(out) as f:
                assert np.isfinite(f["samples"]).all(), label
            counts["sample ok"] += 1
        else:
            _one_line_failure(code, err, [name, "config.json", "model.safetensors", "ema.safetensors", "state"])
            counts["sample refused"] += 1
        shutil.rmtree(tmp_path / "again", ignore_errors=True)
        code, err = _cli(capsys, "train", config, "--resume", folder, "--out", tmp_path / "again")
        if code == 0:
            counts["resume ok"] += 1
            assert load_checkpoint(tmp_path / "again").step == 8, label
            if name != "config.json":  # every other file a resume reads is checksummed: no damage gets through
                counts["damage resumed"] += 1
        else:
            _one_line_failure(code, err, [name, "config.json", "model.safetensors", "ema.safetensors", "state"])
            counts["resume refused"] += 1
    print(f"\ncorrupted checkpoints: {counts['sample ok'] + counts['sample refused']} cases, {dict(counts)}")
    return counts


def _check_counts(counts: Counter, flips: int) -> None:
    cases = 5 * (5 + flips) + 3 * 6 + 9 + 4  # truncations and flips per file, tensor edits, JSON, state edits
    assert counts["sample ok"] + counts["sample refused"] == cases == counts["resume ok"] + counts["resume refused"]
    assert counts["damage resumed"] == 0  # only a config.json that still parses may resume


def test_corrupted_checkpoints_are_refused_in_one_line(run, tmp_path, capsys):
    _check_counts(_run_corruptions(run, tmp_path, capsys, seed=0, flips=2), flips=2)


@pytest.mark.slow
def test_many_bit_flips(run, tmp_path, capsys):
    _check_counts(_run_corruptions(run, tmp_path, capsys, seed=1, flips=40), flips=40)


def test_the_memory_corruption_case_is_refused_before_the_optimiser_sees_it(run, tmp_path):
    # In a process of its own: were the 7x7 moment handed to fused AdamW, the process would abort
    # (exit 134) or hang, not raise.
    folder = tmp_path / "ckpt"
    shutil.copytree(list_checkpoints(run / "checkpoints")[-1], folder)
    _edit_state(folder, lambda s: _set_moment(s, torch.zeros(7, 7)))
    config = _toml({**TOY, "train": {**TOY["train"], "steps": 8}}, tmp_path / "toy.toml")
    result = subprocess.run([sys.executable, "-m", "unnoise.cli", "train", str(config), "--resume", str(folder),
                             "--out", str(tmp_path / "again")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "optimiser state" in result.stderr and "(7, 7) float32, its parameter is" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---- bad command lines -----------------------------------------------------------------------------


def test_bad_command_lines(run, tmp_path, capsys):
    existing = tmp_path / "a_folder.png"
    existing.mkdir()
    cases = [
        (["sample", run, "--device", "cuda"], "no CUDA device"),
        (["sample", run, "--device", "bogus"], "unknown device 'bogus'"),
        (["train", "toy-2d", "--device", "cuda:7", "--out", tmp_path / "t"], "no CUDA device"),
        (["sample", run, "--out", "/proc/x.png", "--n", "2"], "/proc/x.png"),
        (["sample", run, "--out", existing], "a_folder.png"),
        (["sample", run, "--sampler", ""], "unknown sampler ''"),
        (["sample", run, "--n", "2000000"], "--n 2000000"),
        (["sample", run, "--steps", "2", "--option", "max_nfe=1", "--sampler", "ode_adaptive"], "max_nfe"),
        (["eval", run, "--features", "/missing.safetensors", "--n", "10"], "/missing.safetensors"),
        (["sample", tmp_path / "nothing-here"], "no complete checkpoint"),
        (["export", run, run], "exists already"),
        (["train", tmp_path / "missing.toml"], "missing.toml"),
        (["demo", "--out", run], "holds a demo run already"),
    ]
    for argv, names in cases:
        code, err = _cli(capsys, *argv)
        _one_line_failure(code, err, [names])
    for argv in (["sample", run, "--guidance", "nan"], ["sample", run, "--classifier-scale", "inf"],
                 ["demo", "--minutes", "nan"], ["sample", run, "--n", "0"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse: usage and one error line, exit 2
            main([str(a) for a in argv])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("unnoise")


def test_non_finite_weights_and_samples_are_refused(run, tmp_path, capsys):
    folder = tmp_path / "model"
    assert main(["export", str(run), str(folder)]) == 0
    _edit_tensors(folder, "ema.safetensors", lambda t: {k: v * 1e30 if v.ndim > 1 else v for k, v in t.items()})
    code, err = _cli(capsys, "sample", folder, "--n", "4", "--out", tmp_path / "x.npz")
    _one_line_failure(code, err, ["are not finite"])
    assert not (tmp_path / "x.npz").exists()  # nothing written


# ---- the run's history: fresh runs, branches, non-finite stops, torn logs -------------------------


def test_a_branch_moves_the_newer_checkpoints_aside(tmp_path, capsys):
    out = tmp_path / "run"
    config = _toml({**TOY, "out": str(out)}, tmp_path / "toy.toml")
    assert main(["train", str(config)]) == 0  # checkpoints 2, 4, 6
    code, err = _cli(capsys, "train", config)  # a fresh run into the same folder: refused
    _one_line_failure(code, err, ["holds checkpoints already"])
    capsys.readouterr()
    longer = _toml({**TOY, "out": str(out), "train": {**TOY["train"], "steps": 10}}, tmp_path / "longer.toml")
    assert main(["train", str(longer), "--resume", str(out / "checkpoints" / "step_00000002")]) == 0
    printed = capsys.readouterr().out
    assert "moved the newer step_00000004, step_00000006" in printed and "trained 8 steps (10 in all)" in printed
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"step_{s:08d}" for s in (2, 4, 6, 8, 10)]
    assert sorted(p.name for p in (out / "abandoned").iterdir()) == ["step_00000004", "step_00000006"]
    # the branch is what `--resume latest` continues, and it equals a run that never branched
    straight = tmp_path / "straight"
    train(load_config(None, tree={**TOY, "out": str(straight), "train": {**TOY["train"], "steps": 10}}), quiet=True)
    a, b = load_checkpoint(out / "checkpoints"), load_checkpoint(straight / "checkpoints")
    assert a.step == b.step == 10 and all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)


def _nan_after_two_steps(config, run):
    """The run's own objective, whose loss turns NaN from step 2 on (skipped steps do not advance it)."""
    objective = objective_for(config, run)
    plain = objective.loss

    def loss(net, batch, step):
        out = plain(net, batch, step)
        return replace(out, loss=out.loss * float("nan")) if step >= 2 else out

    objective.loss = loss
    return objective


def test_the_non_finite_stop_saves_the_last_good_state(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    tree = {**TOY, "out": str(out), "train": {**TOY["train"], "max_nonfinite": 3, "steps": 50, "checkpoint_every": 100}}
    with pytest.raises(TrainingStopped, match="3 non-finite .* in a row.*step 2 is saved in"):
        train(load_config(None, tree=tree), make_objective=_nan_after_two_steps, quiet=True)
    saved = load_checkpoint(out / "checkpoints")  # the last good state, to resume with other settings
    assert saved.step == 2 and saved.state["skipped"] == 3
    monkeypatch.setattr("unnoise.cli.train", partial(train, make_objective=_nan_after_two_steps))
    code, err = _cli(capsys, "train", _toml(tree, tmp_path / "bad.toml"), "--resume", "latest")
    _one_line_failure(code, err, ["training stopped at step 2: 3 non-finite"])


def test_a_torn_log_line_is_skipped_and_later_records_stay_whole(tmp_path):
    out = tmp_path / "run"
    train(load_config(None, tree={**TOY, "out": str(out)}), quiet=True)
    with (out / "log.jsonl").open("a") as log:
        log.write('{"step": 6, "lo')  # cut short by a full disk
    longer = {**TOY, "out": str(out), "train": {**TOY["train"], "steps": 8}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(load_config(None, tree=longer), resume="latest", quiet=True)
        steps = [s for s, _ in read_losses(out / "log.jsonl")]
    assert steps == [2, 4, 6, 8]  # the torn line dropped, the records after it whole
    assert any("skipped 1 unreadable line" in str(w.message) for w in caught)


# ---- a full disk and a read-only folder -------------------------------------------------------------


def _tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the full-disk and read-only cases run in CI as root")
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode:
        pytest.skip(f"could not mount a tmpfs here: {result.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "2m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(small_disk, tmp_path, capsys):
    out = small_disk / "run"
    config = _toml({**TOY, "out": str(out)}, tmp_path / "toy.toml")
    assert main(["train", str(config)]) == 0
    newest = list_checkpoints(out / "checkpoints")[-1]
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * max(free - 20_000, 0))  # room for a log line, not a checkpoint
    longer = _toml({**TOY, "out": str(out), "train": {**TOY["train"], "steps": 8}}, tmp_path / "longer.toml")
    code, err = _cli(capsys, "train", longer, "--resume", "latest")
    _one_line_failure(code, err, ["No space left on device"])
    assert load_checkpoint(out / "checkpoints").path == newest  # the previous checkpoint is intact
    assert not list(newest.parent.glob(".step_*"))  # and no half-written one is left


def test_a_read_only_folder_keeps_the_last_checkpoint_and_says_so(small_disk, tmp_path, capsys):
    out = small_disk / "run"
    config = _toml({**TOY, "out": str(out)}, tmp_path / "toy.toml")
    assert main(["train", str(config)]) == 0
    newest = list_checkpoints(out / "checkpoints")[-1]
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    longer = _toml({**TOY, "out": str(out), "train": {**TOY["train"], "steps": 8}}, tmp_path / "longer.toml")
    code, err = _cli(capsys, "train", longer, "--resume", "latest")
    _one_line_failure(code, err, ["Read-only file system"])
    assert load_checkpoint(out / "checkpoints").path == newest
