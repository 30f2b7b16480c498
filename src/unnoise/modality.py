"""How a sample is shown and kept, by kind of data: the one place that knows what a sample looks like.

The loop, the pipeline and evaluation pass samples around as tensors (n, *sample_shape); only here
do images become a PNG grid, 2-D points a scatter plot, 1-D signals line plots, waveforms a
waveform-and-spectrogram picture and a WAV file, videos a strip of frames and an animated GIF, and
molecules a picture and an .xyz file. Every kind also saves raw samples as .npz (unnoise sample
--out x.npz).

    kind = modality_of(config.data)                     # "image", "points", "signal", "audio", "video", "molecule"
    preview(kind, x, "samples.png")                     # the picture a person looks at (and its sound or motion)
    preview("audio", x, "samples.png", sample_rate=8000)  # what a kind needs besides x: unnoise.data.rendering_of
    png = picture_png(kind, x)                          # the picture alone, as bytes (a server's live previews)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from unnoise.plots import plot_samples, plot_signals, save_image_grid

CLIP_GAP = 0.25  # seconds of silence between the clips of a batch's WAV file


def _points(x: Tensor, path: Path, columns: int | None, metadata: dict[str, str] | None) -> Path:
    return plot_samples({f"{len(x)} samples": x}, path, limit=1.6, metadata=metadata)


def _signals(x: Tensor, path: Path, columns: int | None, metadata: dict[str, str] | None) -> Path:
    return plot_signals(x, path, columns, metadata=metadata)


def _audio(x: Tensor, path: Path, columns: int | None, metadata: dict[str, str] | None, sample_rate: int) -> Path:
    """The clips' waveforms and spectrograms (PNG)."""
    from unnoise.audio import plot_audio

    return plot_audio(x, path, sample_rate, columns, metadata)


def _clips_wav(x: Tensor, path: Path, columns: int | None, metadata: dict[str, str] | None, sample_rate: int) -> Path:
    """One WAV of the clips in turn, CLIP_GAP seconds of silence after each."""
    from unnoise.audio import write_wav

    gap = torch.zeros(int(CLIP_GAP * sample_rate))
    return write_wav(torch.cat([torch.cat([clip[0].float().cpu(), gap]) for clip in x]), path, sample_rate)


def _video(x: Tensor, path: Path, columns: int | None, metadata: dict[str, str] | None, fps: float = 8) -> Path:
    """A row of frames per video (PNG)."""
    from unnoise.video import save_video_strip

    return save_video_strip(x, path, metadata)


def _videos_gif(x: Tensor, path: Path, columns: int | None, metadata: dict[str, str] | None, fps: float = 8) -> Path:
    """The videos playing in a grid (GIF)."""
    from unnoise.video import save_gif

    return save_gif(x, path, columns, fps, metadata)


def molecules_of(x: Tensor, elements: tuple[str, ...]) -> list:
    """Padded molecules (n, N, 3 + K) as unnoise.data.molecules.Molecule: the real atoms are the slots
    that are not all zero (a sampler's padding is exactly 0, projected so every step)."""
    from unnoise.data.molecules import to_molecules

    return to_molecules(x, x.abs().sum(-1) > 0, elements)


def _molecules(x: Tensor, path: Path, columns: int | None, metadata: dict[str, str] | None,
               elements: tuple[str, ...]) -> Path:
    """The molecules drawn (PNG)."""
    from unnoise.chemistry import render_molecules

    return render_molecules(molecules_of(x, elements), path, columns, metadata)


def _molecules_xyz(x: Tensor, path: Path, columns: int | None, metadata: dict[str, str] | None,
                   elements: tuple[str, ...]) -> Path:
    """Their atoms and coordinates (.xyz)."""
    from unnoise.chemistry import write_xyz

    return write_xyz(molecules_of(x, elements), path)


# kind -> (tensor rank of a batch, the writer of its picture); a new kind of data adds its entry here
PREVIEWS = {"image": (4, save_image_grid), "points": (2, _points), "signal": (3, _signals), "audio": (3, _audio),
            "video": (5, _video), "molecule": (3, _molecules)}
MODALITIES = tuple(PREVIEWS)
# kind -> (suffix, the writer of the file `preview` puts beside the picture: a sound, an animation, coordinates)
COMPANIONS = {"audio": (".wav", _clips_wav), "video": (".gif", _videos_gif), "molecule": (".xyz", _molecules_xyz)}


def _one_wav(x: Tensor, path: Path, metadata: dict[str, str] | None, sample_rate: int) -> Path:
    from unnoise.audio import write_wav

    return write_wav(x[0], path, sample_rate)


def _one_gif(x: Tensor, path: Path, metadata: dict[str, str] | None, fps: float = 8) -> Path:
    from unnoise.video import save_gif

    return save_gif(x, path, 1, fps, metadata)


def _one_xyz(x: Tensor, path: Path, metadata: dict[str, str] | None, elements: tuple[str, ...]) -> Path:
    from unnoise.chemistry import write_xyz

    return write_xyz(molecules_of(x, elements), path)


# kind -> (suffix, the writer of one sample as a file of its own) (unnoise sample --individual); points have none
SINGLES = {"image": (".png", lambda x, path, metadata: save_image_grid(x, path, 1, metadata, gap=0)),
           "signal": (".png", lambda x, path, metadata: plot_signals(x, path, 1, metadata=metadata)),
           "audio": (".wav", _one_wav), "video": (".gif", _one_gif), "molecule": (".xyz", _one_xyz)}


def preview(kind: str, x: Tensor, path: str | os.PathLike, columns: int | None = None,
            metadata: dict[str, str] | None = None, companion: bool = True, **rendering) -> Path:
    """Write a batch x (n, *sample_shape) as the picture of its kind: PNG grid, scatter or line plots,
    waveforms (with a .wav beside), frame strips (with a .gif) or molecules (with an .xyz); columns:
    panels a row (None: about square); metadata: PNG text chunks (the settings it was made with);
    companion: whether the file beside is written too (COMPANIONS); rendering: what the kind needs
    besides x (unnoise.data.rendering_of: a sample rate, elements)."""
    if kind not in PREVIEWS:
        raise ValueError(f"unknown modality {kind!r}; known: {', '.join(PREVIEWS)}")
    rank, write = PREVIEWS[kind]
    if x.ndim != rank:
        raise ValueError(f"a batch of {kind} samples has rank {rank}, got shape {tuple(x.shape)}")
    path = Path(path)
    if companion and kind in COMPANIONS:
        suffix, write_beside = COMPANIONS[kind]
        write_beside(x, path.with_suffix(suffix), columns, metadata, **rendering)
    return write(x, path, columns, metadata, **rendering)


def picture_png(kind: str, x: Tensor, columns: int | None = None, **rendering) -> bytes:
    """The picture of a batch x (n, *sample_shape) alone, as PNG bytes (no file beside it, no
    metadata): what a viewer shows while samples are made."""
    with tempfile.TemporaryDirectory(prefix="unnoise-picture-") as folder:
        return preview(kind, x, Path(folder) / "picture.png", columns, companion=False, **rendering).read_bytes()


def save_one(kind: str, x: Tensor, path: str | os.PathLike, metadata: dict[str, str] | None = None,
             **rendering) -> Path:
    """Write one sample x (1, *sample_shape) as a file of its own: the image itself, its line plot, a
    WAV, a GIF or an .xyz; `path` takes the kind's suffix (SINGLES)."""
    if kind not in SINGLES:
        raise ValueError(f"{kind} samples have no file of one sample; known: {', '.join(SINGLES)}")
    suffix, write = SINGLES[kind]
    return write(x, Path(path).with_suffix(suffix), metadata, **rendering)
