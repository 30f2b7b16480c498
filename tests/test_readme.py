"""The README's examples run as written: every Python block (those that need `runs/demo` against a
small run of the demo's data and interface in its place), and the own-images config block trained
on a folder of images."""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unnoise.config import load_config
from unnoise.training.loop import train

README = Path(__file__).resolve().parents[1] / "README.md"
# The demo's data and interface (MNIST, 1 x 28 x 28, 10 classes) on a network small enough to train in seconds.
DEMO_LIKE = {"data": {"name": "mnist"},
             "model": {"preset": "unet_tiny", "in_channels": 1, "out_channels": 1, "image_size": 28, "num_classes": 10},
             "train": {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2, "label_dropout": 0.1},
             "sample": {"n": 2, "steps": 2, "guidance": 3.0}}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_python_examples_run(tmp_path, monkeypatch):
    blocks = _blocks("python")
    assert len(blocks) >= 3 and any('Pipeline.load("runs/demo")' in b for b in blocks)
    monkeypatch.chdir(tmp_path)
    train(load_config(None, tree={**DEMO_LIKE, "out": "runs/demo"}), quiet=True)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
        for name in ("x", "y", "x0"):  # what the examples promise to return: tensors, no autograd graph
            if name in namespace:
                assert isinstance(namespace[name], torch.Tensor) and not namespace[name].requires_grad, name
                assert torch.isfinite(namespace[name]).all(), name
    # the first example's stated shape
    first = next(b for b in blocks if 'Pipeline.load("runs/demo")' in b)
    namespace = {}
    exec(compile(first, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["x"].shape == (8, 1, 28, 28) and namespace["y"].shape == (8, 1, 28, 28)


def test_the_own_images_config_trains_on_a_folder(tmp_path):
    (config_text,) = [b for b in _blocks("toml") if 'name = "folder"' in b]
    rng = np.random.default_rng(0)
    for k, name in enumerate(["cats", "dogs", "owls"]):  # three classes, as the example's num_classes says
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) // (k + 1)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    path = tmp_path / "my-images.toml"
    path.write_text(config_text.replace("path/to/images", str(tmp_path / "images"))
                    .replace('"runs/my-images"', f'"{tmp_path / "run"}"'))
    config = load_config(path, ["train.steps=1", "train.batch_size=4", "sample.n=2", "sample.steps=1"])
    summary = train(config, quiet=True)
    assert summary.step == 1 and config.model.interface.sample_shape == (3, 32, 32)
    assert config.model.interface.num_classes == 3
