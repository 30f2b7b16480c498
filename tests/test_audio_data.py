"""Audio data sets (drums, spoken and recorded digits), WAV files and the picture of clips.

The sets come from Debian packages CI installs (hydrogen-drumkits, espeak-ng, flite,
asterisk-core-sounds-en-wav); the first run builds the caches (~10 s drums, ~30 s spoken digits on
2 cores; 45 s on a busy machine), later runs read them.
"""

import numpy as np
import pytest
import soundfile
import torch

from unnoise.audio import read_wav, write_wav
from unnoise.data.audio import (
    DIGIT_WORDS,
    DRUM_CLASSES,
    DRUMKITS,
    ONSET,
    PEAK,
    TEST_KITS,
    drum_class,
    drum_files,
    drums,
    fit_clip,
    real_digits,
    render_take,
    spoken_digit_plan,
    spoken_digits,
)

QUANTUM = 1 / 32767  # clips are cached as 16-bit PCM


@pytest.fixture(scope="module")
def digits():
    return {split: spoken_digits(split) for split in ("train", "test", "all")}


@pytest.fixture(scope="module")
def kits():
    return {split: drums(split) for split in ("train", "test")}


def _check_clips(dataset, n, length, classes):
    assert dataset.modality == "audio" and dataset.sample_rate == 16000
    assert dataset.clips.shape == (n, 1, length) and dataset.clips.dtype == torch.float32
    assert dataset.class_names == list(classes) and len(dataset.sources) == n
    x, labels = dataset.batch(torch.arange(3))
    assert x.shape == (3, 1, length) and labels.dtype == torch.int64
    peaks = dataset.clips.abs().amax((1, 2))
    assert torch.allclose(peaks, torch.full_like(peaks, PEAK), atol=QUANTUM)  # peak-normalised, each clip
    # Leading silence is gone: the first sample already exceeds ONSET of the (uncut) peak >= the kept peak.
    assert (dataset.clips[:, 0, 0].abs() >= ONSET * PEAK - QUANTUM).all()


def test_spoken_digits_splits_hold_every_digit_and_disjoint_voices(digits):
    train, test = digits["train"], digits["test"]
    _check_clips(train, 1880, 16000, DIGIT_WORDS)
    _check_clips(test, 360, 16000, DIGIT_WORDS)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 188))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 36))
    train_voices, test_voices = set(train.sources), set(test.sources)
    assert not train_voices & test_voices  # the test is about voices never heard
    assert len(train_voices) == 76 + 3 and len(test_voices) == 12 + 1  # espeak-ng + flite voices
    assert {v.split(":")[0] for v in test_voices} == {"espeak-ng", "flite"}


def test_spoken_digits_are_the_plan_rendered_bit_for_bit(digits):
    takes, test = spoken_digit_plan(0)
    assert takes == spoken_digit_plan(0)[0] and takes != spoken_digit_plan(1)[0]  # the seed matters
    every = digits["all"]
    assert every.sources == [t.source for t in takes] and every.labels.tolist() == [t.digit for t in takes]
    for i in (0, 1, 1000, len(takes) - 1):  # espeak-ng and flite takes, rendered again now
        clip = np.round(render_take(takes[i], 16000, 16000) * 32767) / 32767
        assert torch.equal(torch.from_numpy(clip.astype(np.float32)), every.clips[i, 0]), takes[i]
    assert torch.equal(every.clips[torch.from_numpy(test)], digits["test"].clips)


def test_drums_hold_five_classes_with_whole_kits_held_out(kits):
    train, test = kits["train"], kits["test"]
    _check_clips(train, 398, 8192, DRUM_CLASSES)
    _check_clips(test, 72, 8192, DRUM_CLASSES)
    assert (torch.bincount(train.labels, minlength=5) >= 40).all()
    assert (torch.bincount(test.labels, minlength=5) >= 8).all()
    kit_of = {split: {s.split("/", 1)[0] for s in data.sources} for split, data in kits.items()}
    assert kit_of["test"] == set(TEST_KITS) and not kit_of["train"] & kit_of["test"]
    assert len(set(train.sources) | set(test.sources)) == 470  # one clip per file


def test_drums_are_their_files_prepared_again(kits):
    for i in (0, 200, 397):
        source, label = kits["train"].sources[i], kits["train"].labels[i].item()
        data, rate = soundfile.read(str(DRUMKITS / source), dtype="float64")
        clip = np.round(fit_clip(data, rate, 16000, 8192) * 32767) / 32767
        assert torch.equal(torch.from_numpy(clip.astype(np.float32)), kits["train"].clips[i, 0])
        assert (source.split("/", 1)[0], source, DRUM_CLASSES[label]) in drum_files()


@pytest.mark.parametrize("kit,name,cls", [
    ("BJA_Pacific", 'Kick (Tama Superstar 22")', "kick"), ("rumpf_kit_z01_h2", "c3 - bass drum 1", "kick"),
    ("ForzeeStereo", "Snare Rimshot", "snare"), ("BJA_Pacific", "Closed HH", "hihat"),
    ("The Black Pearl 1.0", "Sabian Hat Pedal", "hihat"), ("Millo_MultiLayered3", "tomhi2", "tom"),
    ("ForzeeStereo", "Crash/Ride Bell", "cymbal"), ("ForzeeStereo", "Zildjian Splash", "cymbal"),
    ("ForzeeStereo", "Cowbell", None), ("Gimme A Hand 1.0", "Clap", None), ("rumpf_kit_z01_h2",
    "Sample: beats_01-02.flac", None), ("Millo_MultiLayered2", "17", None), ("VariBreaks", "Custom", None),
    ("belofilms_GuitarStrums", "Snare", None)])
def test_drum_classes_follow_the_documented_rules(kit, name, cls):
    assert drum_class(kit, name) == cls


def test_fit_clip_trims_pads_and_normalises():
    x = np.concatenate([np.zeros(500), 0.001 * np.ones(10), np.linspace(0.5, -0.25, 100)])  # 0.001 < 2 % of 0.5
    clip = fit_clip(np.stack([x, x], 1), 16000, 16000, 256)  # stereo in, mono out
    assert clip.shape == (256,) and clip.dtype == np.float32
    assert clip[0] == pytest.approx(PEAK) and clip[99] == pytest.approx(-0.45) and not clip[100:].any()
    assert fit_clip(np.zeros(100), 8000, 16000, 256) is None  # silence: nothing to normalise


def test_real_digits_are_ten_recordings():
    real = real_digits()
    _check_clips(real, 10, 16000, DIGIT_WORDS)
    assert real.labels.tolist() == list(range(10))
    assert all(s.endswith(f"/{d}.wav") for d, s in enumerate(real.sources))


def test_bad_arguments_and_missing_packages_are_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="split must be one of train, test, all, got 'val'"):
        drums("val")
    with pytest.raises(ValueError, match="sample_rate must be an integer number of Hz in 1000..96000, got 100"):
        spoken_digits(sample_rate=100)
    with pytest.raises(ValueError, match=r"length must be an integer in 256..160000 samples \(10 s\), got 10"):
        drums(length=10)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        spoken_digits(seed=-1)
    with pytest.raises(ValueError, match="apt-get install hydrogen-drumkits"):
        drums(root=tmp_path)
    with pytest.raises(ValueError, match="apt-get install asterisk-core-sounds-en-wav"):
        real_digits(root=tmp_path)
    monkeypatch.setattr("unnoise.data.audio.shutil.which", lambda tool: None)
    with pytest.raises(ValueError, match="rendered by espeak-ng and flite: .*`apt-get install espeak-ng flite`"):
        spoken_digits()


def test_wav_round_trip_and_resampling(tmp_path):
    t = torch.arange(8000) / 8000
    clip = 0.8 * torch.sin(2 * torch.pi * 440 * t).unsqueeze(0)  # (1, L) at 8 kHz
    path = write_wav(clip, tmp_path / "tone.wav", 8000)
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (8000, 1, "PCM_16", "WAV")
    back = read_wav(path, 8000)
    assert back.shape == (1, 8000) and (back - clip).abs().max() <= 0.5 / 32768 + 1e-7  # 16-bit rounding
    up = read_wav(path, 16000)[0]  # upsampled: the same tone at twice the samples
    assert up.shape == (16000,) and torch.fft.rfft(up).abs().argmax().item() == 440
    loud = write_wav(torch.tensor([2.0, -3.0, 0.5]), tmp_path / "loud.wav", 8000)
    assert read_wav(loud, 8000)[0].tolist() == [32767 / 32768, -1.0, 0.5]  # clipped
    with pytest.raises(ValueError, match=r"a clip is \(1, L\) or \(L,\)"):
        write_wav(torch.zeros(2, 10), tmp_path / "two.wav", 8000)


def test_plot_audio_writes_a_png(tmp_path, kits):
    from unnoise.audio import plot_audio

    path = plot_audio(kits["test"].clips[:5], tmp_path / "clips.png", 16000, columns=3,
                      metadata={"data": "drums"})
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as image:
        assert image.text["data"] == "drums" and image.width > image.height
    with pytest.raises(ValueError, match=r"expected clips of shape \(N, 1, L\)"):
        plot_audio(torch.zeros(2, 100), tmp_path / "bad.png", 16000)
