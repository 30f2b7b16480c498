"""What sampling writes, every file carrying the settings it was made with.

    record = sample_record(pipe, settings, n=64)                    # run, step, sampler, steps, seed, ...
    labels, prompts = pipe.per_sample(64, label=3)                  # each sample's class and prompt
    write_samples(pipe.modality, x, "x.png", record, labels, prompts)   # the grid (or plot) as PNG
    write_samples(pipe.modality, x, "x.npz", record, labels, prompts)   # raw samples, labels, prompts, seeds
    write_individual(pipe.modality, x, "x/", record, labels, prompts)   # one PNG (WAV, GIF, .xyz) per sample

A PNG holds each setting in a text chunk of its own (values that are not strings as JSON), read
back with PIL: `Image.open("x.png").text["sampler"]`. An .npz holds `samples` (n, *sample shape),
`index` (sample i's index; its noise comes from the generator of (seed, index)), `seed`, `labels`
and `prompts` where the model takes them, and `settings`, the record as JSON; it loads with
`np.load(path)` (no pickle).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unnoise.files import write_atomic
from unnoise.modality import preview, save_one


def sample_record(pipe, settings, **extra: Any) -> dict[str, Any]:
    """The settings a batch of samples was made with: the model (its checkpoint and step), the
    pipeline's Settings (sampler, steps, spacing, guidance, seed, sampler options, ...) and `extra`."""
    return {"unnoise": version("unnoise"), "model": pipe.source, "step": pipe.step, **asdict(settings), **extra}


def png_text(record: dict[str, Any]) -> dict[str, str]:
    """A record as PNG text chunks: strings as they are, everything else as JSON."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in record.items()}


def per_sample_record(record: dict[str, Any], i: int, first: int, labels: Tensor | None,
                      prompts: list[str] | None) -> dict[str, Any]:
    """The record of sample i of a request: its index, and its label or prompt."""
    one = {**record, "index": first + i}
    if labels is not None:
        one["label"] = int(labels[i])
    if prompts is not None:
        one["prompt"] = prompts[i]
    return one


def write_samples(kind: str, x: Tensor, path: str | os.PathLike, record: dict[str, Any],
                  labels: Tensor | None = None, prompts: list[str] | None = None, first: int = 0,
                  columns: int | None = None, classes: int = 0, rendering: dict | None = None) -> Path:
    """Samples x (n, *sample shape) as the picture of their kind (.png, with a sound, an animation or
    coordinates beside it for audio, video and molecules) or raw (.npz), with their record. columns
    None: one column per class for the class grid (labels (first + i) mod classes, prompts none), else
    about square. rendering: what the kind needs besides x (Pipeline.rendering)."""
    path = Path(path)
    if columns is None and classes and labels is not None and prompts is None and len(x) > 1:
        class_grid = torch.equal(labels.cpu(), torch.arange(first, first + len(x)) % classes)
        columns = classes if class_grid else None
    if path.suffix == ".npz":
        return write_npz(x, path, record, labels, prompts, first)
    whole = {**record, "index": f"{first}..{first + len(x) - 1}"}
    if labels is not None:
        whole["labels"] = labels.tolist()
    if prompts is not None:
        whole["prompts"] = sorted(set(prompts), key=prompts.index)  # each once, in order of use
    return preview(kind, x, path, columns, png_text(whole), **(rendering or {}))


def write_npz(x: Tensor, path: str | os.PathLike, record: dict[str, Any], labels: Tensor | None = None,
              prompts: list[str] | None = None, first: int = 0) -> Path:
    arrays = {"samples": x.float().numpy(), "index": np.arange(first, first + len(x)),
              "seed": np.array(record.get("seed", 0)), "settings": np.array(json.dumps(record))}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    if prompts is not None:
        arrays["prompts"] = np.array(prompts, dtype=str)  # fixed-width unicode: loads without pickle
    return write_atomic(path, lambda tmp: np.savez(tmp, **arrays))


def write_individual(kind: str, x: Tensor, folder: str | os.PathLike, record: dict[str, Any],
                     labels: Tensor | None = None, prompts: list[str] | None = None, first: int = 0,
                     rendering: dict | None = None) -> list[Path]:
    """One file per sample (a PNG; a WAV, GIF or .xyz for audio, video, molecules), named by its index
    (000000.png, ...), each with its own record."""
    folder = Path(folder)
    return [save_one(kind, x[i:i + 1], folder / f"{first + i:06d}.png",
                     png_text(per_sample_record(record, i, first, labels, prompts)), **(rendering or {}))
            for i in range(len(x))]
