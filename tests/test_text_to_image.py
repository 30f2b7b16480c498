"""Text-to-image end to end on a tiny model: captions from the data, the frozen encoder, caption
dropout to the empty prompt, prompts at sampling time with classifier-free guidance."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import unnoise

from unnoise.checkpoint import load_checkpoint
from unnoise.cli import main
from unnoise.text import CaptionBank, TextConfig, load_text_encoder, prompt_bank
from unnoise.config import load_config
from unnoise.data import load_dataset
from unnoise.models import build_model
from unnoise.objectives import DiffusionObjective, RunContext
from unnoise.pipeline import Pipeline
from unnoise.training.loop import Batches
from unnoise.training.loop import train

TREE = {
    "data": {"name": "emoji", "image_size": 16},
    "model": {"preset": "unet_tiny", "context_dim": 384},
    "diffusion": {"schedule": "edm", "parameterization": "edm"},
    "train": {"steps": 4, "batch_size": 8, "log_every": 2, "checkpoint_every": 4, "label_dropout": 0.5},
    "sample": {"sampler": "euler", "steps": 2, "n": 4, "guidance": 2.0, "prompts": ["red apple", "grinning face"]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2i") / "run"
    summary = train(load_config(None, tree={**TREE, "out": str(out)}), quiet=True)
    return load_checkpoint(summary.checkpoints[-1], with_state=False), summary


def test_training_draws_captions_and_drops_them_to_the_empty_prompt(tmp_path):
    config = load_config(None, tree=TREE)
    objective = DiffusionObjective(config, RunContext(torch.device("cpu"), torch.float32, tmp_path))

    def caption_ids(position):
        index, generator = Batches(len(objective.dataset), 8, 0, position=position).next()
        return objective.draw(index, generator, position)["caption_ids"]

    ids = torch.cat([caption_ids(k) for k in range(40)])
    dropped = (ids == 0).double().mean().item()
    assert abs(dropped - 0.5) < 4 * (0.25 / len(ids)) ** 0.5  # label_dropout = 0.5, binomial SE
    assert torch.equal(caption_ids(3), ids[24:32])  # (seed, batch number) fix the draw


def test_a_text_model_trains_and_samples_from_prompts(run, tmp_path, capsys):
    ckpt, summary = run
    pipe = Pipeline.load(ckpt.path)
    x = pipe.sample(4, seed=0)
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()
    # sample i uses prompt i mod 2; seeds are per sample, so sample 0 and 2 differ only by seed
    a = pipe.sample(2, seed=0, prompts=["red apple"])
    b = pipe.sample(2, seed=0, prompts=["red apple", "grinning face"])
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    # guidance 0 is the empty prompt's estimate alone: every prompt gives the same images
    u = pipe.sample(2, seed=0, prompts=["red apple"], guidance=0.0)
    assert torch.allclose(u, pipe.sample(2, seed=0, prompts=["grinning face"], guidance=0.0))
    assert torch.allclose(u, pipe.sample(2, seed=0, prompts=[""], guidance=1.0), atol=1e-6)
    out = tmp_path / "apple.png"
    assert main(["sample", str(ckpt.path), "--prompt", "a red apple", "--prompt", "a boot", "--n", "4",
                 "--steps", "2", "--guidance", "4", "--out", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out


def test_text_runs_refuse_what_does_not_fit(run, tmp_path):
    ckpt, _ = run
    config = load_config(None, tree=ckpt.config["tree"])
    with pytest.raises(ValueError, match="has no captions"):
        train(load_config(None, tree={**TREE, "data": {"name": "mnist"}, "out": str(tmp_path / "a"),
                                      "model": {**TREE["model"], "in_channels": 1, "out_channels": 1,
                                                "image_size": 28}}))
    with pytest.raises(ValueError, match="context_dim must be the text encoder's width 384"):
        train(load_config(None, tree={**TREE, "model": {**TREE["model"], "context_dim": 16},
                                      "out": str(tmp_path / "b")}))
    no_prompts = load_config(None, tree={**ckpt.config["tree"], "sample": {"prompts": []}})
    with pytest.raises(ValueError, match="needs prompts"):
        Pipeline.from_weights(no_prompts, ckpt.ema).sample(2)
    plain = load_config(None, tree={**TREE, "model": {"preset": "unet_tiny"}, "sample": {"n": 4},
                                    "train": {**TREE["train"], "label_dropout": 0.0}})
    with pytest.raises(ValueError, match="no text conditioning"):
        Pipeline.from_weights(plain, build_model(plain.model).state_dict()).sample(1, prompts=["a boot"])
    with pytest.raises(ValueError, match="max_tokens must lie in 3..512"):
        TextConfig(max_tokens=2)
    assert config.text.encoder == "all-MiniLM-L6-v2"


def test_the_caption_bank_pads_and_trims():
    encoder = load_text_encoder(TextConfig())
    bank = prompt_bank(encoder, ["a red apple on a wooden table", "boot"])
    assert bank.texts[0] == "" and bank.mask[0].sum() == 2  # the empty prompt: [CLS] [SEP]
    short = bank.cond(torch.tensor([0, 2]))
    assert short.context.shape[1] == int(bank.mask[2].sum())  # trimmed to the longest asked for
    alone = CaptionBank.encode(encoder, ["boot"])
    n = int(alone.mask[0].sum())
    assert torch.allclose(short.context[1, :n], alone.context[0, :n], atol=1e-5)


@pytest.mark.slow  # the reference features of Fashion-MNIST's 10,000 test images
def test_prompt_accuracy_of_a_fashion_text_model(tmp_path, capsys):
    tree = {**TREE, "data": {"name": "fashion-mnist", "captions": True}, "out": str(tmp_path / "f"),
            "model": {**TREE["model"], "in_channels": 1, "out_channels": 1, "image_size": 28}}
    ckpt = train(load_config(None, tree=tree), quiet=True).checkpoints[-1]
    assert main(["eval", ckpt, "--guidance-scales", "0,2", "--per-prompt", "1", "--steps", "2",
                 "--batch-size", "50"]) == 0
    out = capsys.readouterr().out
    assert "| scale | training captions | held-out paraphrases | FD |" in out
    doc = json.loads((Path(ckpt) / "prompts.json").read_text())
    assert len(doc["prompts"]) == 50 and [r["scale"] for r in doc["rows"]] == [0.0, 2.0]
    row = doc["rows"][0]
    assert 0 <= row["accuracy: held-out paraphrases"] <= 1 and set(row["per prompt"]) == {
        p["prompt"] for p in doc["prompts"]}
    assert "a picture of a boot" in row["per prompt"]


@pytest.mark.slow
def test_two_process_ddp_text_model_matches_one_process(tmp_path):
    # Caption draws and dropout come from (seed, batch number) like the rest of the batch: two ranks
    # condition each slice on the same texts as one process does.
    import torch.multiprocessing as mp
    from test_train import _ddp_worker, _free_port

    tree = {**TREE, "train": {**TREE["train"], "steps": 6, "checkpoint_every": 6, "dtype": "float64"}}
    train(load_config(None, tree={**tree, "out": str(tmp_path / "one")}), quiet=True)
    mp.spawn(_ddp_worker, args=(2, _free_port(), {**tree, "out": str(tmp_path / "two")}), nprocs=2, join=True)
    a, b = load_checkpoint(tmp_path / "one" / "checkpoints"), load_checkpoint(tmp_path / "two" / "checkpoints")
    assert a.step == b.step == 6
    for k in a.model:
        assert torch.allclose(a.model[k], b.model[k], rtol=0, atol=1e-6), (k, (a.model[k] - b.model[k]).abs().max())


def test_batched_draws_keep_each_sample_on_its_prompt(run):
    # eval.samples.draw samples in batches; sample i must get prompt i mod P whatever the batch size.
    from unnoise.eval.samples import draw

    ckpt, _ = run
    pipe = Pipeline.load(ckpt.path, "cpu")
    prompts = ["red apple", "grinning face", "rocket"]
    whole = pipe.sample(5, seed=0, prompts=prompts).float().clamp(-1, 1)
    batched, labels, _, _ = draw(pipe, 5, sampler=None, steps=None, spacing=None, guidance=None,
                                 seed=0, batch_size=2, progress=False, prompts=prompts)
    assert labels is None
    assert torch.allclose(batched, whole, atol=1e-5)


def test_the_python_api_loads_once_and_samples_from_prompts(run):
    ckpt, _ = run
    pipe = unnoise.Pipeline.load(ckpt.path)
    images = pipe.sample(2, prompts=["red apple"], guidance=2.0, steps=2, seed=0)
    assert pipe.source == str(ckpt.path) and pipe.step == ckpt.step
    config = load_config(None, tree=ckpt.config["tree"])
    again = Pipeline.from_weights(config, ckpt.ema).sample(2, prompts=["red apple"], guidance=2.0, steps=2, seed=0)
    assert torch.equal(images, again)
    with pytest.raises(ValueError, match="takes no class labels .*give prompts"):
        pipe.sample(2, label=1)


def test_eval_prompts_a_text_model_with_the_reference_captions(run, tmp_path, capsys, monkeypatch):
    # Sample i is drawn with the caption of reference image i mod N and scored against that image's
    # class; with the training split as reference, the floor comes from the held-out images.
    from unnoise.eval import EvalOptions, reference
    from unnoise.features import FeatureConfig, feature_net_for, save_feature_net, train_feature_net

    ckpt, _ = run
    config = load_config(None, tree=ckpt.config["tree"])
    net, info = train_feature_net(FeatureConfig(data="emoji", image_size=16, channels=(8, 8, 8), feature_dim=8,
                                                epochs=1, limit=64))
    feats_path = save_feature_net(net, info, tmp_path / "emoji16.safetensors")
    feats = feature_net_for("emoji", feats_path)
    ref = reference(config, feats, tmp_path, "test")
    test = load_dataset(dataclasses.replace(config.data, split="test"))
    assert ref.prompts == [test.captions.texts[i + 1] for i in range(len(test))]  # each image's own name
    assert "red apple" not in ref.prompts and len(ref.prompts) == len(test)  # a training caption

    import unnoise.eval.report as ev  # evaluate() draws and scores through these names

    seen = {}
    real_draw, real_metrics = ev.draw, ev.sample_metrics

    def draw(*args, **kwargs):  # what the samples were prompted with
        seen["prompts"] = kwargs["prompts"]
        return real_draw(*args, **kwargs)

    def sample_metrics(images, labels, *args):  # what they were scored against
        seen["labels"] = labels
        return real_metrics(images, labels, *args)

    monkeypatch.setattr(ev, "draw", draw)
    monkeypatch.setattr(ev, "sample_metrics", sample_metrics)
    assert main(["eval", str(ckpt.path), "--n", "20", "--steps", "1", "--batch-size", "8", "--reference", "train",
                 "--features", str(feats_path), "--metrics", "fd,acc"]) == 0
    train_set = load_dataset(dataclasses.replace(config.data, split="train"))
    label_of = {train_set.captions.texts[i + 1]: int(c) for i, c in enumerate(train_set.labels)}
    prompts, labels = seen["prompts"], seen["labels"]
    assert sorted(prompts) == sorted(label_of) and prompts[:20] != list(label_of)[:20]  # all, in a seeded order
    assert labels.tolist() == [label_of[prompts[i]] for i in range(20)]  # sample i: prompt i and its image's group
    doc = json.loads((ckpt.path / "eval-euler-1-g2.0-n20-train.json").read_text())
    assert doc["reference"] == "emoji train (1225 images)" and doc["prompts"].endswith("(1225)")
    assert doc["guidance"] == 2.0 and 0 <= doc["accuracy[emoji16]"] <= 1
    floor = [k for k in doc if k.startswith("FD[emoji16] floor")]
    assert floor and "held-out images, same classes" in floor[0]
    with pytest.raises(ValueError, match="reference must be one of test, train, all"):
        EvalOptions(reference="val")
    capsys.readouterr()


def test_the_prompt_grid_script_draws_a_row_per_prompt(run, tmp_path, capsys):
    import sys

    from PIL import Image

    from unnoise.plots import plot_prompt_grid

    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from prompt_grid import main as grid_main

    ckpt, _ = run
    out = tmp_path / "grid.png"
    assert grid_main([str(ckpt.path), str(ckpt.path), "--names", "a,b", "--prompt", "green apple",
                      "--prompt", "tomato", "--per-prompt", "2", "--steps", "1", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 100 and "a: 4 samples" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"b: expected \(P \* k, 1 or 3, H, W\) images for 2 prompts, got \(3, 3"):
        plot_prompt_grid({"b": torch.zeros(3, 3, 8, 8)}, ["x", "y"], tmp_path / "bad.png")
