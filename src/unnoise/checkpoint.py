"""Checkpoints: a folder per step, written atomically, loaded without unpickling user data.

    run/checkpoints/step_00001000/
        model.safetensors    network weights            (safetensors: no code can hide in it)
        ema.safetensors      EMA weights
        state.pt             optimiser, RNG states, step, data position (torch.load weights_only=True)
        config.json          the resolved configuration

A checkpoint is written into a temporary folder (every file fsynced) that is renamed into place,
and the folder is fsynced too: a crash at any moment leaves either the complete new checkpoint or
none. Older checkpoints are deleted only after the new one is in place; leftover temporary folders
are never read and are swept by the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from unnoise.files import current_umask

_NAME = re.compile(r"^step_(\d{8})$")
FILES = ("model.safetensors", "ema.safetensors", "state.pt", "config.json")


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict[str, Any] | None  # None when only weights were asked for
    config: dict[str, Any]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in weights.items()}


def save_checkpoint(folder: str | os.PathLike, step: int, model: dict, ema: dict, state: dict, config: dict,
                    keep: int = 2) -> Path:
    """Write checkpoint `step` under `folder` atomically and keep the newest `keep` ones."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=folder))
    mask = current_umask()
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700: give what mkdir would have
    try:
        save_file(_contiguous(model), tmp / "model.safetensors")
        save_file(_contiguous(ema), tmp / "ema.safetensors")
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        for name in FILES:
            os.chmod(tmp / name, 0o666 & ~mask)  # safetensors writes 0600: give what open() would have
            _fsync(tmp / name)
        _fsync(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in folder.glob(".step_*"):
        if leftover != tmp:
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and _NAME.match(p.name) and all((p / f).is_file() for f in FILES)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from: the folder itself, a run folder, or a run's checkpoints folder (the
    newest complete one is taken)."""
    path = Path(path)
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".ckpt", ".pkl", ".bin"):
            raise ValueError(f"refusing to load {path}: pickle-based weight files can run code when loaded; "
                             "unnoise loads weights only from safetensors checkpoints")
        path = path.parent
    if _NAME.match(path.name) and all((path / f).is_file() for f in FILES):
        return path
    for candidate in (path, path / "checkpoints"):
        found = list_checkpoints(candidate)
        if found:
            return found[-1]
    raise ValueError(f"no complete checkpoint at {path} (expected a step_XXXXXXXX folder holding {', '.join(FILES)})")


def load_checkpoint(path: str | os.PathLike, with_state: bool = True) -> Checkpoint:
    """Load a checkpoint; weights via safetensors, the resume state with torch.load(weights_only=True)."""
    path = resolve_checkpoint(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True) if with_state else None
    return Checkpoint(path, int(_NAME.match(path.name).group(1)), load_file(path / "model.safetensors"),
                      load_file(path / "ema.safetensors"), state, json.loads((path / "config.json").read_text()))
