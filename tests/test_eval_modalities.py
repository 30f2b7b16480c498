"""`unnoise eval` of audio, video and molecule runs (unnoise.eval.modalities), end to end on tiny runs
trained for a few steps: the report's rows, the real-data floors, the preview files, and options that
do not apply to a kind refused before anything is sampled.

The tiny models' samples are noise-like; the assertions on numbers are on the real-data rows, whose
values the measures' definitions fix (a real moving digit follows a bouncing path; real QM9 molecules
are stable; the audio feature network knows its own training clips)."""

import json
import runpy
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_modality import MOLECULES as TINY_MOLECULES
from test_modality import VIDEOS

from unnoise.audio import read_wav
from unnoise.chemistry import read_xyz
from unnoise.cli import main
from unnoise.config import load_config
from unnoise.eval.modalities import audio_features_for, shuffled
from unnoise.features import packaged_path
from unnoise.pipeline import Pipeline
from unnoise.training.loop import train

ROOT = Path(__file__).parents[1]
FIGURES = ROOT / "docs" / "figures"  # reports the scripts wrote: their keys are what the docs quote

# test_modality's tiny runs, the molecules with every atom count up to 29: the real rows are QM9's own.
MOLECULES = {**TINY_MOLECULES, "data": {"name": "qm9", "limit": 200}, "model": {"preset": "egnn_tiny", "max_atoms": 29}}
# Drums at their 8192 samples at 16 kHz: what the packaged drums feature network hears (hop 32: 256 positions).
AUDIO = {"data": {"name": "drums"},
         "model": {"preset": "wavenet_tiny", "length": 8192, "hop": 32, "num_classes": 5},
         "train": {"steps": 3, "batch_size": 4, "log_every": 1, "checkpoint_every": 3, "label_dropout": 0.1},
         "sample": {"n": 4, "steps": 2, "guidance": 2.0}}


def _trained(tmp_path_factory, name: str, tree: dict) -> Path:
    out = tmp_path_factory.mktemp(name) / "run"
    train(load_config(None, tree={**tree, "out": str(out)}), quiet=True)
    return out


@pytest.fixture(scope="module")
def molecule_run(tmp_path_factory):
    return _trained(tmp_path_factory, "molecules", MOLECULES)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    return _trained(tmp_path_factory, "videos", VIDEOS)


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    return _trained(tmp_path_factory, "audio", AUDIO)


def _checkpoint(run: Path) -> Path:
    return next((run / "checkpoints").glob("step_*"))


def _keys(report: dict) -> tuple[set, list[set]]:
    """The report's keys and each row's: what must stay as the scripts wrote them."""
    return set(report), [set(row) for row in report["rows"]]


def test_molecules_are_measured_beside_real_qm9_and_noise(molecule_run, capsys):
    """Samples, the first 8 QM9 test molecules and 8 noise molecules; the sampling options reach the sampler."""
    assert main(["eval", str(molecule_run), "--n", "8", "--sampler", "ddim", "--steps", "2", "--seed", "3"]) == 0
    assert "QM9 test" in capsys.readouterr().out
    ckpt = _checkpoint(molecule_run)
    report = json.loads((ckpt / "eval-ddim-2-n8.json").read_text())
    assert (report["n"], report["sampler"], report["steps"], report["seed"]) == (8, "ddim", 2, 3)
    samples, real, noise = report["rows"]
    assert [samples["set"], real["set"], noise["set"]] == ["samples", "QM9 test", "noise"]
    assert samples["molecules"] == real["molecules"] == noise["molecules"] == 8
    # EDM reports 99.0 % of real QM9 atoms stable (Hoogeboom et al. 2022, Table 2); these 8 molecules
    # (177 atoms) are all stable, all sanitize, all differ. Noise molecules are far below (0.19 at n = 500).
    assert real["atom_stability"] > 0.95 and real["validity"] == 1.0 and real["uniqueness"] == 1.0
    assert noise["atom_stability"] < 0.5 and noise["molecule_stability"] == 0.0
    assert len(read_xyz(ckpt / "eval-ddim-2-n8.xyz")) == 8 and Image.open(ckpt / "eval-ddim-2-n8.png").text["sampler"]
    assert _keys(report) == _keys(json.loads((FIGURES / "qm9_eval.json").read_text()))


def test_the_molecules_script_writes_what_eval_writes(molecule_run, tmp_path, monkeypatch):
    """scripts/molecules_eval.py is a wrapper of the same library: same options, same rows."""
    ckpt = _checkpoint(molecule_run)
    assert main(["eval", str(molecule_run), "--n", "6", "--steps", "2"]) == 0
    script = runpy.run_path(str(ROOT / "scripts" / "molecules_eval.py"))
    monkeypatch.setattr("sys.argv", ["molecules_eval.py", str(molecule_run), "--n", "6", "--steps", "2",
                                     "--out", str(tmp_path / "qm9")])
    script["main"]()
    ours, theirs = (json.loads(p.read_text()) for p in (ckpt / "eval-ddpm-2-n6.json", tmp_path / "qm9.json"))
    assert theirs["rows"] == ours["rows"] and _keys(theirs) == _keys(ours)
    assert (tmp_path / "qm9.xyz").is_file() and (tmp_path / "qm9.png").is_file()


def test_videos_are_measured_beside_real_test_videos_in_order_and_shuffled(video_run):
    assert main(["eval", str(video_run), "--n", "8"]) == 0
    ckpt = _checkpoint(video_run)
    report = json.loads((ckpt / "eval-heun-2-g2.0-n8.json").read_text())
    assert (report["n"], report["guidance"], report["steps"]) == (8, 2.0, 2)
    rows = {row["set"]: row for row in report["rows"]}
    assert list(rows) == ["samples", "real test", "samples, frames shuffled", "real test, frames shuffled"]
    assert all(row["videos"] == 8 and row["frames"] == 4 for row in rows.values())
    # A real video is a digit moving on a bouncing path, so the fitted path goes through its ink centres
    # up to rendering (0.0015 px at 32 px); shuffled in time, no such path does (only the identity and
    # the reversal of 24 orders keep one), while the per-frame measures cannot tell.
    assert rows["real test"]["trajectory_error"] < 0.05
    assert rows["real test, frames shuffled"]["trajectory_error"] > 0.05
    assert rows["real test, frames shuffled"]["FD[mnist-cnn, frames]"] == pytest.approx(
        rows["real test"]["FD[mnist-cnn, frames]"], rel=1e-6)
    assert Image.open(ckpt / "eval-heun-2-g2.0-n8.gif").n_frames == 4
    assert (ckpt / "eval-heun-2-g2.0-n8.png").is_file()
    assert _keys(report) == _keys(json.loads((FIGURES / "moving_mnist_eval.json").read_text()))


def test_shuffled_permutes_each_videos_own_frames():
    videos = torch.arange(6 * 5, dtype=torch.float32).reshape(6, 1, 5, 1, 1).expand(6, 1, 5, 2, 2)
    out = shuffled(videos, seed=1)
    assert torch.equal(out.sort(dim=2).values, videos)  # the same frames, each video its own
    assert not torch.equal(out, videos) and torch.equal(out, shuffled(videos, seed=1))


def test_audio_is_measured_beside_the_training_clips_and_white_noise(audio_run):
    assert main(["eval", str(audio_run), "--n", "5", "--guidance", "1.5"]) == 0
    ckpt = _checkpoint(audio_run)
    report = json.loads((ckpt / "eval-heun-2-g1.5-n5.json").read_text())
    assert (report["n"], report["guidance"], report["test_clips"]) == (5, 1.5, 72)
    samples, floor, noise = report["rows"]
    assert [samples["set"], floor["set"], noise["set"]] == ["samples", "training clips (floor)",
                                                             "white noise at the data's rms"]
    assert (samples["clips"], floor["clips"], noise["clips"]) == (5, 398, 5)
    # The network was trained on these clips (99.75 % right); noise at the same loudness is nothing
    # like a drum: its FD to the held-out kits is far above the training clips'.
    assert floor["accuracy[drums-melcnn]"] > 0.95 and noise["rms"] == pytest.approx(floor["rms"], rel=0.05)
    assert noise["FD[drums-melcnn]"] > 10 * floor["FD[drums-melcnn]"]
    x = Pipeline.load(audio_run).sample(5, guidance=1.5, seed=0)  # sample i shows class i, as eval drew it
    for i, name in enumerate(("kick", "snare", "hihat", "tom", "cymbal")):  # one clip of each class
        clip = read_wav(ckpt / f"eval-heun-2-g1.5-n5_{name}.wav", 16000)
        assert torch.allclose(clip, x[i].clamp(-1, 1), atol=2**-15), name  # 16-bit PCM, clipped as a DAC would
    assert (ckpt / "eval-heun-2-g1.5-n5.png").is_file() and (ckpt / "eval-heun-2-g1.5-n5.wav").is_file()
    docs = json.loads((FIGURES / "spoken_digits_eval.json").read_text().replace("spoken-digits-melcnn", "drums-melcnn"))
    assert _keys(report) == _keys(docs)


def test_an_audio_feature_network_must_hear_the_runs_clips(audio_run, monkeypatch, capsys):
    with pytest.raises(ValueError, match="hears 16000 samples at 16000 Hz; the run's clips are 8192 at 16000 Hz"):
        audio_features_for("spoken-digits", 16000, 8192)
    monkeypatch.setattr(Pipeline, "sample", _no_sampling)
    before = sorted(_checkpoint(audio_run).iterdir())
    assert main(["eval", str(audio_run), "--n", "5", "--features", str(packaged_path("spoken-digits"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hears 16000 samples" in err[0]
    assert sorted(_checkpoint(audio_run).iterdir()) == before


def _no_sampling(*args, **kwargs):
    raise AssertionError("sampled, though the options were refused")


@pytest.mark.parametrize("kind,argv,named", [
    ("molecule", ["--guidance", "2"], "--guidance (for image, audio and video runs) does not apply to molecule runs"),
    ("molecule", ["--features", "f.safetensors"], "--features (for image and audio runs)"),
    ("video", ["--metrics", "fd"], "--metrics (for image runs) does not apply to video runs"),
    ("video", ["--sweep", "--nll-n", "3"], "--nll-n (for image runs), --sweep (for image runs) do not apply"),
])
def test_options_that_do_not_apply_are_refused_before_loading(kind, argv, named, molecule_run, video_run,
                                                              monkeypatch, capsys):
    """One line naming the option and the kinds it applies to, exit 2, nothing loaded or written."""
    run = {"molecule": molecule_run, "video": video_run}[kind]
    monkeypatch.setattr(Pipeline, "load", _no_sampling)
    before = sorted(_checkpoint(run).iterdir())
    capsys.readouterr()
    assert main(["eval", str(run), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert sorted(_checkpoint(run).iterdir()) == before
