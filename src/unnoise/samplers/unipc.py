"""UniPC (Zhao et al. 2023): the unified predictor UniP-p and corrector UniC, data prediction, with
B(h) = e^h - 1 (the "bh2" variant, their eq. for B_2).

For a step t_i -> t_{i+1} with h = lambda_{i+1} - lambda_i (lambda = log(alpha / sigma)), earlier
estimates m_{i-k} at lambda_{i-k} give r_k = (lambda_{i-k} - lambda_i) / h and
D_k = (m_{i-k} - m_i) / r_k. Both updates have the form (Zhao et al. Algorithms 2-3, x0 form):

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) m_i
              - alpha_{i+1} B(-h) sum_k rho_k D_k

UniP uses the p - 1 earlier estimates; UniC adds D = m_{i+1} - m_i, where m_{i+1} is the estimate at
the predicted point, which the next predictor reuses: the corrector costs no extra call. The rho
solve R rho = b (their eq. 8) with R_jk = r_k^(j-1) and b_j = phi_{j+1}(h) j! / B(h).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from unnoise.noise import Generators
from unnoise.samplers.steps import Callback, Denoiser, path_grid, report
from unnoise.schedules import Schedule


def _rhos(h: float, rks: list[float], corrector: bool) -> list[float]:
    """rho for UniP (len(rks) unknowns) or UniC (len(rks) + 1 unknowns, the last r being 1)."""
    hh = -h  # data prediction integrates in -lambda
    b_h = math.expm1(hh)  # B(h) for bh2
    rks = rks + [1.0]
    n = len(rks)
    # b_j = phi_{j+1}(hh) * j! / B(h), with phi built recursively as in the paper's Algorithm.
    b, h_phi_k, factorial = [], math.expm1(hh) / hh - 1, 1
    for j in range(1, n + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = [[r ** (j - 1) for r in rks] for j in range(1, n + 1)]
    if corrector:
        return [0.5] if n == 1 else _solve(R, b)
    if n == 1:
        return []
    return [0.5] if n == 2 else _solve([row[:-1] for row in R[:-1]], b[:-1])


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting for the tiny (<= 3 x 3) systems above: in plain
    Python it costs a few microseconds, a NumPy call several times that."""
    n = len(b)
    m = [row[:] + [rhs] for row, rhs in zip(a, b)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            m[r] = [v - f * w for v, w in zip(m[r], m[col])]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def _combine(x: Tensor, grid, i: int, m0: Tensor, history: list[tuple[Tensor, float]],
             rhos: list[float], m_new: Tensor | None = None) -> Tensor:
    """The shared update from t_i to t_{i+1} as one linear combination of x, m0, history, m_new."""
    h = grid.lam(i + 1) - grid.lam(i)
    a_s = grid.alpha[i + 1]
    b_h = math.expm1(-h)
    out = x.mul(grid.sigma[i + 1] / grid.sigma[i])
    coef_m0 = -a_s * b_h  # -alpha_s (e^{-h} - 1) m0
    for rho, (m_k, lam_k) in zip(rhos, history):
        r_k = (lam_k - grid.lam(i)) / h
        w = -a_s * b_h * rho / r_k  # on D_k = (m_k - m0) / r_k
        out.add_(m_k, alpha=w)
        coef_m0 -= w
    if m_new is not None:
        w = -a_s * b_h * rhos[-1]
        out.add_(m_new, alpha=w)
        coef_m0 -= w
    return out.add_(m0, alpha=coef_m0)


def unipc(denoise: Denoiser, schedule: Schedule, x: Tensor, times, *, order: int = 3,
          corrector: bool = True, lower_order_final: bool = True, cond: Any = None,
          generator: Generators = None, callback: Callback | None = None) -> Tensor:
    """UniPC-p with B(h) = e^h - 1: order p predictor, UniC corrector (order p + 1), one call a
    step. The first steps warm up at lower order; with `lower_order_final` the last ones step at
    order min(p, steps left), as Zhao et al.'s code does: on grids whose last steps are long (such as
    "trailing") extrapolating at full order there costs accuracy (measured in docs/benchmarks.md), and
    one step at order 2 keeps the global order 3. `generator` is accepted for the common signature."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    grid = path_grid(schedule, times)
    history: list[tuple[Tensor, float]] = []  # (m, lambda) before the current point, newest first
    last = None  # (x_i, m_i, history, i) of the previous predictor, for the corrector
    for i in range(grid.steps):
        m = denoise(x, grid.t[i], cond)
        if corrector and last is not None and grid.sigma[i + 1] > 0:
            x_prev, m_prev, hist_prev, j = last
            h = grid.lam(j + 1) - grid.lam(j)
            rks = [(lam - grid.lam(j)) / h for _, lam in hist_prev]
            x = _combine(x_prev, grid, j, m_prev, hist_prev, _rhos(h, rks, corrector=True), m_new=m)
        if grid.sigma[i + 1] == 0:
            x = report(callback, grid, i, m, m)
            continue
        step_order = min(order, grid.steps - i) if lower_order_final else order
        hist = history[: step_order - 1]
        h = grid.lam(i + 1) - grid.lam(i)
        rks = [(lam - grid.lam(i)) / h for _, lam in hist]
        last = (x, m, hist, i)
        x_next = _combine(x, grid, i, m, hist, _rhos(h, rks, corrector=False))
        if math.isfinite(grid.lam(i)):
            history = [(m, grid.lam(i))] + history
        else:  # an estimate at alpha = 0 is no use to later steps, nor to the corrector
            last = None
        x = report(callback, grid, i, x_next, m)
    return x
