"""The data-set protocol the training loop, the pipeline and evaluation read, whatever a sample is:
N examples held in one tensor (N, *sample_shape), with labels and optional captions.

    len(dataset), dataset.sample_shape, dataset.modality       # "image", "points", "signal"
    x, labels = dataset.batch(index)                            # (B, *sample_shape) float32, (B,) int64
    dataset.labels (N,) int64 (-1: none), dataset.class_names, dataset.captions (None or Captions)
    dataset.conditions(index) -> {field: (B, ...)}           per-example Condition fields (a molecule's atoms)

A kind of data stores its values as it likes (images as uint8) and says in `serve` what a stored
slice becomes; everything else is here once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from unnoise.data.captions import Captions


class TensorSet(Dataset):
    modality = "image"  # how a sample is shown (unnoise.modality); subclasses say theirs
    has_own_space = False  # True: the set's samples live in a space of their own, built by `space()`

    def __init__(self, values: Tensor, labels: Tensor | None, *, name: str, class_names: Sequence[str] = (),
                 captions: Captions | None = None):
        n = values.shape[0]
        labels = torch.full((n,), -1, dtype=torch.int64) if labels is None else labels.to(torch.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if captions is not None and len(captions) != n:
            raise ValueError(f"captions must have one row per example ({n}), got {len(captions)}")
        self.values = values.contiguous()  # (N, *sample_shape), as stored
        self.labels = labels  # (N,) int64, -1 = no label
        self.name = name
        self.class_names = list(class_names)  # index -> name; empty when the set has no labels
        self.captions = captions  # texts and per-example caption ids, or None

    def serve(self, values: Tensor) -> Tensor:
        """What stored values become for training and evaluation: float32 (as stored, by default)."""
        return values

    def conditions(self, index: Tensor) -> dict[str, Tensor]:
        """Condition fields (unnoise.conditioning) that belong to examples `index` themselves, as
        training passes them to the network: which slots of a molecule are atoms, which rows of a video
        set are unrelated frames. Most sets have none."""
        return {}

    def space(self):
        """The space a set with has_own_space diffuses in, built from its data (unnoise.latent.space_for);
        the others diffuse in pixel or latent space."""
        raise TypeError(f"the {self.name} set has no space of its own: runs diffuse it in pixel or latent space")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.serve(self.values[i]), int(self.labels[i])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Examples (B, *sample_shape) float32 and labels (B,) int64 at `index` (B,)."""
        return self.serve(self.values[index]), self.labels[index]

    def __repr__(self) -> str:
        captions = "" if self.captions is None else f", captions={len(self.captions.texts) - 1}"
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, shape={self.sample_shape}, "
                f"classes={self.num_classes}{captions})")
