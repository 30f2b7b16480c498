"""A trained denoiser against the exact one: where the data's law is known (a Gaussian, a mixture),
E[x0 | x_t] is closed form, so a network's denoising error can be put beside the least error any
denoiser can reach, noise level by noise level.

    x0, _ = test.batch(torch.arange(500))          # held-out examples of a set with a known law
    rows = denoising_error(pipe.denoiser, test.gaussian().denoiser(pipe.schedule), x0, pipe.schedule)
    rows[k].ratio     # the network's mean squared error over the optimum's, on the same draws (>= 1 in law)

Both denoisers see the same x0 (held-out data) and the same noise, so most of the sampling noise
cancels from the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unnoise.samplers.steps import Denoiser
from unnoise.schedules import Schedule

SIGMA_TILDES = (0.02, 0.1, 0.3, 1.0, 3.0)  # noise levels sigma / alpha at which the error is read


@dataclass(frozen=True)
class DenoisingRow:
    sigma_tilde: float  # the noise level sigma / alpha
    t: float  # its time on the schedule
    mse: float  # the denoiser's mean squared error per dimension, E|D(x_t) - x0|^2 / d
    optimal_mse: float  # the exact denoiser's, on the same draws
    ratio: float  # mse / optimal_mse


@torch.no_grad()
def denoising_error(denoise: Denoiser, exact: Denoiser, x0: Tensor, schedule: Schedule,
                    sigma_tildes=SIGMA_TILDES, seed: int = 0, batch_size: int = 500,
                    device: torch.device | str = "cpu") -> list[DenoisingRow]:
    """Per noise level, the mean squared error of `denoise` and of `exact` on x_t = alpha x0 + sigma eps
    for the examples x0 (n, *shape), the same noise for both; `device`: where `denoise` computes."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for level in sigma_tildes:
        t = schedule.t_from_sigma_tilde(torch.tensor(float(level), dtype=torch.float64)).clamp(schedule.t_min, 1.0).item()
        alpha, sigma = schedule.alpha(t).item(), schedule.sigma(t).item()
        errors = torch.zeros(2, dtype=torch.float64)
        for lo in range(0, len(x0), batch_size):
            clean = x0[lo:lo + batch_size]
            x_t = alpha * clean + sigma * torch.randn(clean.shape, generator=g)
            for k, d in enumerate((denoise, exact)):
                estimate = d(x_t.to(device), t).double().cpu()
                errors[k] += ((estimate - clean.double()) ** 2).sum()
        mse, optimal = (errors / x0.numel()).tolist()
        rows.append(DenoisingRow(float(level), t, mse, optimal, mse / optimal))
    return rows


def format_denoising(rows: list[DenoisingRow]) -> str:
    """Markdown: one row per noise level."""
    lines = ["| sigma~ | t | MSE | optimal MSE | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {r.sigma_tilde:g} | {r.t:.4f} | {r.mse:.4g} | {r.optimal_mse:.4g} | {r.ratio:.3f} |" for r in rows]
    return "\n".join(lines)
