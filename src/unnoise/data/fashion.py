"""Fashion-MNIST (Xiao et al. 2017) from Debian's `dataset-fashion-mnist` package, and the IDX format.

The package installs four gzip-compressed IDX files in /usr/share/datasets/fashion-mnist/:

    train-images-idx3-ubyte.gz   60000 x 28 x 28 uint8, magic 2051
    train-labels-idx1-ubyte.gz   60000 uint8 labels,    magic 2049
    t10k-images-idx3-ubyte.gz    10000 x 28 x 28 uint8, magic 2051
    t10k-labels-idx1-ubyte.gz    10000 uint8 labels,    magic 2049

Pixels are 0..255 with the garment bright on a black (0) background; labels are 0..9, 6000 per class
in train and 1000 per class in test.

IDX (LeCun et al., the MNIST file format): a big-endian header of two zero bytes, a type byte
(0x08 = uint8, ..., 0x0E = float64), a byte giving the number of dimensions d, then d big-endian
uint32 sizes, then the values in row-major order. Read as one big-endian uint32, the magic number
of a uint8 file is 0x0800 + d: 2049 for the label vectors, 2051 for the image stacks.

Captions (captions=True, for text-to-image training): each image gets all FASHION_TEMPLATES filled
with its class's FASHION_NAMES entry and an article ("a photo of an ankle boot"), one drawn per step.
FASHION_HELDOUT_PROMPTS are 3 prompts per class that training never sees: other templates AND
other words ("a picture of a jumper"), to test whether a model learned the words or the strings.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from unnoise.data.captions import Captions, class_captions, with_article
from unnoise.data.image_set import ImageSet, grey_image_set

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Captions: plain-English nouns per class, and the templates training fills with "a/an noun".
FASHION_NAMES = (
    "t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
FASHION_TEMPLATES = (
    "a photo of {}", "{}", "a black and white photo of {}", "{} on a black background",
    "a small picture of {}", "an image of {}", "a grayscale photo of {}", "a product photo of {}",
)
# Held out: prompt j of every class is _HELDOUT_TEMPLATES[j] filled with its j-th synonym.
_HELDOUT_TEMPLATES = ("a picture of {}", "a close-up of {}", "a snapshot of {}")
_HELDOUT_SYNONYMS = (
    ("tee", "short-sleeved top", "tank top"),
    ("pair of pants", "pair of jeans", "pair of slacks"),
    ("jumper", "sweater", "knitted top"),
    ("gown", "frock", "sundress"),
    ("jacket", "overcoat", "parka"),
    ("flip-flop", "open-toed shoe", "strappy summer shoe"),
    ("blouse", "button-down", "long-sleeved blouse"),
    ("trainer", "running shoe", "sports shoe"),
    ("handbag", "purse", "tote"),
    ("boot", "bootie", "short leather boot"),
)
FASHION_HELDOUT_PROMPTS: tuple[tuple[str, int], ...] = tuple(
    (template.format(with_article(word)), label)
    for label, words in enumerate(_HELDOUT_SYNONYMS)
    for template, word in zip(_HELDOUT_TEMPLATES, words)
)  # (prompt, class) pairs, 3 per class, none of them a training caption

SPLITS = {"train": ("train",), "test": ("t10k",), "all": ("train", "t10k")}
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a numpy array of its declared type and shape."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4)) if ndim else ()
    expected = header + dtype.itemsize * int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header declares shape {shape} ({expected} bytes), file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_part(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")  # (N, 28, 28)
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")  # (N,)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: {prefix} files hold images {images.shape} and labels {labels.shape}")
    return images, labels


def fashion_mnist(
    split: str = "train",
    image_size: int | None = None,
    channels: int = 1,
    fit: str = "pad",
    root: str | Path | None = None,
    captions: bool = False,
) -> ImageSet:
    """Fashion-MNIST's train (60000), test (10000) or all (70000) images, 28x28 or `image_size`;
    with `captions`, each image's FASHION_TEMPLATES captions attached."""
    if split not in SPLITS:
        raise ValueError(f"fashion-mnist split must be one of {sorted(SPLITS)}, got {split!r}")
    root = FASHION_DIR if root is None else Path(root)
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root}: install Debian's package with "
            "`apt-get install dataset-fashion-mnist` (as root), or pass the folder of its IDX files"
        )
    parts = [_read_part(root, prefix) for prefix in SPLITS[split]]
    images = np.concatenate([p[0] for p in parts])  # (N, 28, 28)
    labels = np.concatenate([p[1] for p in parts])  # (N,)
    return grey_image_set(
        images, labels, name="fashion-mnist", class_names=FASHION_CLASSES,
        image_size=image_size, channels=channels, fit=fit, captions=fashion_captions(labels) if captions else None,
    )


def fashion_captions(labels: np.ndarray) -> Captions:
    """Captions of Fashion-MNIST images with these labels (N,): ids (N, 8), texts[1 + 8 c + t]."""
    return class_captions(torch.from_numpy(labels.astype(np.int64)), [with_article(n) for n in FASHION_NAMES],
                          FASHION_TEMPLATES)
