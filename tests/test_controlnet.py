"""ControlNet: at initialisation it is exactly its base U-Net (zero convolutions); trained, its base
stays frozen bit for bit while the copy learns; hints are derived from the data; sampling needs a hint."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from unnoise.checkpoint import load_checkpoint
from unnoise.cli import main
from unnoise.conditioning import Condition
from unnoise.config import load_config
from unnoise.data.hints import edges, lowres
from unnoise.models import MODEL_PRESETS, build_model
from unnoise.pipeline import Pipeline
from unnoise.training.loop import train

TINY = {"image_size": 28, "in_channels": 1, "out_channels": 1, "base_channels": 8, "channel_mult": [1, 2],
        "blocks_per_level": 1, "attention_factors": [2], "head_channels": 16, "num_classes": 10}
BASE = {"data": {"name": "mnist"}, "model": {"preset": "unet_tiny", **TINY},
        "train": {"steps": 5, "batch_size": 8, "log_every": 5, "checkpoint_every": 5, "label_dropout": 0.1},
        "sample": {"sampler": "heun", "steps": 3, "n": 4, "guidance": 1.0}}


def control_tree(base, out, **model):
    return {**BASE, "data": {"name": "mnist", "hint": "edges"},
            "model": {"preset": "controlnet_small", **TINY, "hint_channels": 1, **model},
            "train": {**BASE["train"], "steps": 4, "init": str(base), "lr": 1e-2}, "out": str(out)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("control") / "base"
    train(load_config(None, tree={**BASE, "out": str(out)}), quiet=True)
    return out


def test_at_initialisation_it_is_its_base_exactly():
    torch.manual_seed(0)
    net = build_model(replace(MODEL_PRESETS["controlnet_small"](), num_classes=10))
    for p in net.base.parameters():  # a base with nothing zero in it, as a trained one
        p.data.normal_(0, 0.05)
    net.init_from_base()
    x, t, labels = torch.randn(3, 1, 28, 28), torch.rand(3), torch.tensor([1, 2, 10])
    out = net(x, t, Condition(labels=labels, image=torch.randn(3, 1, 28, 28)))
    assert out.abs().mean() > 0.01 and torch.equal(out, net.base(x, t, Condition(labels=labels)))
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"copy", "hint", "zero_skips", "zero_middle"}
    with pytest.raises(ValueError, match="needs a hint image"):
        net(x, t, Condition(labels=labels))


def test_training_keeps_the_base_and_sampling_reads_the_hint(base, tmp_path, capsys):
    out = tmp_path / "control"
    train(load_config(None, tree=control_tree(base, out)), quiet=True)
    trained, start = load_checkpoint(out, with_state=False).ema, load_checkpoint(base, with_state=False).ema
    for key, value in start.items():
        assert torch.equal(trained[f"base.{key}"], value), key
    assert not all(torch.equal(trained[f"copy.{k}"], start[k]) for k in start if f"copy.{k}" in trained)
    assert any(trained[k].abs().max() > 0 for k in trained if k.startswith("zero_"))
    pipe = Pipeline.load(out, "cpu")
    hint = torch.where(torch.rand(2, 1, 28, 28) < 0.1, 1.0, -1.0)
    a = pipe.sample(2, label=3, cond=Condition(image=hint), steps=3, seed=1)
    b = pipe.sample(2, label=3, cond=Condition(image=-hint), steps=3, seed=1)
    assert a.shape == (2, 1, 28, 28) and not torch.equal(a, b)  # the hint steers the samples
    with pytest.raises(ValueError, match="reads a hint image of 1 channel"):
        pipe.sample(2, steps=3)
    Image.fromarray(np.where(np.eye(28) > 0, 255, 0).astype(np.uint8)).save(tmp_path / "edges.png")
    assert main(["sample", str(out), "--hint", str(tmp_path / "edges.png"), "--n", "3", "--steps", "3",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").text["hint"].endswith("edges.png")
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "3", "--out", str(tmp_path / "t.png")]) == 2
    assert "give --hint" in capsys.readouterr().err
    assert main(["sample", str(base), "--hint", str(tmp_path / "edges.png"), "--out", str(tmp_path / "u.png")]) == 2
    assert "reads no hint image" in capsys.readouterr().err


def test_a_base_of_another_network_or_path_is_refused(base, tmp_path):
    with pytest.raises(ValueError, match="holds another network than \\[model\\] describes"):
        train(load_config(None, tree=control_tree(base, tmp_path / "c", base_channels=16)), quiet=True)
    tree = control_tree(base, tmp_path / "d")
    tree["diffusion"] = {"schedule": "cosine", "parameterization": "v"}
    with pytest.raises(ValueError, match="trained on schedule 'edm'"):
        train(load_config(None, tree=tree), quiet=True)
    tree = control_tree(base, tmp_path / "f")
    tree["train"] = {k: v for k, v in tree["train"].items() if k != "init"}
    with pytest.raises(ValueError, match="a ControlNet controls a trained U-Net: name its run in \\[train\\] init"):
        train(load_config(None, tree=tree), quiet=True)
    tree = control_tree(base, tmp_path / "e")
    tree["data"] = {"name": "mnist"}
    with pytest.raises(ValueError, match="set \\[data\\] hint"):
        train(load_config(None, tree=tree), quiet=True)


def test_hints_from_images():
    square = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    square[..., 8:20, 8:20] = 255
    e = edges(square)
    assert set(e.unique().tolist()) == {-1.0, 1.0}
    on = e[0, 0] > 0
    assert on[8:20, 7:9].any() and on[8:20, 19:21].any() and not on[12:16, 12:16].any() and not on[:4].any()
    low = lowres(square, 2)  # 14x14 by the data sets' antialiased resize (its filter smears one pixel), blown up
    assert low.shape == (1, 1, 28, 28) and torch.equal(low[0, 0, 10:18, 10:18], torch.ones(8, 8))
    assert torch.equal(low[0, 0, :6], -torch.ones(6, 28))
    assert torch.equal(low[0, 0, 6:8, 6:8], low[0, 0, 6, 6].expand(2, 2))  # nearest: 2x2 blocks
