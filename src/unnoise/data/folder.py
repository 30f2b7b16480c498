"""A folder of image files, searched recursively, as one square uint8 ImageSet.

Every file whose extension Pillow can open (PNG, JPEG, WebP, GIF, BMP, TIFF, ...) is decoded in the
order of its sorted relative path:

1. Open the header under the pixel limit: an image of more than `max_pixels` pixels is refused
   before it is decoded (Pillow's decompression-bomb check, with our limit and its warning as error).
2. Decode; JPEGs far larger than needed decode at 1/2, 1/4 or 1/8 scale (Pillow's `draft`).
3. Turn by the EXIF orientation, so photos stand as their camera meant.
4. Flatten to 8-bit grey ('L') or 'RGB':
       16-bit grey ('I;16', 'I')       -> 'L', value / 257 (65535 -> 255)
       palette ('P', 'PA')             -> 'RGBA', then as below
       alpha ('LA', 'RGBA', 'La', ...) -> composited on a white or black `background`
       'CMYK', 'YCbCr', '1', 'L', ...  -> Pillow's conversion to the target mode
5. Scale the shorter side to `image_size` and centre-crop the longer one (Lanczos).

A file that cannot become an image (unreadable, not an image, truncated or corrupt, over the pixel
limit, a mode Pillow cannot convert, or outside a class folder when labels come from folders) is
skipped, and all skipped files are reported in ONE warning line: the count, the first few names
and why. With `strict=True` the first such file raises a ValueError naming it and the reason.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from unnoise.data.image_set import ImageSet

LABEL_MODES = ("none", "folders")
BACKGROUNDS = ("white", "black")
DEFAULT_MAX_PIXELS = 1 << 26  # 8192 x 8192
PROGRESS_MIN_FILES = 1000  # show a progress bar (on a terminal) from this many files on
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)  # what Pillow raises on bad data


class _Skip(Exception):
    """A file that cannot become an image; str() is the reason."""


class FolderSet(ImageSet):
    """An ImageSet that remembers where its images came from and which files it left out."""

    def __init__(self, images, labels, *, name, class_names, root: Path, files: list[str], skipped):
        super().__init__(images, labels, name=name, class_names=class_names)
        self.root = root
        self.files = files  # relative path of each loaded image, in dataset order
        self.skipped: list[tuple[str, str]] = skipped  # (relative path, reason) of each file left out


def load_folder(
    root: str | Path,
    image_size: int = 64,
    channels: int = 3,
    labels: str = "none",
    strict: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: str = "white",
) -> FolderSet:
    """All images under `root` as (N, channels, image_size, image_size); labels from the sorted names of
    the immediate subfolders if labels="folders", else -1. max_pixels=None lifts the pixel limit."""
    _check_options(image_size, channels, labels, max_pixels, background)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    paths = image_files(root)
    if not paths:
        raise ValueError(f"no image files under {root} (looked at any depth for .png, .jpg, .webp, ... files)")
    relative = [p.relative_to(root) for p in paths]
    class_names = sorted({r.parts[0] for r in relative if len(r.parts) > 1}) if labels == "folders" else []
    class_index = {c: k for k, c in enumerate(class_names)}
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(paths), image_size, image_size, channels), np.uint8)  # (N, H, W, C), trimmed below
    targets, files, skipped = [], [], []
    quiet = True if len(paths) < PROGRESS_MIN_FILES else None  # None: tqdm shows itself only on a terminal
    progress = tqdm(paths, desc=f"decoding {root.name}", unit="img", disable=quiet)
    with _pixel_limit(max_pixels):
        for path, rel in zip(progress, relative):
            try:
                if labels == "folders" and len(rel.parts) < 2:
                    raise _Skip("not inside a class folder")
                out[len(files)] = _decode(path, image_size, mode, background).reshape(out.shape[1:])
            except _Skip as skip:
                if strict:
                    raise ValueError(f"{path}: {skip}") from skip
                skipped.append((rel.as_posix(), str(skip)))
                continue
            files.append(rel.as_posix())
            targets.append(class_index[rel.parts[0]] if labels == "folders" else -1)
    if not files:
        raise ValueError(f"none of the {len(paths)} image files could be loaded; {_summary(root, skipped, len(paths))}")
    if skipped:
        warnings.warn(_summary(root, skipped, len(paths)), stacklevel=2)
    images = torch.from_numpy(out[: len(files)]).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return FolderSet(
        images, torch.tensor(targets), name=root.resolve().name, class_names=class_names,
        root=root, files=files, skipped=skipped,
    )


def image_files(root: Path) -> list[Path]:
    """Files under root, at any depth, with an extension Pillow opens; hidden files and folders left out."""
    extensions = set(_extensions())
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in extensions and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _decode(path: Path, size: int, mode: str, background: str = "white") -> np.ndarray:
    """One file as (size, size) or (size, size, 3) uint8 (steps 2-5 above); raises _Skip with the reason."""
    try:
        with open(path, "rb") as file, Image.open(file) as source:
            source.draft(None, (size, size))  # JPEG only: smallest scale with both sides still >= size
            source.load()
            ImageOps.exif_transpose(source, in_place=True)
            im = _flatten(source, mode, background)
            return np.asarray(ImageOps.fit(im, (size, size), Image.Resampling.LANCZOS))
    except Image.UnidentifiedImageError as e:
        raise _Skip("not an image Pillow can read") from e
    except (PermissionError, IsADirectoryError, FileNotFoundError) as e:
        raise _Skip(f"unreadable ({e.strerror})") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _Skip(f"over the pixel limit of {Image.MAX_IMAGE_PIXELS}") from e
    except _DECODE_ERRORS as e:
        raise _Skip(f"truncated or corrupt ({_short(e)})") from e


def _flatten(im: Image.Image, mode: str, background: str = "white") -> Image.Image:
    """Any Pillow image as 8-bit `mode` ('L' or 'RGB'), by the table in step 4 above."""
    if im.mode in _SIXTEEN_BIT:
        level = np.asarray(im).astype(np.float64) / 257  # 0..65535 -> 0..255
        im = Image.fromarray(np.clip(np.rint(level), 0, 255).astype(np.uint8))  # 'L'
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # a palette may carry transparency
    if im.mode in ("La", "RGBa"):
        im = im.convert(im.mode[:-1] + "A")  # undo premultiplied alpha
    if im.mode in ("LA", "RGBA"):
        flat = Image.new(im.mode[:-1], im.size, background)
        flat.paste(im.convert(flat.mode), mask=im.getchannel("A"))
        im = flat
    if im.mode != mode:
        try:
            im = im.convert(mode)
        except ValueError as e:
            raise _Skip(f"mode {im.mode} cannot be converted to {mode}") from e
    return im


@contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow refuses images over `max_pixels` while inside. It keeps its limit in a module global,
    so this is not thread-safe; the old limit is restored on the way out."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: an error, not 2x
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _summary(root: Path, skipped: list[tuple[str, str]], total: int, shown: int = 5) -> str:
    named = "; ".join(f"{path} ({reason})" for path, reason in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} of {total} image files under {root}: {named}{more}"


def _short(error: Exception, limit: int = 80) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _extensions() -> list[str]:
    """File extensions of the formats Pillow can open, e.g. '.png', '.jpg', '.webp'."""
    registered = Image.registered_extensions()  # extension -> format, both openers and savers
    return sorted(ext for ext, fmt in registered.items() if fmt in Image.OPEN)


def _check_options(image_size, channels, labels, max_pixels, background) -> None:
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1 or None, got {max_pixels}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
