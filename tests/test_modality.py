"""Audio, video and molecule samples go through the one pipeline and `unnoise sample` unchanged;
only the writer differs (unnoise.modality): a WAV beside the waveform picture, a GIF beside the
frame strip, an .xyz beside the molecule picture, and one such file per sample on request."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unnoise.audio import read_wav
from unnoise.chemistry import read_xyz
from unnoise.cli import main
from unnoise.config import load_config
from unnoise.modality import CLIP_GAP, preview, save_one
from unnoise.training.loop import train

MOLECULES = {"data": {"name": "qm9", "max_atoms": 9, "limit": 200},
             "model": {"preset": "egnn_tiny", "max_atoms": 9},
             "diffusion": {"schedule": "vp", "parameterization": "eps"},
             "train": {"steps": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 3},
             "sample": {"n": 4, "steps": 3, "sampler": "ddpm"}}
VIDEOS = {"data": {"name": "moving-mnist", "frames": 4, "image_size": 8, "digit_size": 4, "independent_fraction": 0.25},
          "model": {"preset": "video_unet_tiny", "num_classes": 10},
          "train": {"steps": 3, "batch_size": 4, "log_every": 1, "checkpoint_every": 3, "label_dropout": 0.1},
          "sample": {"n": 4, "steps": 2, "guidance": 2.0}}


@pytest.fixture(scope="module", params=["molecules", "videos"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    tree = {"molecules": MOLECULES, "videos": VIDEOS}[request.param]
    train(load_config(None, tree={**tree, "out": str(out)}), quiet=True)
    return request.param, out


def test_the_sample_command_writes_each_kind_with_its_own_file(run, tmp_path, capsys):
    """`unnoise sample` on a molecule and a video run: the picture, its companion file beside it,
    one file per sample, and the raw .npz; a molecule sample is centred with padding exactly 0."""
    kind, path = run
    picture, folder, raw = tmp_path / "x.png", tmp_path / "each", tmp_path / "x.npz"
    assert main(["sample", str(path), "--n", "3", "--out", str(picture), "--individual", str(folder)]) == 0
    assert main(["sample", str(path), "--n", "3", "--out", str(raw)]) == 0
    assert Image.open(picture).text["sampler"]
    samples = np.load(raw)["samples"]
    if kind == "molecules":
        molecules = read_xyz(tmp_path / "x.xyz")
        assert len(molecules) == 3 and sorted(p.name for p in folder.iterdir()) == [f"00000{i}.xyz" for i in range(3)]
        nodes = np.abs(samples).sum(-1) > 0
        assert [len(m) for m in molecules] == nodes.sum(1).tolist()
        assert np.abs((samples[..., :3] * nodes[..., None]).sum(1)).max() < 1e-4
    else:
        gif = Image.open(tmp_path / "x.gif")
        assert gif.n_frames == 4 and json.loads(gif.info["comment"])["sampler"]
        assert sorted(p.name for p in folder.iterdir()) == [f"00000{i}.gif" for i in range(3)]
        assert samples.shape == (3, 1, 4, 8, 8)


def test_audio_writes_a_wav_of_the_clips_in_turn(tmp_path):
    """The picture and a WAV of the clips one after another, CLIP_GAP seconds of silence between."""
    rate = 8000
    t = torch.arange(800) / rate
    clips = torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in (440.0, 880.0)]).unsqueeze(1)  # (2, 1, 800)
    written = preview("audio", clips, tmp_path / "a.png", metadata={"sampler": "heun"}, sample_rate=rate)
    assert Image.open(written).text["sampler"] == "heun"
    sound = read_wav(tmp_path / "a.wav", rate)[0]
    gap = int(CLIP_GAP * rate)
    assert sound.shape == (2 * (800 + gap),)
    assert torch.allclose(sound[:800], clips[0, 0], atol=1 / 2**15) and sound[800:800 + gap].abs().max() == 0
    one = save_one("audio", clips[1:], tmp_path / "one.png", sample_rate=rate)
    assert one.suffix == ".wav" and torch.allclose(read_wav(one, rate)[0], clips[1, 0], atol=1 / 2**15)


def test_a_writer_refuses_the_wrong_rank():
    with pytest.raises(ValueError, match="rank 5"):
        preview("video", torch.zeros(2, 1, 8, 8), "x.png")
    with pytest.raises(ValueError, match="unknown modality"):
        preview("smell", torch.zeros(2, 1), "x.png")


@pytest.mark.slow
def test_two_process_ddp_trains_a_molecule_model_as_one_process(tmp_path):
    """Each rank takes its rows of the global batch, their atom masks (Condition.nodes) with them: two
    processes reach the weights one does (float64, 6 steps of the EGNN)."""
    import torch.multiprocessing as mp

    from test_train import _ddp_worker, _free_port
    from unnoise.checkpoint import load_checkpoint

    tree = json.loads(json.dumps(MOLECULES))
    tree["train"].update(steps=6, checkpoint_every=6, dtype="float64")
    train(load_config(None, tree={**tree, "out": str(tmp_path / "one")}), quiet=True)
    mp.spawn(_ddp_worker, args=(2, _free_port(), {**tree, "out": str(tmp_path / "two")}), nprocs=2, join=True)
    a, b = load_checkpoint(tmp_path / "one" / "checkpoints"), load_checkpoint(tmp_path / "two" / "checkpoints")
    assert a.step == b.step == 6
    for k in a.model:
        assert torch.allclose(a.model[k], b.model[k], rtol=0, atol=1e-9), (k, (a.model[k] - b.model[k]).abs().max())


def test_a_molecule_run_refuses_paired_noise(tmp_path):
    """Minibatch-OT coupling would hand one molecule's zero-centre noise to another of other atoms."""
    tree = json.loads(json.dumps(MOLECULES))
    tree["loss"] = {"coupling": "ot"}
    with pytest.raises(ValueError, match="cannot trade noise"):
        train(load_config(None, tree={**tree, "out": str(tmp_path / "run")}), quiet=True)
