"""Colour emoji from Debian's `fonts-noto-color-emoji`, captioned by their Unicode names.

A small text-to-image set with one caption per image ("red apple", "grinning face with smiling
eyes"), rendered from the font once and cached. Which characters, in code-point order:

    every single code point in the font's cmap (read with fontTools) that Python's `unicodedata`
    names, except: ASCII (space, digits, '#', '*' are keycap bases, not pictures); regional
    indicator letters U+1F1E6..1F1FF (a flag is a PAIR of them); format characters (ZWJ, tags),
    combining marks (variation selectors, the keycap combiner) and modifier symbols (the five skin
    tones); and any glyph that renders blank or nearly uniform (pixel std < UNIFORM_STD).

With font 2.042 (Debian 12) and Python 3.11 (Unicode 14.0) that leaves 1361 emoji; the font's
Unicode 15 emoji have no name in Python 3.11's `unicodedata` and are left out, so the count
follows the Python version (which is part of the cache key).

Each glyph is drawn by Pillow at the font's only bitmap size (STRIKE_PX, a CBDT colour bitmap;
FreeType refuses other sizes) with embedded_color=True, cropped to its opaque box, centred in a
square of `background`, composited (alpha), and resized with Lanczos to image_size: RGB uint8.

Labels: the Unicode emoji group of each (emoji-test.txt from Debian's unicode-data: 8 groups such as
"Food & Drink"), so a feature network can be trained and samples classified.

Splits: "test" is every tenth emoji in code-point order (rows 9, 19, 29, ...; ~10%), "train" the
rest, "all" both. Test captions are never trained on: they are the held-out prompts.

Cache: `cache_folder()/emoji-<size>px-<background>-unicode<version>-<font sha256[:16]>.npz`
holding images, code points and captions, written atomically; later loads only read it.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path

import numpy as np
import torch

from unnoise.data.captions import Captions
from unnoise.data.folder import BACKGROUNDS
from unnoise.data.image_set import ImageSet
from unnoise.files import write_atomic

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_PACKAGE = "fonts-noto-color-emoji"  # the Debian package that installs EMOJI_FONT
STRIKE_PX = 109  # the font's one bitmap strike; its glyphs are drawn within 136 x 128 px
UNIFORM_STD = 4.0  # glyphs whose pixel std (0..255) is lower are dropped as blank; none in 2.042 (min ~13)
TEST_EVERY = 10  # row i (in code-point order) is test when i % TEST_EVERY == TEST_EVERY - 1
SPLITS = ("train", "test", "all")


EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")  # Debian's unicode-data: the emoji groups
GROUPS_PACKAGE = "unicode-data"
# Unicode's emoji groups as classes; its two small ones folded in: "Component" (4 hair styles) into
# People & Body, "Flags" (5 single-code-point flags) into Symbols.
EMOJI_GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                "Activities", "Objects", "Symbols")
_FOLDED = {"Component": "People & Body", "Flags": "Symbols"}


class EmojiSet(ImageSet):
    """An ImageSet of emoji that also knows each image's code point; labels are Unicode emoji groups."""

    def __init__(self, images, labels, captions: Captions, code_points: list[int]):
        super().__init__(images, labels, name="emoji", captions=captions, class_names=EMOJI_GROUPS)
        self.code_points = code_points  # row i is chr(code_points[i])


def emoji_groups(code_points, path: Path = EMOJI_TEST) -> torch.Tensor:
    """The EMOJI_GROUPS index of each code point, from emoji-test.txt's "# group:" headings (its
    single-code-point lines, a trailing FE0F variation selector ignored); -1 where none is listed."""
    if not Path(path).is_file():
        raise ValueError(f"emoji groups come from {path}: install Debian's package with "
                         f"`apt-get install {GROUPS_PACKAGE}` (as root)")
    group, index = None, {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and ";" in line:
            points = [p for p in line.split(";")[0].split() if p != "FE0F"]
            if len(points) == 1:
                index.setdefault(int(points[0], 16), EMOJI_GROUPS.index(_FOLDED.get(group, group)))
    return torch.tensor([index.get(int(c), -1) for c in code_points], dtype=torch.int64)


def cache_folder() -> Path:
    """Where built data sets are cached: $UNNOISE_CACHE if set, else ~/.cache/unnoise."""
    return Path(os.environ.get("UNNOISE_CACHE") or Path.home() / ".cache" / "unnoise")


def emoji_set(
    split: str = "train", image_size: int = 32, background: str = "white", font: str | Path | None = None,
) -> EmojiSet:
    """The emoji of `split` as (N, 3, image_size, image_size) RGB with their lower-cased Unicode names as
    captions (texts[i + 1] is image i's); labels -1. Built from `font` (default EMOJI_FONT) on first use."""
    if split not in SPLITS:
        raise ValueError(f"emoji split must be one of {', '.join(SPLITS)}, got {split!r}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    font = Path(font or EMOJI_FONT)
    if not font.is_file():
        raise ValueError(
            f"emoji font {font} not found: install Debian's package with `apt-get install {EMOJI_PACKAGE}` "
            "(as root), or pass the path of NotoColorEmoji.ttf"
        )
    digest = hashlib.sha256(font.read_bytes()).hexdigest()[:16]  # ~15 ms for the 11 MB font
    path = cache_folder() / f"emoji-{image_size}px-{background}-unicode{unicodedata.unidata_version}-{digest}.npz"
    if not path.is_file():
        code_points, images, names = render_emoji(font, image_size, background)
        write_atomic(path, lambda tmp: np.savez_compressed(
            tmp, images=images, code_points=code_points, captions=np.array(names, dtype=str)))
    with np.load(path) as table:  # plain arrays: no pickle needed
        images, code_points, names = table["images"], table["code_points"], table["captions"]
    held_out = np.arange(len(code_points)) % TEST_EVERY == TEST_EVERY - 1
    keep = {"train": ~held_out, "test": held_out, "all": np.ones_like(held_out)}[split]
    captions = Captions(("", *names[keep].tolist()), torch.arange(1, int(keep.sum()) + 1).unsqueeze(1))
    labels = emoji_groups(code_points[keep])
    return EmojiSet(torch.from_numpy(images[keep]), labels, captions, code_points[keep].tolist())


def is_pictographic(code_point: int) -> bool:
    """Whether a single code point counts as a picture here (see the module docstring for the rule)."""
    char = chr(code_point)
    return (
        code_point >= 0x80
        and not 0x1F1E6 <= code_point <= 0x1F1FF
        and unicodedata.category(char) not in ("Cf", "Mn", "Me", "Sk")
        and unicodedata.name(char, "") != ""
    )


def render_emoji(font: Path, image_size: int, background: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Code points (N,) int64, images (N, 3, S, S) uint8 and lower-cased names of the font's pictographic
    single-code-point emoji, in code-point order; ~2 s for the whole font."""
    from fontTools.ttLib import TTFont  # matplotlib's dependency; imported here as only building needs it
    from PIL import ImageFont

    with TTFont(font, lazy=True) as tt:
        cmap = tt.getBestCmap()  # code point -> glyph name
    face = ImageFont.truetype(str(font), STRIKE_PX)
    code_points, images = [], []
    for code_point in sorted(filter(is_pictographic, cmap)):
        image = _render(face, chr(code_point), background, image_size)
        if image is not None:
            code_points.append(code_point)
            images.append(image)
    names = [unicodedata.name(chr(c)).lower() for c in code_points]
    return np.array(code_points, np.int64), np.stack(images).transpose(0, 3, 1, 2), names  # (N, 3, S, S)


def _render(face, char: str, background: str, size: int) -> np.ndarray | None:
    """One glyph as (size, size, 3) uint8 on `background` (a Pillow colour name), or None if it renders
    blank or nearly uniform."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGBA", (2 * STRIKE_PX, 2 * STRIKE_PX))  # transparent, roomy for a 136 x 128 glyph
    ImageDraw.Draw(canvas).text((0, 0), char, font=face, embedded_color=True)
    box = canvas.getchannel("A").getbbox()  # the opaque part; None when nothing was drawn
    if box is None:
        return None
    glyph = canvas.crop(box)
    w, h = glyph.size
    side = max(w, h)
    square = Image.new("RGBA", (side, side), background)  # opaque
    square.alpha_composite(glyph, ((side - w) // 2, (side - h) // 2))  # centred; soft edges blend in
    rgb = square.convert("RGB")
    if np.asarray(rgb).std() < UNIFORM_STD:  # a safety net for other font versions: nothing to learn
        return None
    return np.asarray(rgb.resize((size, size), Image.Resampling.LANCZOS))  # (size, size, 3)
