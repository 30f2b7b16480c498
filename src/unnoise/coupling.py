"""Minibatch optimal-transport coupling of data and noise (Tong et al. 2023, §3.2, "OT-CFM";
Pooladian et al. 2023).

Independent pairs (x0_i, eps_i) make the paths of a flow cross, and the learned velocity averages
over the crossings: curved trajectories that need many steps. Within a batch, reordering the noise
by the assignment that minimises the total squared distance sum_i |x0_i - eps_pi(i)|^2 (the exact
discrete OT plan between the two empirical batches, a permutation) pairs each example with nearby
noise, and as the batch grows the coupling tends to the OT plan between data and noise, whose
straight-line interpolants do not cross. The marginals are untouched: eps is still N(0, I).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def ot_pairing(x0: Tensor, noise: Tensor) -> Tensor:
    """The permutation pi (B,) of the noise rows that minimises sum_i |x0_i - noise_pi(i)|^2
    (Hungarian algorithm, exact; O(B^3), a few ms for B = 256)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    cost = torch.cdist(x0.flatten(1).double(), noise.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.long)
