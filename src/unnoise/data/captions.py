"""Caption tables for text-to-image training: a few strings, and per image the ones that describe it.

`Captions` keeps every distinct string once in `texts` and lists, for image i, the indices of its
captions in row i of `ids`; a trainer draws one per image per step with `draw` (several templates
per class, or several phrasings per image, then act as augmentation). texts[0] is always "", the
null condition: a trainer drops captions for classifier-free guidance by putting id 0 in their place
(classifier-free guidance, Ho & Salimans 2022).

    texts = ("", "a red apple", "an apple", "a pear")
    ids   = [[1, 2], [3, -1]]      # image 0: either apple caption; image 1: only "a pear"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)  # eq=False: tensors do not compare to one bool
class Captions:
    texts: tuple[str, ...]  # distinct caption strings; texts[0] == "" is the null caption
    ids: Tensor  # (N, K) int64: row i holds image i's indices into texts, valid ones first, then -1 padding

    def __post_init__(self):
        object.__setattr__(self, "texts", tuple(self.texts))
        texts, ids = self.texts, self.ids
        if not texts or texts[0] != "":
            raise ValueError(f"texts[0] must be the empty string (the null caption), got {texts[:1]}")
        if len(set(texts)) != len(texts):
            repeated = sorted({t for t in texts if texts.count(t) > 1})
            raise ValueError(f"texts must be distinct; repeated: {repeated[:5]}")
        if ids.dtype != torch.int64 or ids.ndim != 2 or ids.shape[1] < 1:
            raise ValueError(f"ids must be int64 (N, K) with K >= 1, got {ids.dtype} {tuple(ids.shape)}")
        bad = ids[(ids < -1) | (ids >= len(texts))]
        if bad.numel():
            raise ValueError(f"caption ids must be -1 (padding) or in 0..{len(texts) - 1}, got {bad[:5].tolist()}")
        valid = ids >= 0  # (N, K)
        empty = (~valid.any(1)).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"every image needs at least one caption id; rows {empty[:5].tolist()} are all -1")
        misplaced = (valid[:, 1:] & ~valid[:, :-1]).any(1).nonzero().flatten()
        if misplaced.numel():  # draw() picks among the first `count` columns
            raise ValueError(f"-1 padding must follow a row's valid ids; rows {misplaced[:5].tolist()} break this")

    def __len__(self) -> int:
        return self.ids.shape[0]

    def draw(self, index: Tensor, generator: torch.Generator) -> Tensor:
        """One caption id per image in `index` (B,), uniform among that image's valid ids: (B,) int64."""
        rows = self.ids[index.to(self.ids.device)]  # (B, K)
        count = (rows >= 0).sum(1)  # (B,) valid ids per row, all at the front
        u = torch.rand(rows.shape[0], generator=generator, dtype=torch.float64, device=generator.device)
        pick = torch.minimum((u.to(rows.device) * count).long(), count - 1)  # (B,) in 0..count-1
        return rows.gather(1, pick.unsqueeze(1)).squeeze(1)  # (B,)


def with_article(phrase: str) -> str:
    """"an ankle boot", "a coat": the indefinite article by the first letter (right for our nouns)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def class_captions(labels: Tensor, phrases: Sequence[str], templates: Sequence[str]) -> Captions:
    """Every template filled with each class's phrase; image i gets all templates of class labels[i].

    texts[1 + c * T + t] = templates[t].format(phrases[c]) for T templates, so ids is (N, T), no padding.
    """
    texts = ("", *(template.format(phrase) for phrase in phrases for template in templates))
    ids = 1 + labels.to(torch.int64).unsqueeze(1) * len(templates) + torch.arange(len(templates))  # (N, T)
    return Captions(texts, ids)
