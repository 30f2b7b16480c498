"""Reproducible Gaussian noise, per sample.

A sampler given one `torch.Generator` draws the whole batch from it, so a sample's noise depends on
its batch. Given a list of generators, one per sample, sample i draws only from its own: the same
seeds give the same samples whatever the batch size or order. `per_sample_generators` makes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


def per_sample_generators(seed: int, n: int, start: int = 0, stream: int = 0) -> list[torch.Generator]:
    """Generators for samples start .. start + n - 1 of run `seed`, decorrelated by SeedSequence;
    `stream` > 0 gives other, independent generators for the same samples (e.g. the noise that
    makes a given x_t, apart from the noise a sampler then draws)."""
    if n < 0 or start < 0 or stream < 0:
        raise ValueError(f"n, start and stream must be >= 0, got {n}, {start}, {stream}")
    key = [stream] if stream else []  # stream 0 keeps the original keys (seed, i)
    seeds = [np.random.SeedSequence([seed, start + i, *key]).generate_state(1, np.uint64)[0] for i in range(n)]
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def derived_seed(seed: int, *keys: int) -> int:
    """A seed of its own for part `keys` of the work of run `seed` (SeedSequence-mixed, so that it
    meets no other run's seed or part), for draws that must not repeat the run's own noise."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> 1)


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like x, from one generator, one per sample, or torch's global one."""
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}: give one per sample")
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device)
                        for g in generator]).to(x.device)
