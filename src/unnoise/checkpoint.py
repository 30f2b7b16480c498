"""Checkpoints: a folder per step, written atomically, loaded without unpickling anything.

    run/checkpoints/step_00001000/
        model.safetensors    network weights            (safetensors: no code can hide in it)
        ema.safetensors      EMA weights
        state.safetensors    the resume state's tensors: optimiser moments, RNG state, ...
        state.json           the rest of it: step, data position, ... (unnoise.resume_state)
        config.json          the resolved configuration, and the SHA-256 of every other file

Every file is checked when read: against the checksum config.json records (a flipped byte is
found), as a well-formed safetensors or JSON file, and weights as finite; each failure is a
one-line ValueError naming the file. (Checkpoints written before state.safetensors existed hold
state.pt instead, read with torch.load(weights_only=True) and checked the same way.)

A model folder (`export_model`, `unnoise export`) holds only what sampling needs, ema.safetensors and
config.json (with the step it came from): a model to share without its optimiser state. Everything
that samples or evaluates takes one wherever it takes a checkpoint; resuming needs a checkpoint.

A checkpoint is written into a temporary folder (every file fsynced) that is renamed into place,
and the folder is fsynced too: a crash at any moment leaves either the complete new checkpoint or
none. Older checkpoints are deleted only after the new one is in place; leftover temporary folders
are never read and are swept by the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from unnoise.config import RunConfig, load_config, pin_model
from unnoise.files import current_umask
from unnoise.resume_state import check_finite, decode_state, encode_state

_NAME = re.compile(r"^step_(\d{8})$")
WEIGHTS = ("model.safetensors", "ema.safetensors")
STATE = ("state.safetensors", "state.json")
LEGACY_STATE = "state.pt"  # the resume state of checkpoints written before STATE
FILES = (*WEIGHTS, *STATE, "config.json")
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
    return _tree(path, read_config(path))


def run_config(checkpoint: Checkpoint | str | os.PathLike) -> RunConfig:
    """The run configuration a checkpoint (or model folder) holds, checked as a config file is; a
    config that does not load is named with its file."""
    if isinstance(checkpoint, Checkpoint):
        path, tree = checkpoint.path, checkpoint.tree
    else:
        path = resolve_checkpoint(checkpoint)
        tree = _tree(path, read_config(path))
    try:
        return load_config(None, tree=tree)
    except ValueError as err:
        raise ValueError(f"{path / 'config.json'}: {err}") from None


def read_config(path: Path) -> dict[str, Any]:
    """A checkpoint's config.json, checked to be a JSON object with a configuration tree."""
    file = path / "config.json"
    try:
        config = json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{file} is not valid JSON ({str(err).splitlines()[0][:80]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("tree"), dict):
        raise ValueError(f"{file} holds no configuration tree (a JSON object with a 'tree' object)")
    if not isinstance(config.get("sha256", {}), dict):
        raise ValueError(f"{file}: its sha256 entry must be an object of file name -> checksum")
    return config


def _tree(path: Path, config: dict) -> dict:
    """The run's tree with its model pinned to the fields it was built with (pin_model: a preset may have
    changed since); a model folder names its latent autoencoder relative to itself (export_model puts
    it there)."""
    tree = pin_model(config["tree"], config.get("resolved"))
    latent = tree.get("latent", {})
    autoencoder = latent.get("autoencoder") if isinstance(latent, dict) else None
    if "exported_from" in config and isinstance(autoencoder, str) and autoencoder and not Path(autoencoder).is_absolute():
        tree = {**tree, "latent": {**latent, "autoencoder": str(path / autoencoder)}}
    return tree


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in weights.items()}


def save_checkpoint(folder: str | os.PathLike, step: int, model: dict, ema: dict, state: dict, config: dict,
                    keep: int = 2) -> Path:
    """Write checkpoint `step` under `folder` atomically and keep the newest `keep` ones (never the
    one just written). A failed write (e.g. a full disk) raises OSError naming the checkpoint and
    leaves the earlier checkpoints as they were."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:08d}.", dir=folder))
    try:
        _write_files(tmp, model, ema, state, config)
        if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(folder)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, SafetensorError):  # e.g. "No space left on device": say which checkpoint
            raise OSError(f"could not write checkpoint {final}: {err}") from None
        raise
    others = [p for p in list_checkpoints(folder) if p != final]  # the newest keep - 1 of them stay
    for old in others[:max(len(others) - (keep - 1), 0)] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in folder.glob(".step_*"):
        if leftover != tmp:
            shutil.rmtree(leftover, ignore_errors=True)
    return final


def _write_files(tmp: Path, model: dict, ema: dict, state: dict, config: dict) -> None:
    """Every file of a checkpoint into `tmp`, with what open() and mkdir would give under the umask,
    fsynced; config.json last, with the checksums of the others."""
    mask = current_umask()
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700: give what mkdir would have
    tensors, skeleton = encode_state(state)
    save_file(_contiguous(model), tmp / "model.safetensors")
    save_file(_contiguous(ema), tmp / "ema.safetensors")
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps(skeleton))
    sums = {name: _sha256(tmp / name) for name in (*WEIGHTS, *STATE)}
    (tmp / "config.json").write_text(json.dumps({**config, "sha256": sums}, indent=2, sort_keys=True))
    for name in FILES:
        os.chmod(tmp / name, 0o666 & ~mask)  # safetensors writes 0600: give what open() would have
        _fsync(tmp / name)
    _fsync(tmp)


def _complete(path: Path) -> bool:
    """A checkpoint folder holding every file (a current one, or one with the legacy state.pt)."""
    has = [(path / f).is_file() for f in (*WEIGHTS, "config.json")]
    return all(has) and (all((path / f).is_file() for f in STATE) or (path / LEGACY_STATE).is_file())


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name) and _complete(p)]
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
    if _NAME.match(path.name) and _complete(path):
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
    """Load a checkpoint, every file checked (see the module's docstring). with_state False: only the
    EMA weights and the config (all a model folder has)."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    name = _NAME.match(path.name)
    step = config.get("step", int(name.group(1)) if name else 0)
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"{path / 'config.json'}: step must be a whole number >= 0, got {step!r}")
    ema = _weights(path, "ema.safetensors", config)
    if not with_state:
        return Checkpoint(path, step, None, ema, None, config)
    if not _complete(path):
        missing = [f for f in FILES if not (path / f).is_file()]
        raise ValueError(f"{path} holds a model for sampling, not a checkpoint to resume from (no {', '.join(missing)})")
    return Checkpoint(path, step, _weights(path, "model.safetensors", config), ema, _state(path, config), config)


def _verified_bytes(path: Path, name: str, config: dict) -> bytes:
    """The bytes of path/name, checked against the checksum config.json records for it (if any)."""
    data = (path / name).read_bytes()
    expected = config.get("sha256", {}).get(name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{path / name} does not match the SHA-256 recorded in its config.json: the file is "
                         "corrupted or was changed")
    return data


def _weights(path: Path, name: str, config: dict) -> dict[str, torch.Tensor]:
    try:
        weights = load_safetensors(_verified_bytes(path, name, config))
    except SafetensorError as err:
        raise ValueError(f"{path / name} is not a readable safetensors file ({err})") from None
    check_finite(weights, str(path / name))
    return weights


def _state(path: Path, config: dict) -> dict[str, Any]:
    """The resume state tree: state.safetensors + state.json, or a legacy state.pt (weights_only)."""
    if not (path / STATE[0]).is_file():
        try:
            state = torch.load(path / LEGACY_STATE, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure: name the file, one line
            raise ValueError(f"{path / LEGACY_STATE} is not a readable resume state ({type(err).__name__})") from None
    else:
        try:
            tensors = load_safetensors(_verified_bytes(path, STATE[0], config))
        except SafetensorError as err:
            raise ValueError(f"{path / STATE[0]} is not a readable safetensors file ({err})") from None
        try:
            skeleton = json.loads(_verified_bytes(path, STATE[1], config))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ValueError(f"{path / STATE[1]} is not valid JSON") from None
        state = decode_state(tensors, skeleton, str(path / STATE[1]))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: its resume state is not a table of entries")
    return state


def export_model(run: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write the model folder of a run's newest checkpoint (or of a given checkpoint): its EMA weights
    (checked) and config.json with the step and source recorded; the folder appears whole or not at
    all, and an existing one is never overwritten."""
    ckpt, folder = load_checkpoint(run, with_state=False), Path(folder)
    if folder.exists():
        raise ValueError(f"{folder} exists already: export writes a new folder")
    config = {**ckpt.config, "step": ckpt.step, "exported_from": str(ckpt.config.get("exported_from", ckpt.path.resolve())),
              "sha256": {"ema.safetensors": _sha256(ckpt.path / "ema.safetensors")}}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        shutil.copyfile(ckpt.path / "ema.safetensors", tmp / "ema.safetensors")
        if ckpt.tree.get("latent", {}).get("autoencoder"):  # a latent model carries its autoencoder
            export_model(ckpt.tree["latent"]["autoencoder"], tmp / "autoencoder")
            config["tree"] = {**config["tree"], "latent": {**config["tree"]["latent"], "autoencoder": "autoencoder"}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        for name in MODEL_FILES:
            _fsync(tmp / name)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
