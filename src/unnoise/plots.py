"""Figures as PNG files (matplotlib, headless), written atomically."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from PIL.PngImagePlugin import PngInfo  # noqa: E402
from torch import Tensor  # noqa: E402

from unnoise.convergence import Report  # noqa: E402
from unnoise.files import write_atomic  # noqa: E402


def _save(fig, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a figure as PNG; metadata: text chunks (e.g. the settings the figure was made with)."""
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png",
                                                          metadata=metadata))
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


def plot_samples(sets: dict[str, Tensor], path: str | os.PathLike, limit: float = 1.6,
                 metadata: dict[str, str] | None = None) -> Path:
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
    return _save(fig, path, metadata)


def plot_signals(signals: Tensor, path: str | os.PathLike, columns: int | None = None, limit: float = 3.0,
                 metadata: dict[str, str] | None = None) -> Path:
    """1-D signals (N, C, L) as a grid of line plots, one panel per signal (channels overlaid)."""
    if signals.ndim != 3:
        raise ValueError(f"expected signals of shape (N, C, L), got {tuple(signals.shape)}")
    n = signals.shape[0]
    columns = columns or min(n, 4)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 1.5 * rows), squeeze=False, sharex=True)
    values = signals.detach().float().cpu()
    for k, ax in enumerate(axes.flat):
        if k < n:
            for channel in values[k]:
                ax.plot(channel.numpy(), linewidth=0.9)
            ax.set_ylim(-limit, limit)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path, metadata)


def image_grid(images: Tensor, columns: int | None = None, gap: int = 1) -> Image.Image:
    """Images (N, C, H, W) in [-1, 1] tiled into one picture (grey for C = 1, RGB for C = 3) with
    `gap` black pixels between and around them."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    grid = np.zeros((rows * (h + gap) + gap, columns * (w + gap) + gap, c), dtype=np.uint8)
    for k in range(n):
        top, left = (gap + i * (size + gap) for i, size in zip(divmod(k, columns), (h, w)))
        grid[top:top + h, left:left + w] = pixels[k].transpose(1, 2, 0)
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def save_image_grid(images: Tensor, path: str | os.PathLike, columns: int | None = None,
                    metadata: dict[str, str] | None = None, gap: int = 1) -> Path:
    """`image_grid` as a PNG file; metadata: PNG text chunks (iTXt where not Latin-1)."""
    image = image_grid(images, columns, gap)
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value)  # Pillow writes iTXt for text outside Latin-1
    return write_atomic(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_losses(log_path: str | os.PathLike) -> list[tuple[int, float]]:
    """(step, loss) of every loss record of a JSON-lines log. Lines that are not such records (a
    line torn by a full disk or a crash) are skipped, with one warning naming the file and the count."""
    points, torn = [], 0
    for line in Path(log_path).read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            torn += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("loss"), (int, float)) and \
                isinstance(record.get("step"), int):
            points.append((record["step"], float(record["loss"])))
    if torn:
        warnings.warn(f"{log_path}: skipped {torn} unreadable line(s) (cut short by a crash or a full disk?)",
                      stacklevel=2)
    return points


def plot_loss(log_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The loss curve of a JSON-lines training log (raw and smoothed), as PNG."""
    points = read_losses(log_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    if points:
        steps, losses = zip(*points)
        ax.plot(steps, losses, alpha=0.35, label="loss")
        k = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k):i + 1]) / len(losses[max(0, i - k):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, label=f"running mean ({k + 1} logs)")
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_sweep(rows: list[dict], path: str | os.PathLike, metric: str, title: str = "") -> Path:
    """Sample quality against NFE, one line per sampler (log-log), and the Pareto front: the best
    quality any sampler reaches within each budget."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(samplers):
        pts = sorted((r["nfe"], r["FD"]) for r in rows if r["sampler"] == s)
        ax.plot(*zip(*pts, strict=True), "o-", ms=3.5, lw=1.2, color=cmap(i % 20), label=s)
    front, best = [], float("inf")
    for r in sorted(rows, key=lambda r: (r["nfe"], r["FD"])):
        if r["FD"] < best:
            best = r["FD"]
            front.append((r["nfe"], best))
    ax.step(*zip(*front, strict=True), where="post", color="black", lw=2, alpha=0.35, label="Pareto front")
    ax.set(xscale="log", yscale="log", xlabel="NFE (network evaluations per sample)", ylabel=metric,
           title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def plot_guidance(curves: dict[str, list[dict]], path: str | os.PathLike, features: str, title: str = "") -> Path:
    """Guidance scale against class accuracy, Fréchet distance, and precision and recall (the
    fidelity-diversity trade-off), one line per kind of guidance."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for i, (label, rows) in enumerate(curves.items()):
        color = plt.get_cmap("tab10")(i)
        scales = [r["scale"] for r in rows]
        axes[0].plot(scales, [r["accuracy"] for r in rows], "o-", color=color, label=label)
        axes[1].plot(scales, [r["FD"] for r in rows], "o-", color=color, label=label)
        axes[2].plot(scales, [r["precision"] for r in rows], "o-", color=color, label=f"{label}: precision")
        axes[2].plot(scales, [r["recall"] for r in rows], "s--", color=color, label=f"{label}: recall")
    axes[0].set(xlabel="guidance scale", ylabel=f"class accuracy [{features}]", ylim=(0, 1))
    axes[1].set(xlabel="guidance scale", ylabel=f"FD[{features}]", yscale="log")
    axes[2].set(xlabel="guidance scale", ylabel="precision / recall (k = 3)", ylim=(0, 1))
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_prompt_accuracy(rows: list[dict], groups: list[str], path: str | os.PathLike, features: str,
                         title: str = "") -> Path:
    """Share of samples showing the prompted class against guidance scale, per prompt group, and FD."""
    fig, (ax, ax_fd) = plt.subplots(1, 2, figsize=(11, 4.2))
    scales = [r["scale"] for r in rows]
    for g in groups:
        ax.plot(scales, [r[f"accuracy: {g}"] for r in rows], "o-", label=g)
    ax.set(xlabel="classifier-free guidance scale", ylabel=f"samples of the prompted class [{features}]",
           ylim=(0, 1))
    ax_fd.plot(scales, [r["FD"] for r in rows], "o-", color="black")
    ax_fd.set(xlabel="classifier-free guidance scale", ylabel=f"FD[{features}] (all prompts)", yscale="log")
    for a in (ax, ax_fd):
        a.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_prompt_grid(panels: dict[str, Tensor], prompts: list[str], path: str | os.PathLike) -> Path:
    """Samples by prompt, one panel per model side by side: panels[name] is (P * k, C, H, W) in [-1, 1]
    with sample i drawn from prompts[i mod P]; each panel's row p shows the k samples of prompt p."""
    p = len(prompts)
    fig, axes = plt.subplots(p, len(panels), figsize=(1.4 + 2.2 * len(panels), 0.62 * p + 0.5), squeeze=False)
    for col, (name, images) in enumerate(panels.items()):
        if images.ndim != 4 or images.shape[0] % p or images.shape[1] not in (1, 3):
            raise ValueError(f"{name}: expected (P * k, 1 or 3, H, W) images for {p} prompts, got "
                             f"{tuple(images.shape)}")
        k = images.shape[0] // p
        pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        for row in range(p):
            strip = np.concatenate([pixels[row + j * p] for j in range(k)], axis=1)  # prompt row's samples
            ax = axes[row, col]
            ax.imshow(strip.squeeze(-1) if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(prompts[row], rotation=0, ha="right", va="center", fontsize=8)
        axes[0, col].set_title(name, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
