"""Checkpoints: a folder per step, written atomically, loaded without unpickling user data.

    run/checkpoints/step_00001000/
        model.safetensors    network weights            (safetensors: no code can hide in it)
        ema.safetensors      EMA weights
        state.pt             optimiser, RNG states, step, data position (torch.load weights_only=True)
        config.json          the resolved configuration

A model folder (`export_model`, `unnoise export`) holds only what sampling needs, ema.safetensors and
config.json (with the step it came from): a model to share without its optimiser state. Everything
that samples or evaluates takes one wherever it takes a checkpoint; resuming needs a checkpoint.

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
MODEL_FILES = ("ema.safetensors", "config.json")  # what sampling reads: a model folder holds just these


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor] | None  # None when only the EMA weights were asked for
    ema: dict[str, torch.Tensor]
    state: dict[str, Any] | None  # None when only the EMA weights were asked for
    config: dict[str, Any]

    @property
    def tree(self) -> dict[str, Any]:
        """The run's configuration tree (for load_config), paths inside a model folder made whole."""
        return _tree(self.path, self.config)


def checkpoint_tree(path: str | os.PathLike) -> dict[str, Any]:
    """The configuration tree of a checkpoint or model folder, read from its config.json alone."""
    path = resolve_checkpoint(path)
    return _tree(path, json.loads((path / "config.json").read_text()))


def _tree(path: Path, config: dict) -> dict:
    """A model folder names its latent autoencoder relative to itself (export_model puts it there)."""
    tree = config["tree"]
    autoencoder = tree.get("latent", {}).get("autoencoder")
    if "exported_from" in config and autoencoder and not Path(autoencoder).is_absolute():
        tree = {**tree, "latent": {**tree["latent"], "autoencoder": str(path / autoencoder)}}
    return tree


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


def is_model_folder(path: Path) -> bool:
    """A folder holding what sampling reads (a checkpoint, or an exported model)."""
    return all((path / f).is_file() for f in MODEL_FILES)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint (or model) folder from: the folder itself, a run folder, or a run's checkpoints
    folder (the newest complete one is taken)."""
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
    if is_model_folder(path):
        return path
    raise ValueError(f"no complete checkpoint at {path} (expected a step_XXXXXXXX folder holding {', '.join(FILES)}, "
                     f"or a model folder holding {' and '.join(MODEL_FILES)})")


def load_checkpoint(path: str | os.PathLike, with_state: bool = True) -> Checkpoint:
    """Load a checkpoint; weights via safetensors, the resume state with torch.load(weights_only=True).
    with_state False: only the EMA weights and the config (all a model folder has)."""
    path = resolve_checkpoint(path)
    config = json.loads((path / "config.json").read_text())
    name = _NAME.match(path.name)
    step = int(config.get("step", name.group(1) if name else 0))
    if not with_state:
        return Checkpoint(path, step, None, load_file(path / "ema.safetensors"), None, config)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ValueError(f"{path} holds a model for sampling, not a checkpoint to resume from (no {', '.join(missing)})")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return Checkpoint(path, step, load_file(path / "model.safetensors"), load_file(path / "ema.safetensors"), state,
                      config)


def export_model(run: str | os.PathLike, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write the model folder of a run's newest checkpoint (or of a given checkpoint): ema.safetensors
    and config.json, the step and source recorded in it, plus `extra` entries; the folder appears
    whole or not at all, and an existing one is never overwritten."""
    source, folder = resolve_checkpoint(run), Path(folder)
    if folder.exists():
        raise ValueError(f"{folder} exists already: export writes a new folder")
    config = json.loads((source / "config.json").read_text())
    name = _NAME.match(source.name)
    config = {**config, "step": int(config.get("step", name.group(1) if name else 0)),
              "exported_from": str(config.get("exported_from", source.resolve())), **(extra or {})}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        shutil.copyfile(source / "ema.safetensors", tmp / "ema.safetensors")
        if config["tree"].get("latent", {}).get("autoencoder"):  # a latent model carries its autoencoder
            export_model(_tree(source, config)["latent"]["autoencoder"], tmp / "autoencoder")
            config["tree"] = {**config["tree"], "latent": {**config["tree"]["latent"], "autoencoder": "autoencoder"}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        for name in MODEL_FILES:
            _fsync(tmp / name)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
