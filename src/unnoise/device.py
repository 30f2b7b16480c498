"""Where to compute: a device name checked before any work, in one place for every command."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None: cuda when present, else cpu. "cpu", "cuda" or "cuda:N" otherwise, refused with one line
    when unknown or not on this machine."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(f"device {device!r} asked for, but this machine has no CUDA device (use cpu)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} asked for, but this machine has {count} CUDA device(s): "
                             f"cuda:0..cuda:{count - 1}")
    return dev
