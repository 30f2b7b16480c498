"""Feature networks for audio metrics: small log-mel CNN classifiers that unnoise trains itself.

The audio counterpart of unnoise.features: for each built-in audio set a classifier is trained on its
training split only, and its penultimate layer gives the features in which the Fréchet distance of
generated clips is computed (named `FD[spoken-digits-melcnn]`, never "FAD": the feature space is ours).
The network is the image FeatureNet run on a clip's log-mel spectrogram as a one-channel picture:

    clip (B, 1, L) -> log_mel (B, 1, n_mels, 1 + L // hop) -> standardised with the training set's
    mean and std -> FeatureNet body (3 stages of conv/group norm/SiLU x 2) -> mean over mel x time
    -> linear -> SiLU = features (B, feature_dim) -> linear = logits

Training augments each clip with a random time shift (up to `shift` seconds either way, zero filled)
and a random gain (uniform in `gain_db`), so the network hears words and hits wherever and however
loud they are, and is scored on voices or kits it never heard (the data sets' test splits).
Deterministic: seeded initial weights, data order and augmentation, as in unnoise.features.

    net, info = train_audio_features("spoken-digits")          # a few CPU minutes
    feats = load_audio_features("spoken-digits")               # the shipped weights
    features, logits = feats.embed(clips)                      # (N, 1, L) -> (N, D) float64, (N, 10)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from unnoise.audio import log_mel
from unnoise.data.audio import AudioSet, drums, real_digits, spoken_digits
from unnoise.features import FeatureNet, fit_classifier, packaged_path, read_network
from unnoise.files import write_atomic
from unnoise.metrics import frechet_distance, gaussian_stats

AUDIO_PACKAGED = ("spoken-digits", "drums")  # audio sets with shipped feature networks
_LOADERS = {"spoken-digits": spoken_digits, "drums": drums}
META_KEY = "unnoise.audio_features"  # the safetensors metadata entry holding the network's description


@dataclass(frozen=True)
class AudioFeatureConfig:
    data: str = "spoken-digits"  # one of AUDIO_PACKAGED (its "train" split)
    sample_rate: int = 16000  # Hz of the clips
    length: int = 16000  # samples per clip
    n_fft: int = 512  # log-mel frame length (32 ms at 16 kHz)
    hop: int = 256  # log-mel hop: 63 frames a second of audio at 16 kHz
    n_mels: int = 40  # mel bands from 0 Hz to sample_rate / 2
    channels: tuple[int, ...] = (16, 32, 48)  # widths of FeatureNet's three stages
    feature_dim: int = 128  # width of the penultimate layer: the metrics' feature space
    epochs: int = 30  # spoken digits: 30 (15 gave 98.6 % on held-out voices, 30 gave 100 %)
    batch_size: int = 64
    lr: float = 3e-3  # AdamW peak, cosine decay to 0 after a warm-up of a tenth of the steps (<= 100)
    weight_decay: float = 0.05
    shift: float = 0.1  # augmentation: random time shift of up to this many seconds either way
    gain_db: tuple[float, float] = (-20.0, 0.0)  # augmentation: random gain range in dB
    seed: int = 0
    limit: int | None = None  # use only the first `limit` training clips (tiny configs in tests)

    def __post_init__(self) -> None:
        if self.data not in AUDIO_PACKAGED:
            raise ValueError(f"audio feature networks train on {', '.join(AUDIO_PACKAGED)}, got {self.data!r}")
        if len(self.channels) != 3 or min(self.channels) < 4 or any(c % 4 for c in self.channels):
            raise ValueError(f"channels must be three widths, multiples of 4, got {self.channels}")
        for name in ("feature_dim", "epochs", "batch_size", "n_mels", "hop"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.shift >= 0 and self.gain_db[0] <= self.gain_db[1]):
            raise ValueError(f"need shift >= 0 and gain_db = (low, high) with low <= high, got {self.shift}, "
                             f"{self.gain_db}")


def audio_feature_config(data: str, **overrides) -> AudioFeatureConfig:
    """The preset the shipped network of `data` was trained with (then `overrides`)."""
    # Drums: half-second clips (33 frames) and 7 steps an epoch, so 200 epochs: in trials 60 epochs left even
    # the training clips under-fit (86 % right) and 300 did no better on the held-out kits.
    presets = {"spoken-digits": {}, "drums": {"length": 8192, "epochs": 200}}
    if data not in presets:
        raise ValueError(f"audio feature networks train on {', '.join(AUDIO_PACKAGED)}, got {data!r}")
    return AudioFeatureConfig(**{"data": data, **presets[data], **overrides})


class AudioFeatureNet(FeatureNet):
    """FeatureNet on standardised log-mel spectrograms: `prepare` turns clips (B, 1, L) into its picture."""

    def __init__(self, config: AudioFeatureConfig, num_classes: int):
        super().__init__(1, config.n_mels, num_classes, config.channels, config.feature_dim)
        self.sample_rate, self.length = config.sample_rate, config.length
        self.n_fft, self.hop, self.n_mels = config.n_fft, config.hop, config.n_mels
        # The training set's log-mel mean and std, so the first convolution sees values near unit scale.
        self.register_buffer("mel_mean", torch.zeros(()))
        self.register_buffer("mel_std", torch.ones(()))

    def spectrogram(self, x: Tensor) -> Tensor:
        """Clips (B, 1, L) -> log-mel (B, 1, n_mels, 1 + L // hop), unstandardised."""
        if x.ndim != 3 or x.shape[1] != 1 or x.shape[2] != self.length:
            raise ValueError(f"this audio feature network takes clips (B, 1, {self.length}), got shape "
                             f"{tuple(x.shape)}")
        return log_mel(x.float(), self.sample_rate, self.n_fft, self.hop, self.n_mels)

    def prepare(self, x: Tensor) -> Tensor:
        return (self.spectrogram(x) - self.mel_mean) / self.mel_std


@dataclass
class LoadedAudioFeatures:
    """An audio feature network with what the metrics need to know of it."""

    net: AudioFeatureNet
    name: str  # e.g. "spoken-digits-melcnn": goes into every metric's name
    sha256: str  # of the weights file
    info: dict  # the metadata saved with it (data, accuracies, config, ...)

    @torch.no_grad()
    def embed(self, clips: Tensor, batch_size: int = 250) -> tuple[Tensor, Tensor]:
        """Features (N, feature_dim) float64 and logits (N, classes) float32 of clips (N, 1, L) in [-1, 1]."""
        device = next(self.net.parameters()).device
        feats, logits = [], []
        for i in range(0, clips.shape[0], batch_size):
            f = self.net.features(clips[i:i + batch_size].to(device))
            feats.append(f.double().cpu())
            logits.append(self.net.head(f).cpu())
        return torch.cat(feats), torch.cat(logits)


def augment(x: Tensor, config: AudioFeatureConfig, generator: torch.Generator) -> Tensor:
    """Clips (B, 1, L), each shifted in time by its own whole number of samples, at most config.shift
    seconds either way (zero filled), and scaled by its own gain, uniform in config.gain_db (dB)."""
    b, _, length = x.shape
    max_shift = round(config.shift * config.sample_rate)
    padded = F.pad(x[:, 0], (max_shift, max_shift))  # (B, L + 2 S)
    starts = torch.randint(0, 2 * max_shift + 1, (b, 1), generator=generator)  # S - shift
    shifted = padded.gather(1, starts + torch.arange(length))  # (B, L)
    low, high = config.gain_db
    db = low + (high - low) * torch.rand(b, 1, generator=generator)
    return (shifted * 10 ** (db / 20)).unsqueeze(1)  # (B, 1, L)


def _split(config: AudioFeatureConfig, split: str) -> AudioSet:
    return _LOADERS[config.data](split, config.sample_rate, config.length)


def train_audio_features(config: AudioFeatureConfig | str = "spoken-digits",
                         progress: bool = False) -> tuple[AudioFeatureNet, dict]:
    """Train on the training split (a data set name: its preset); returns the network and its metadata,
    test accuracy, the train/test Fréchet distance and (spoken digits) the recorded digits included."""
    config = audio_feature_config(config) if isinstance(config, str) else config
    train_set = _split(config, "train")
    clips, labels = train_set.clips[:config.limit], train_set.labels[:config.limit]
    with torch.random.fork_rng(devices=[]):  # nn.Module init draws from the global RNG
        torch.manual_seed(config.seed)
        net = AudioFeatureNet(config, train_set.num_classes)
    with torch.no_grad():
        mels = torch.cat([net.spectrogram(clips[i:i + 256]) for i in range(0, len(clips), 256)])
        net.mel_mean.fill_(mels.mean().item())
        net.mel_std.fill_(mels.std().item())
    generator = torch.Generator().manual_seed(config.seed + 1)
    fit_classifier(net, clips, labels, lambda batch: augment(batch, config, generator), config, generator,
                   f"audio feature net ({config.data})", progress)
    info = {
        "data": config.data, "classes": train_set.class_names, "train_clips": int(len(labels)),
        "train_sha256": hashlib.sha256(clips.numpy().tobytes()).hexdigest(),
        "config": dataclasses.asdict(config), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    info.update(evaluate_audio_features(LoadedAudioFeatures(net, f"{config.data}-melcnn", "", info), clips))
    return net, info


def evaluate_audio_features(feats: LoadedAudioFeatures, train_clips: Tensor | None = None) -> dict:
    """Test accuracy on the held-out split, the Fréchet distance between the train and test splits'
    features (the floor a generator's FD against the test split can be compared with) and, for spoken
    digits, how many of the 10 recorded digits (unnoise.data.audio.real_digits) it names right."""
    config = _config_of(feats.info)
    test = _split(config, "test")
    test_feats, logits = feats.embed(test.clips)
    train_feats, _ = feats.embed(_split(config, "train").clips if train_clips is None else train_clips)
    out = {"test_clips": len(test), "test_accuracy": round((logits.argmax(1) == test.labels).double().mean().item(), 5),
           "fd_train_test": round(frechet_distance(*gaussian_stats(train_feats), *gaussian_stats(test_feats)), 4)}
    if config.data == "spoken-digits":
        real = real_digits(config.sample_rate, config.length)
        out["real_digits_correct"] = int((feats.embed(real.clips)[1].argmax(1) == real.labels).sum())
    return out


def _config_of(info: dict) -> AudioFeatureConfig:
    """The config a network was trained with, from its metadata (JSON lists back to tuples)."""
    cfg = info["config"]
    return AudioFeatureConfig(**{**cfg, "channels": tuple(cfg["channels"]), "gain_db": tuple(cfg["gain_db"])})


def save_audio_features(net: AudioFeatureNet, info: dict, path: str | Path) -> Path:
    """Weights (float32) and metadata in one safetensors file, written atomically."""
    meta = {META_KEY: json.dumps({**info, "num_classes": net.num_classes}, sort_keys=True)}
    tensors = {k: v.detach().contiguous().float() for k, v in net.state_dict().items()}
    return write_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_audio_features(source: str | Path, device: torch.device | str = "cpu") -> LoadedAudioFeatures:
    """A packaged network by data set name ("spoken-digits", "drums") or a .safetensors path."""
    path, info = read_network(source, AUDIO_PACKAGED, META_KEY, "audio feature network")
    net = AudioFeatureNet(_config_of(info), info["num_classes"])
    net.load_state_dict(load_file(str(path)))
    net.eval().to(device)
    name = f"{info['data']}-melcnn" if str(source) in AUDIO_PACKAGED else path.stem
    return LoadedAudioFeatures(net, name, hashlib.sha256(path.read_bytes()).hexdigest(), info)


def write_packaged(data: str, progress: bool = True) -> Path:
    """Train `data`'s preset and write it where load_audio_features(data) finds it."""
    return save_audio_features(*train_audio_features(data, progress), packaged_path(data))
