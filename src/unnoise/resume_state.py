"""The resume state on disk, and the checks everything restored passes before it is used.

A checkpoint's resume state (optimiser moments, RNG state, step, data position, an objective's own
state) is a tree of dicts, lists, tensors and numbers. It is stored without pickle: every tensor in
`state.safetensors` under its path in the tree ("optimizer/state/0/exp_avg"), the tree itself in
`state.json` with each tensor replaced by {"$tensor": path} (dicts with non-string keys, such as an
optimiser's parameter ids, as {"$items": [[key, value], ...]}, tuples as {"$tuple": [...]}).

Nothing read from a file reaches a module or an optimiser unchecked: `check_weights` compares every
tensor with the live module's (names, shapes, dtypes) and requires finite values; `check_optimizer`
does the same for an optimiser's state against its parameters, since a moment of the wrong shape
handed to a fused optimiser corrupts memory rather than raising. Every failure is a one-line
ValueError naming the file and the entry.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

MAX_DEPTH = 32  # a resume state is a few levels deep; deeper JSON is corrupt or hostile


def encode_state(tree: Any) -> tuple[dict[str, Tensor], Any]:
    """(tensors by path, the JSON-able skeleton) of a state tree."""
    tensors: dict[str, Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {"$tensor": path}
        if isinstance(value, tuple):
            return {"$tuple": [walk(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: walk(v, f"{path}/{k}") for k, v in value.items()}
            return {"$items": [[k, walk(v, f"{path}/{k}")] for k, v in value.items()]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store a {type(value).__name__} at {path} of a resume state")

    return tensors, walk(tree, "")


def decode_state(tensors: dict[str, Tensor], skeleton: Any, source: str) -> Any:
    """The state tree back from `encode_state`'s parts; ValueError (naming `source`) if they do not fit."""
    used: set[str] = set()

    def walk(value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError(f"{source} is nested deeper than {MAX_DEPTH} levels: not a resume state")
        if isinstance(value, list):
            return [walk(v, depth + 1) for v in value]
        if not isinstance(value, dict):
            return value
        if "$tensor" in value:
            key = value["$tensor"]
            if not isinstance(key, str) or key not in tensors:
                raise ValueError(f"{source} names a tensor {key!r} that its safetensors file does not hold")
            used.add(key)
            return tensors[key]
        if "$tuple" in value:
            return tuple(walk(v, depth + 1) for v in _list(value["$tuple"], source))
        if "$items" in value:
            pairs = _list(value["$items"], source)
            if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], (int, str)) for p in pairs):
                raise ValueError(f"{source} has a malformed $items entry: expected [key, value] pairs")
            return {k: walk(v, depth + 1) for k, v in pairs}
        return {k: walk(v, depth + 1) for k, v in value.items()}

    tree = walk(skeleton, 0)
    extra = sorted(set(tensors) - used)
    if extra:
        raise ValueError(f"{source}: its safetensors file holds tensors the state does not name: {extra[:3]}")
    return tree


def _list(value: Any, source: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{source} is malformed: expected a list, got {type(value).__name__}")
    return value


# ---- checks against the live objects --------------------------------------------------------------


def check_finite(weights: dict[str, Tensor], source: str) -> None:
    for key, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source} holds non-finite values (NaN or Inf) in {key!r}: refusing to use it")


def check_weights(weights: Any, module: nn.Module, source: str) -> None:
    """Weights that load into `module` exactly: the same names, shapes and dtypes, all finite."""
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise ValueError(f"{source} is not a table of tensors")
    live = module.state_dict()
    missing, extra = sorted(set(live) - set(weights)), sorted(set(weights) - set(live))
    if missing or extra:
        raise ValueError(f"{source} does not fit this network: "
                         + "; ".join(part for part in (f"missing {missing[:3]}" if missing else "",
                                                       f"unexpected {extra[:3]}" if extra else "") if part))
    for key, value in live.items():
        got = weights[key]
        if got.shape != value.shape or got.dtype != value.dtype:
            raise ValueError(f"{source} does not fit this network: {key!r} is {_kind(got)}, the network's is "
                             f"{_kind(value)}")
    check_finite(weights, source)


def check_optimizer(state: Any, optimizer: torch.optim.Optimizer, source: str) -> None:
    """An optimiser state that fits `optimizer`: the same parameter groups, each moment shaped and
    typed as its parameter, finite; step counts finite and >= 0."""
    live = optimizer.state_dict()
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or \
            not isinstance(state.get("param_groups"), list):
        raise ValueError(f"{source}: the optimiser state is malformed (expected state and param_groups)")
    groups = state["param_groups"]
    if len(groups) != len(live["param_groups"]) or any(
            not isinstance(g, dict) or g.get("params") != h["params"] or set(g) != set(h)
            for g, h in zip(groups, live["param_groups"])):
        raise ValueError(f"{source}: the optimiser's parameter groups do not match this network's")
    for group in groups:
        for key, value in group.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{source}: the optimiser's {key} is {value}")
    params = {i: p for g, h in zip(optimizer.param_groups, live["param_groups"]) for i, p in zip(h["params"], g["params"])}
    for index, entry in state["state"].items():
        if index not in params or not isinstance(entry, dict):
            raise ValueError(f"{source}: optimiser state for parameter {index!r}, which this network does not have")
        for name, value in entry.items():
            _check_moment(value, params[index], f"{source}: optimiser state {index}/{name}", name == "step")


def _check_moment(value: Any, param: Tensor, where: str, is_step: bool) -> None:
    if not isinstance(value, Tensor):
        raise ValueError(f"{where} is a {type(value).__name__}, not a tensor")
    if is_step:
        if value.numel() != 1 or not value.is_floating_point() or not (math.isfinite(value.item()) and value.item() >= 0):
            raise ValueError(f"{where} must be one finite count >= 0, got {_kind(value)}")
        return
    if value.shape != param.shape or value.dtype != param.dtype:
        raise ValueError(f"{where} is {_kind(value)}, its parameter is {_kind(param)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{where} holds non-finite values")


def check_rng(value: Any, source: str) -> Tensor:
    live = torch.get_rng_state()
    if not isinstance(value, Tensor) or value.dtype != live.dtype or value.shape != live.shape:
        raise ValueError(f"{source}: the saved RNG state is not a torch CPU generator state "
                         f"({_kind(value) if isinstance(value, Tensor) else type(value).__name__})")
    return value


def check_count(state: dict, key: str, source: str, least: int = 0) -> int:
    value = state.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{source}: {key} must be a whole number >= {least}, got {value!r}")
    return value


def _kind(t: Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
