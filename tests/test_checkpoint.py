import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch

from unnoise.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint


def _weights(seed):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(64, 64, generator=g), "b.bias": torch.randn(64, generator=g)}


def test_round_trip_and_keep(tmp_path):
    for step in (10, 20, 30):
        state = {"step": step, "rng": torch.get_rng_state(), "betas": (0.9, 0.999), "none": None,
                 "opt": {"state": {0: {"m": torch.ones(3)}}, "groups": [{"params": [0], "lr": 1e-3}]}}
        save_checkpoint(tmp_path, step, _weights(step), _weights(step + 1), state, {"tree": {"x": step}}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020", "step_00000030"]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 30 and ckpt.config["tree"] == {"x": 30}
    assert sorted(ckpt.config["sha256"]) == ["ema.safetensors", "model.safetensors", "state.json", "state.safetensors"]
    # the state comes back as it went in, without pickle: int keys, tuples, None, tensors
    assert ckpt.state["betas"] == (0.9, 0.999) and ckpt.state["none"] is None and ckpt.state["step"] == 30
    assert torch.equal(ckpt.state["rng"], state["rng"]) and torch.equal(ckpt.state["opt"]["state"][0]["m"], torch.ones(3))
    assert ckpt.state["opt"]["groups"] == [{"params": [0], "lr": 1e-3}]
    assert all(torch.equal(ckpt.model[k], _weights(30)[k]) for k in ckpt.model)
    assert all(torch.equal(ckpt.ema[k], _weights(31)[k]) for k in ckpt.ema)
    assert resolve_checkpoint(tmp_path / "step_00000020").name == "step_00000020"


def test_pickle_weights_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="refusing to load .*pickle"):
        load_checkpoint(evil)
    # A checkpoint of the older layout whose state.pt carries code: torch.load(weights_only=True) refuses it.
    folder = save_checkpoint(tmp_path / "run", 1, _weights(0), _weights(0), {"step": 1}, {"tree": {}})
    for name in ("state.safetensors", "state.json"):
        (folder / name).unlink()
    (folder / "state.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match=r"state.pt is not a readable resume state \(UnpicklingError\)"):
        load_checkpoint(tmp_path / "run")
    assert not marker.exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)


WRITER = textwrap.dedent("""
    import sys, torch
    from unnoise.checkpoint import save_checkpoint
    folder, start = sys.argv[1], int(sys.argv[2])
    big = {"w": torch.randn(1024, 1024)}  # 4 MB per file: writes take long enough to be interrupted
    step = start
    while True:
        step += 1
        save_checkpoint(folder, step, big, big, {"step": step, "rng": torch.get_rng_state()}, {"tree": {}}, keep=2)
        print(step, flush=True)
""")


@pytest.mark.slow
def test_sigkill_never_leaves_zero_or_broken_checkpoints(tmp_path):
    rng = random.Random(0)
    step = 0
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(step)], stdout=subprocess.PIPE,
                                text=True)
        proc.stdout.readline()  # at least one complete checkpoint exists from here on
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        found = list_checkpoints(tmp_path)
        assert found, f"attempt {attempt}: no complete checkpoint left"
        latest = load_checkpoint(tmp_path)  # the newest complete one loads
        assert latest.state["step"] == latest.step
        step = latest.step


def test_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"w": torch.zeros(2)}, {"step": 1}, {"tree": {}})
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o755  # a folder others may read, as mkdir makes it
    for name in ("model.safetensors", "ema.safetensors", "state.safetensors", "state.json", "config.json"):
        assert ((path / name).stat().st_mode & 0o777) == 0o644, name


def test_a_run_keeps_the_model_it_was_built_with_when_its_preset_changes(tiny_mnist_run, monkeypatch):
    """A checkpoint names its preset; when a later version changes the preset, the run still loads the
    network it trained (its resolved fields), and a field the class gained since (simulated here by
    dropping "dropout" from the resolved record) takes the class default, not the new preset's."""
    import unnoise.config as config_module
    from unnoise.checkpoint import read_config, run_config
    from unnoise.models.unet import UNetConfig, unet_tiny
    from unnoise.pipeline import Pipeline

    before = run_config(tiny_mnist_run).model
    changed = lambda: replace(unet_tiny(), base_channels=16, dropout=0.3)  # noqa: E731
    monkeypatch.setitem(config_module.MODEL_PRESETS, "unet_tiny", changed)
    assert run_config(tiny_mnist_run).model == before  # the preset's new width is not the run's
    assert Pipeline.load(tiny_mnist_run).config.model == before  # and its weights load into it

    recorded = read_config(resolve_checkpoint(tiny_mnist_run))
    del recorded["resolved"]["model"]["dropout"]
    tree = config_module.pin_model(recorded["tree"], recorded["resolved"])
    assert tree["model"]["dropout"] == UNetConfig.dropout == 0.0 and tree["model"]["base_channels"] == 8
