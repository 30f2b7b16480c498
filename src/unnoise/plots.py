"""Figures as PNG files (matplotlib, headless), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from unnoise.convergence import Report  # noqa: E402
from unnoise.files import write_atomic  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def plot_convergence(report: Report, path: str | os.PathLike, title: str = "") -> Path:
    """Log-log endpoint error against NFE for the deterministic samplers, with slope guides."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in report.rows:
        if row.errors:
            note = f"order {row.order:.2f}" if row.order is not None else "tolerances 1e-3..1e-8"
            ax.loglog(row.nfe, row.errors, "o-", ms=3, label=f"{row.case.label} ({note})")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("denoiser calls (NFE)")
    ax.set_ylabel("RMS endpoint error vs reference ODE solve")
    ax.set_title(title or "Convergence on the exact Gaussian-mixture denoiser")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_samples(sets: dict[str, Tensor], path: str | os.PathLike, limit: float = 1.6) -> Path:
    """Scatter plots of 2-D sample sets side by side (first two coordinates)."""
    fig, axes = plt.subplots(1, len(sets), figsize=(3.2 * len(sets), 3.4), squeeze=False)
    for ax, (label, pts) in zip(axes[0], sets.items()):
        pts = pts.flatten(1).cpu().double()
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(label, fontsize=9)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)
