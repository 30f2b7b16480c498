"""Diffusion in the zero-centre-of-mass subspace, for point clouds such as molecules (Hoogeboom et al.
2022, "Equivariant Diffusion for Molecule Generation in 3D", §3.2; Xu et al. 2022, GeoDiff, §4.1).

A sample is a padded set (N, D + F): per slot a position (D = 3 numbers) and features (an atom's
one-hot element), and a mask `nodes` (N,) says which slots are real. A density over positions can
be translation invariant only on the subspace where the real positions sum to zero, so data, noise
and every state of a sampler live there. The orthogonal projection onto it is

    P x = positions minus their mean over the real slots; features unchanged; padded slots zero.

P is linear and idempotent, so for every sampler step x' = a x + b x0_hat + c z (all of them are of
this form, z the fresh noise) with x and x0_hat in the subspace, P x' = a x + b x0_hat + c P z: to
project the state after each step is to draw the noise in the subspace, N(0, P) (the "zero CoM
Gaussian" of Hoogeboom et al. 2022, §3.2). The pipeline does that through the space's `project`.

    x = centre(x, nodes)                                     # P x, for (B, N, D + F) and nodes (B, N)
    space = CentredSpace(counts)                             # counts: the data's atom-count histogram
    cond = space.complete(None, n=8, seed=0)                 # atom counts drawn for 8 samples
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from unnoise.conditioning import Condition
from unnoise.noise import per_sample_generators

POSITION_DIMS = 3  # the leading values of a slot that are a position
CONDITION_STREAM = 2  # the generators atom counts are drawn from: apart from the sampler's (0) and noising (1)


def _nodes(x: Tensor, nodes: Tensor | None) -> Tensor:
    """nodes (B, N) bool, checked against x (B, N, D + F); None: every slot real."""
    if x.ndim != 3 or x.shape[-1] < POSITION_DIMS:
        raise ValueError(f"a batch of point sets is (B, N, {POSITION_DIMS} + features), got {tuple(x.shape)}")
    if nodes is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if nodes.dtype != torch.bool or tuple(nodes.shape) != tuple(x.shape[:2]):
        raise ValueError(f"nodes must be a bool tensor of shape {tuple(x.shape[:2])}, got {nodes.dtype} "
                         f"{tuple(nodes.shape)}")
    if not bool(nodes.any(1).all()):
        raise ValueError("nodes leaves a set with no real slot")
    return nodes


def centre(x: Tensor, nodes: Tensor | None = None) -> Tensor:
    """P x: positions (x[..., :3]) minus their mean over the real slots, padded slots zero."""
    nodes = _nodes(x, nodes)
    mask = nodes.to(x.dtype).unsqueeze(-1)  # (B, N, 1)
    pos = x[..., :POSITION_DIMS]
    mean = (pos * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)  # (B, 1, D)
    return torch.cat([pos - mean, x[..., POSITION_DIMS:]], dim=-1) * mask


def centred_log_density(x: Tensor, mean: Tensor, sigma: float | Tensor, nodes: Tensor | None = None) -> Tensor:
    """(B,) log N(x; mean, sigma^2 I) of the positions on the zero-centre subspace, whose dimension is
    (M - 1) D for M real slots (Hoogeboom et al. 2022, §3.2, the isotropic Gaussian restricted there):

        -(M - 1) D / 2 log(2 pi sigma^2) - |x - mean|^2 / (2 sigma^2),   x and mean centred.
    """
    nodes = _nodes(x, nodes)
    for name, v in (("x", x), ("mean", mean)):
        off = (v[..., :POSITION_DIMS] * nodes.unsqueeze(-1)).sum(1).abs().max().item()
        if off > 1e-5 * max(1.0, v.abs().max().item()) * v.shape[1]:
            raise ValueError(f"{name} must be centred (its positions summing to 0 over the real slots), "
                             f"off by {off:.3g}: apply centre() first")
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    dims = ((nodes.sum(1) - 1) * POSITION_DIMS).to(x.dtype)  # (B,)
    sq = ((x - mean)[..., :POSITION_DIMS] ** 2 * nodes.unsqueeze(-1)).sum((1, 2))
    return -0.5 * dims * torch.log(2 * math.pi * sigma**2) - sq / (2 * sigma**2)


@dataclass
class CentredSpace:
    """The space a point-set model diffuses in: the data as they are (encode, decode: identity), the
    projection P onto the zero-centre subspace (`project`), and the number of real slots of a
    sample drawn from the data's histogram when the caller gives none (Hoogeboom et al. 2022, §4:
    M ~ p(M), then positions and features given M)."""

    counts: Tensor  # (N + 1,) probability of each number of real slots 0..N, from the training data
    scale = 1.0
    constrained = True  # the pipeline projects every state

    def __post_init__(self) -> None:
        p = torch.as_tensor(self.counts, dtype=torch.float64).flatten()
        if p.numel() < 2 or bool((p < 0).any()) or p[0] > 0 or abs(p.sum().item() - 1) > 1e-6:
            raise ValueError("counts must be probabilities of 0..N real slots, none at 0, summing to 1")
        self.counts = p

    @property
    def slots(self) -> int:
        return self.counts.numel() - 1

    def encode(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return z

    def project(self, x: Tensor, cond: Condition | None) -> Tensor:
        return centre(x, None if cond is None else cond.nodes)

    def complete(self, cond: Condition | None, n: int, seed: int, first: int = 0) -> Condition:
        """cond with `nodes` (n, N): given ones checked, else sample i's count drawn from the histogram
        with its own generator of (seed, first + i), so a sample's size does not depend on the batch."""
        if cond is not None and cond.nodes is not None:
            _nodes(torch.empty(n, self.slots, POSITION_DIMS), cond.nodes.cpu())
            return cond
        gens = per_sample_generators(seed, n, start=first, stream=CONDITION_STREAM)
        sizes = torch.cat([torch.multinomial(self.counts, 1, generator=g) for g in gens])  # (n,)
        nodes = torch.arange(self.slots)[None, :] < sizes[:, None]  # real slots first
        return Condition(nodes=nodes) if cond is None else replace(cond, nodes=nodes)
