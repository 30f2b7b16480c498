"""Feature networks for sample-quality metrics: small classifiers that unnoise trains itself.

No Inception or CLIP weights can be had offline, so each built-in data set gets a small CNN
classifier trained on its training split only; its penultimate layer gives the features in which
the Fréchet distance, KID and precision/recall are computed, and its logits classify conditional
samples. Every metric carries the network's name (`FD[fashion-mnist-cnn]`), never plain "FID":
numbers in different feature spaces are not comparable.

    image (B, C, S, S) in [-1, 1] -> 3 stages of (conv, group norm, SiLU) x 2, the first two
    halving H, W -> global mean -> linear -> SiLU = features (B, feature_dim) -> linear = logits

The weights ship in the package (`unnoise/weights/features-<data>.safetensors`, made by
`unnoise train-features`); training is deterministic, so the command re-creates them bit for bit
with the same seed, torch version and thread count (`--check` verifies it). For other data,
train one with the same command and pass it to `unnoise eval --features PATH`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from unnoise.data import DataConfig, load_dataset, padded_from
from unnoise.data.image_set import to_signed_unit
from unnoise.files import write_atomic

PACKAGED = ("mnist", "fashion-mnist", "emoji")  # data sets with shipped feature networks


@dataclass(frozen=True)
class FeatureConfig:
    data: str = "fashion-mnist"  # a built-in image set (its "train" split) or "folder"
    path: str | None = None  # folder: the image folder (its labels are its subfolders)
    image_size: int | None = None  # None: the data set's own
    channels: tuple[int, ...] = (32, 64, 96)  # widths of the three stages
    feature_dim: int = 128  # width of the penultimate layer: the metrics' feature space
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3  # AdamW peak, cosine decay to 0 after a 100-step warm-up
    weight_decay: float = 0.05
    shift: int = 2  # augmentation: random translation by up to this many pixels
    seed: int = 0
    limit: int | None = None  # use only the first `limit` training images (tiny configs in tests)

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or min(self.channels) < 4 or any(c % 4 for c in self.channels):
            raise ValueError(f"channels must be three widths, multiples of 4, got {self.channels}")
        for name in ("feature_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


class FeatureNet(nn.Module):
    """A small CNN classifier; `features` is its penultimate layer. Group norm: batch-independent."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, channels=(32, 64, 96),
                 feature_dim: int = 128):
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        layers, width = [], in_channels
        for stage, out in enumerate(channels):
            for _ in range(2):
                layers += [nn.Conv2d(width, out, 3, padding=1), nn.GroupNorm(4, out), nn.SiLU()]
                width = out
            if stage < len(channels) - 1:
                layers.append(nn.AvgPool2d(2))
        self.body = nn.Sequential(*layers)
        self.project = nn.Linear(width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def prepare(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> this network's channels and size."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"feature networks take images (B, 1 or 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            if self.in_channels == 1:  # RGB -> grey: ITU-R BT.601 luma
                x = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            else:
                x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x.float()

    def stage_maps(self, x: Tensor) -> list[Tensor]:
        """The feature maps at the end of each stage, (B, C_s, H_s, W_s): what a perceptual loss compares."""
        maps, h = [], self.prepare(x)
        for layer in self.body:
            if isinstance(layer, nn.AvgPool2d):
                maps.append(h)
            h = layer(h)
        return [*maps, h]

    def features(self, x: Tensor) -> Tensor:
        return F.silu(self.project(self.body(self.prepare(x)).mean((2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class LoadedFeatures:
    """A feature network with what the metrics need to know of it."""

    net: FeatureNet
    name: str  # e.g. "fashion-mnist-cnn": goes into every metric's name
    sha256: str  # of the weights file: part of every cached reference statistic's key
    info: dict  # the metadata saved with it (data, test accuracy, config, ...)
    crop: int | None = None  # inputs are a set of this native side padded larger: cut the border off first

    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
        """Features (N, feature_dim) float64 and logits (N, classes) float32 of images in [-1, 1]."""
        if images.ndim != 4:
            raise ValueError(f"feature networks take images (B, 1 or 3, H, W), got shape {tuple(images.shape)}")
        s, (h, w) = self.crop, images.shape[-2:]
        if s and h > s and w > s:
            # The inverse of data.image_set.fit_images' "pad": the border is the model's, not the data's,
            # and resizing the padded image would shrink every garment by 28/32 for the network.
            top, left = (h - s) // 2, (w - s) // 2
            images = images[..., top:top + s, left:left + s]
        device = next(self.net.parameters()).device
        feats, logits = [], []
        for i in range(0, images.shape[0], batch_size):
            f = self.net.features(images[i:i + batch_size].to(device))
            feats.append(f.double().cpu())
            logits.append(self.net.head(f).cpu())
        return torch.cat(feats), torch.cat(logits)


def _training_set(config: FeatureConfig, split: str):
    data = DataConfig(config.data, path=config.path, image_size=config.image_size, split=split,
                      labels="folders" if config.data == "folder" else "none")
    dataset = load_dataset(data)
    if dataset.modality != "image":
        raise ValueError(f"feature networks need an image data set, got {config.data!r}")
    if dataset.num_classes < 2:
        raise ValueError(f"{config.data!r} has {dataset.num_classes} classes; a feature network is trained as a "
                         "classifier and needs at least 2 (a folder: one subfolder per class)")
    return dataset


def _shifted(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Each image translated by its own random (dy, dx) in [-shift, shift], zero (= -1) filled."""
    if shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator)
    rows = (torch.arange(h) + offsets[:, :1])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w) + offsets[:, 1:])[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def train_feature_net(config: FeatureConfig, progress: bool = False) -> tuple[FeatureNet, dict]:
    """Train on the training split; returns the network and its metadata (test accuracy included).

    Deterministic: the initial weights, the data order and the augmentation all come from
    generators seeded with config.seed, so the same torch build and thread count give the same bits.
    """
    train_set = _training_set(config, "train")
    images, labels = train_set.images, train_set.labels
    if config.limit is not None:
        images, labels = images[:config.limit], labels[:config.limit]
    keep = labels >= 0
    images, labels = images[keep], labels[keep]
    with torch.random.fork_rng(devices=[]):  # the initial weights: nn.Module init draws from the global RNG
        torch.manual_seed(config.seed)
        net = FeatureNet(train_set.channels, train_set.image_size, train_set.num_classes, config.channels,
                         config.feature_dim)
    generator = torch.Generator().manual_seed(config.seed + 1)
    fit_classifier(net, images, labels, lambda batch: _shifted(to_signed_unit(batch), config.shift, generator),
                   config, generator, "feature net", progress)
    info = {
        "data": config.data, "classes": train_set.class_names, "train_images": int(len(labels)),
        "train_sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest(),
        "config": dataclasses.asdict(config), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if config.data != "folder":  # a folder has no test split: we report nothing rather than train accuracy
        info.update(_test_accuracy(net, config))
    return net, info


def fit_classifier(net: nn.Module, examples: Tensor, labels: Tensor, augment, config, generator: torch.Generator,
                   desc: str, progress: bool = False) -> None:
    """Train a classifier in place with cross-entropy: config.epochs passes over the examples in an order
    drawn from `generator`, each batch through augment(examples[idx]); AdamW (config.lr,
    config.weight_decay), a linear warm-up over a tenth of the steps (at most 100), then cosine decay
    to 0. Leaves the network in eval mode."""
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(labels) / config.batch_size)
    total = per_epoch * config.epochs
    warmup = max(1, min(100, total // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 1.0)
                                                 * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    bar = tqdm(total=total, desc=desc, disable=not progress)
    net.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            loss = F.cross_entropy(net(augment(examples[idx])), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    net.eval()


@torch.no_grad()
def _test_accuracy(net: FeatureNet, config: FeatureConfig) -> dict:
    test = _training_set(config, "test")
    logits = torch.cat([net(to_signed_unit(test.images[i:i + 1000])) for i in range(0, len(test), 1000)])
    accuracy = (logits.argmax(1) == test.labels).double().mean().item()
    return {"test_images": len(test), "test_accuracy": round(accuracy, 5)}


def save_feature_net(net: FeatureNet, info: dict, path: str | Path) -> Path:
    """Weights (float32) and metadata in one safetensors file, written atomically."""
    meta = {"unnoise.features": json.dumps({**info, "in_channels": net.in_channels, "image_size": net.image_size,
                                            "num_classes": net.num_classes}, sort_keys=True)}
    tensors = {k: v.detach().contiguous().float() for k, v in net.state_dict().items()}
    return write_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def packaged_path(data: str) -> Path:
    return Path(str(resources.files("unnoise") / "weights" / f"features-{data}.safetensors"))


def read_network(source: str | Path, packaged: tuple[str, ...], key: str, what: str) -> tuple[Path, dict]:
    """The file of a packaged network (by data set name) or a .safetensors path, and the metadata its
    safetensors header holds under `key`; `what` names the kind in messages ("feature network")."""
    path = packaged_path(str(source)) if str(source) in packaged else Path(source)
    if path.suffix != ".safetensors":
        raise ValueError(f"{what}s load from .safetensors files only, got {path}")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    with safe_open(str(path), "pt") as f:
        meta = (f.metadata() or {}).get(key)
    if meta is None:
        raise ValueError(f"{path} is not an unnoise {what} (no {key!r} metadata)")
    return path, json.loads(meta)


def load_feature_net(source: str | Path, device: torch.device | str = "cpu") -> LoadedFeatures:
    """A packaged network by data set name ("mnist", "fashion-mnist") or a .safetensors path."""
    path, info = read_network(source, PACKAGED, "unnoise.features", "feature network")
    cfg = info["config"]
    net = FeatureNet(info["in_channels"], info["image_size"], info["num_classes"], tuple(cfg["channels"]),
                     cfg["feature_dim"])
    net.load_state_dict(load_file(str(path)))
    net.eval().to(device)
    name = f"{info['data']}-cnn" if str(source) in PACKAGED else f"{path.stem}"
    return LoadedFeatures(net, name, hashlib.sha256(path.read_bytes()).hexdigest(), info)


def feature_net_for(data: str | DataConfig, features: str | Path | None = None, device="cpu") -> LoadedFeatures:
    """The feature network for evaluating a model trained on `data` (a data set name, or the run's
    DataConfig), or the one given. With a DataConfig that pads a built-in set larger (fit = "pad"),
    the network crops the border back off (unnoise.data.padded_from): the metrics see the data's own content."""
    data_name, padded = (data.name, padded_from(data)) if isinstance(data, DataConfig) else (data, None)
    if features is not None:
        return dataclasses.replace(load_feature_net(features, device), crop=padded)
    if data_name not in PACKAGED:
        raise ValueError(f"no packaged feature network for {data_name!r} (packaged: {', '.join(PACKAGED)}); "
                         "train one with `unnoise train-features --data folder --path DIR --out "
                         "feats.safetensors` and pass --features feats.safetensors")
    return dataclasses.replace(load_feature_net(data_name, device), crop=padded)
