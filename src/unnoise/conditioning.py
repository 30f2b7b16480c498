"""The one conditioning type every network, guidance wrapper, sampler and the training loop pass on.

    Condition(labels=(B,) int64)                                 class labels; num_classes is the null label
    Condition(context=(B, L, D), context_mask=(B, L) bool)       a text prompt's token states (unnoise.text)
    Condition(labels=..., context=..., context_mask=...)         both
    Condition(image=(B, C, *spatial))                            an image condition (a hint, a low-resolution input)
    Condition(image=..., image_noise=(B,))                       ... noised to level s (conditioning augmentation)
    Condition(nodes=(B, N) bool)                                 which of a set's N slots are real (a molecule's atoms)
    Condition(independent=(B,) bool)                             a video row whose frames are unrelated images

A Condition is batched along dim 0 and is sliced (`cond[rows]`), moved (`cond.to(device)`),
broadcast from one row (`cond.expand(B)`) and stacked (`Condition.cat(a, b)`: text contexts padded
to the longer sequence, the padding masked out) without the caller knowing which fields it holds.
`as_condition` accepts a bare (B,) label tensor too, as peer code and the exact oracles pass it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Condition:
    labels: Tensor | None = None  # (B,) int64 class labels; the model's num_classes is the null label
    context: Tensor | None = None  # (B, L, D) text token states for cross-attention
    context_mask: Tensor | None = None  # (B, L) bool, True where a token is real (not padding)
    image: Tensor | None = None  # (B, C, *spatial) an image condition: a control hint, a low-resolution input
    image_noise: Tensor | None = None  # (B,) the level s in [0, 1] the image condition was noised to (augmentation)
    nodes: Tensor | None = None  # (B, N) bool: the real elements of a padded set (atoms; False = padding)
    independent: Tensor | None = None  # (B,) bool: the row's frames are unrelated images (no temporal attention)

    def __post_init__(self) -> None:
        for f, v in self._items():
            if not isinstance(v, Tensor) or v.ndim < 1:
                raise ValueError(f"Condition.{f.name} must be a tensor batched along dim 0, got {v!r:.60}")
        sizes = {f.name: v.shape[0] for f, v in self._items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"a condition's fields must share their batch size, got {sizes}")
        if self.context_mask is not None and self.context is None:
            raise ValueError("context_mask given without a context")

    def _items(self):
        return [(f, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]

    def __len__(self) -> int:
        items = self._items()
        return items[0][1].shape[0] if items else 0

    def _map(self, fn) -> Condition:
        return replace(self, **{f.name: fn(v) for f, v in self._items()})

    def __getitem__(self, rows: slice | Tensor) -> Condition:
        return self._map(lambda v: v[rows])

    def to(self, device: torch.device | str) -> Condition:
        return self._map(lambda v: v.to(device))

    def expand(self, batch: int) -> Condition:
        """A one-row condition broadcast to `batch` rows (a condition of `batch` rows unchanged)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot broadcast a condition of {len(self)} rows to {batch}")
        return self._map(lambda v: v.expand(batch, *v.shape[1:]))

    @staticmethod
    def cat(a: Condition, b: Condition) -> Condition:
        """a's rows, then b's; text contexts padded to the longer one with the padding masked out."""
        given_a, given_b = ({f.name for f, _ in c._items()} - {"context_mask"} for c in (a, b))  # masks made below
        if given_a != given_b:
            raise ValueError(f"cannot stack a condition with {sorted(given_a)} and one with {sorted(given_b)}")
        out = {f.name: torch.cat([v, getattr(b, f.name)]) for f, v in a._items()
               if f.name not in ("context", "context_mask")}
        if a.context is not None:
            length = max(a.context.shape[1], b.context.shape[1])
            states, masks = [], []
            for c in (a, b):
                mask = c.context_mask if c.context_mask is not None else torch.ones(
                    c.context.shape[:2], dtype=torch.bool, device=c.context.device)
                pad = length - c.context.shape[1]
                states.append(F.pad(c.context, (0, 0, 0, pad)))  # (B, length, D)
                masks.append(F.pad(mask, (0, pad), value=False))  # (B, length)
            out["context"], out["context_mask"] = torch.cat(states), torch.cat(masks)
        return Condition(**out)


def as_condition(cond: Any) -> Condition | None:
    """None, a Condition, or a bare (B,) tensor of class labels, as a Condition (or None)."""
    if cond is None or isinstance(cond, Condition):
        return cond
    if isinstance(cond, Tensor):
        return Condition(labels=cond)
    raise ValueError(f"a condition must be None, a Condition or a (B,) tensor of labels, got {type(cond).__name__}")


def null_labels(num_classes: int, batch: int, device: torch.device | str = "cpu") -> Tensor:
    """The null label (num_classes) for `batch` rows: what label dropout trains and guidance samples with."""
    return torch.full((batch,), num_classes, dtype=torch.int64, device=device)
