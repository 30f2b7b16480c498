"""A folder of image files, searched recursively, as one square uint8 ImageSet.

The folder is walked at any depth; names starting with "." (hidden files and folders) are left out, and
so is every file whose extension Pillow cannot open (notes.txt, ...). Links are followed: a symlinked
image is loaded under the link's own path (so its class is the folder holding the link), and a
symlinked folder is walked as if it were there, however often it is linked, except when it leads back
to a folder it sits in (a loop, as `find -L` reports it). Every entry is looked at with os.stat before
anything opens it, so nothing hangs or recurses for ever; these are skipped and listed:

    a link whose target does not exist                  -> "a dangling link"
    a link cycle, or a folder link back to an ancestor  -> "a symlink loop" ("a folder loop" if no
                                                           link does it, e.g. a bind mount)
    a FIFO, socket or device file with an image name    -> "not a regular file (FIFO)", ...
    a folder that cannot be listed                      -> "unreadable folder (Permission denied)"

(a broken link is listed when its name could be an image or a folder: an image extension, or none; a
FIFO or device file that does not have an image name is left out like notes.txt). Files are opened
non-blocking and checked again to be regular files, so one swapped for a FIFO meanwhile cannot hang.

Every image file is decoded in the order of its sorted relative path:

1. Open the header under the pixel limit: an image of more than `max_pixels` pixels is refused
   before it is decoded (Pillow's decompression-bomb check, with our limit and its warning as error).
2. Decode; JPEGs far larger than needed decode at 1/2, 1/4 or 1/8 scale (Pillow's `draft`).
3. Turn by the EXIF orientation, so photos stand as their camera meant.
4. Flatten to 8-bit grey ('L') or 'RGB':
       16-bit grey ('I;16', 'I')       -> 'L', value / 257 (65535 -> 255)
       32-bit float ('F')              -> 'L', value * 255 (0.0 -> 0, 1.0 -> 255; the usual [0, 1]
                                          range of float images), rounded, outside [0, 1] clipped;
                                          any NaN or Inf pixel: skipped, "non-finite pixel values"
       palette ('P', 'PA')             -> 'RGBA', then as below
       alpha ('LA', 'RGBA', 'La', ...) -> composited on a white or black `background`
       'CMYK', 'YCbCr', '1', 'L', ...  -> Pillow's conversion to the target mode
5. Scale the shorter side to `image_size` and centre-crop the longer one (Lanczos).

A file that cannot become an image (one of the entries in the first table, unreadable, not an image,
truncated or corrupt, over the pixel limit, non-finite float pixels, a mode Pillow cannot convert, or
outside a class folder when labels come from folders) is skipped, and all skipped files are reported
in ONE warning line: the count, the first few names and why. With `strict=True` the first such file, in
the sorted order, raises a ValueError naming it and the reason. An unreadable class folder still counts
as a class when labels come from folders, so the other classes keep their numbers. A root folder that
cannot be listed raises PermissionError.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

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
_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device", stat.S_IFDIR: "folder", stat.S_IFLNK: "symlink"}  # fmt: skip
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)


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
    entries = _walk(root)
    if not entries:
        raise ValueError(f"no image files under {root} (looked at any depth for .png, .jpg, .webp, ... files)")
    paths = [e.path for e in entries]
    relative = [p.relative_to(root) for p in paths]
    classes = {r.parts[0] for e, r in zip(entries, relative) if len(r.parts) > 1 or e.folder}  # an unreadable
    class_names = sorted(classes) if labels == "folders" else []  # class folder keeps its place in the labels
    class_index = {c: k for k, c in enumerate(class_names)}
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(paths), image_size, image_size, channels), np.uint8)  # (N, H, W, C), trimmed below
    targets, files, skipped = [], [], []
    quiet = True if len(paths) < PROGRESS_MIN_FILES else None  # None: tqdm shows itself only on a terminal
    progress = tqdm(paths, desc=f"decoding {root.name}", unit="img", disable=quiet)
    with _pixel_limit(max_pixels):
        for path, rel, entry in zip(progress, relative, entries):
            try:
                if entry.problem:
                    raise _Skip(entry.problem)
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
    """Regular files under root, at any depth, with an extension Pillow opens, by the walk in the module
    docstring (links followed, loops not); hidden files and folders left out."""
    return [e.path for e in _walk(Path(root)) if not e.problem]


class _Entry(NamedTuple):
    path: Path
    problem: str | None  # None: a regular file to decode; else why it is skipped
    folder: bool = False  # a folder that could not be listed


def _walk(root: Path) -> list[_Entry]:
    """Image files and unusable entries under root, sorted by relative path (see the module docstring).
    Only os.scandir and os.stat touch the entries: no file is opened here."""
    extensions = set(_extensions())
    found: list[_Entry] = []
    stack = [(root, (_identity(root, os.stat(root)),))]  # (folder, the folders it sits in and itself)
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as listing:
                names = [entry.name for entry in listing]
        except OSError as e:
            if folder == root:
                raise PermissionError(e.errno, f"image folder {root} cannot be listed ({e.strerror})") from e
            found.append(_Entry(folder, f"unreadable folder ({e.strerror})", folder=True))
            continue
        for name in names:
            if name.startswith("."):
                continue
            path = folder / name
            suffix = path.suffix.lower()
            try:
                info = os.stat(path)  # follows links; never opens
            except OSError as e:
                if suffix in extensions or not suffix:  # could have been an image or a folder
                    found.append(_Entry(path, _broken(path, e)))
                continue
            if stat.S_ISDIR(info.st_mode):
                identity = _identity(path, info)
                if identity in ancestors:
                    found.append(_Entry(path, "a symlink loop" if path.is_symlink() else "a folder loop"))
                else:
                    stack.append((path, (*ancestors, identity)))
            elif suffix in extensions:
                found.append(_Entry(path, None if stat.S_ISREG(info.st_mode) else _not_regular(info.st_mode)))
    return sorted(found, key=lambda e: e.path.relative_to(root).parts)


def _identity(path: Path, info: os.stat_result) -> tuple:
    """What tells two folders apart, links resolved: device and inode (the real path where no inode)."""
    return (info.st_dev, info.st_ino) if info.st_ino else (os.path.realpath(path),)


def _broken(path: Path, error: OSError) -> str:
    """Why os.stat failed on an entry the folder listing holds."""
    if error.errno == errno.ELOOP:
        return "a symlink loop"
    if error.errno in (errno.ENOENT, errno.ENOTDIR) and path.is_symlink():
        return "a dangling link"
    return f"unreadable ({error.strerror})"


def _not_regular(mode: int) -> str:
    return f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'special file')})"


def _open_regular(path: Path):
    """path opened for binary reading, if it is a regular file; non-blocking, so a FIFO cannot hang."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _Skip(_not_regular(mode))
        if _OPEN_FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _decode(path: Path, size: int, mode: str, background: str = "white") -> np.ndarray:
    """One file as (size, size) or (size, size, 3) uint8 (steps 2-5 above); raises _Skip with the reason."""
    try:
        with _open_regular(path) as file, Image.open(file) as source:
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
        if isinstance(e, OSError) and e.errno == errno.ELOOP:  # became a link loop after the walk
            raise _Skip("a symlink loop") from e
        raise _Skip(f"truncated or corrupt ({_short(e)})") from e


def _flatten(im: Image.Image, mode: str, background: str = "white") -> Image.Image:
    """Any Pillow image as 8-bit `mode` ('L' or 'RGB'), by the table in step 4 above."""
    if im.mode in _SIXTEEN_BIT:
        level = np.asarray(im).astype(np.float64) / 257  # 0..65535 -> 0..255
        im = Image.fromarray(np.clip(np.rint(level), 0, 255).astype(np.uint8))  # 'L'
    if im.mode == "F":
        values = np.asarray(im).astype(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            nan = int(np.isnan(values).sum())
            raise _Skip(f"non-finite pixel values ({nan} NaN, {values.size - int(finite.sum()) - nan} Inf)")
        im = Image.fromarray(np.clip(np.rint(values * 255), 0, 255).astype(np.uint8))  # [0, 1] -> 'L'
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
