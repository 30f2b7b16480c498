"""How straight a model's probability-flow paths are (Liu et al. 2022, Definition 3.6):

    S = E ∫_0^1 |(x_1 - x_0) - v(x_t, t)|^2 dt,    v = dx_t / dt along the ODE from x_1 (noise) to x_0

S = 0 exactly when every trajectory is a straight line travelled at constant speed, which one Euler
step then solves exactly; reflow lowers it (their Thm. 3.7). Here S is measured on the path the
model's own ODE takes from noise: DDIM (eta = 0) on a uniform grid of `steps` in t (for a flow, DDIM
is Euler's method in t), with v(x_t, t) = alpha'(t) x0_hat + sigma'(t) eps_hat at each grid time and
the integral as the grid's average; S is reported per dimension (divided by d), so it does not grow
with the data's size. Any model has an S, in its own schedule's coordinates; for a flow (alpha = 1 - t,
sigma = t) x_1 is the noise itself.
"""

from __future__ import annotations

import torch

from unnoise.pipeline import BatchStep, Pipeline


def straightness(pipe: Pipeline, n: int = 256, *, steps: int = 100, seed: int = 0, batch_size: int | None = None,
                 progress: bool | None = None, **conditions) -> float:
    """S per dimension over n trajectories (sample i from seed (seed, i), as `pipe.sample` draws it);
    conditions: label, labels, prompts, guidance, as `pipe.sample` takes them."""
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"straightness needs at least 2 steps, got {steps!r}")
    schedule, sums = pipe.schedule, {}

    def record(info: BatchStep) -> None:
        s, key = info.step, info.rows.start
        x0_hat, t = s.x0_hat.double(), torch.tensor(s.t, dtype=torch.float64)
        a_t, s_t = schedule.alpha(t).item(), schedule.sigma(t).item()
        if s.i == 0:  # DDIM keeps eps_hat within a step: recover it (and x_1) from the step's end
            a_n, s_n = schedule.alpha(s.t_next).item(), schedule.sigma(s.t_next).item()
            eps = (s.x.double() - a_n * x0_hat) / s_n
            sums[key] = {"x1": a_t * x0_hat + s_t * eps, "v": 0.0, "v2": 0.0}
        else:
            eps = (sums[key]["x"] - a_t * x0_hat) / s_t
        d_alpha, d_sigma = (d.item() for d in schedule.derivatives(t))
        v = d_alpha * x0_hat + d_sigma * eps
        entry = sums[key]
        entry["v"], entry["v2"], entry["x"] = entry["v"] + v, entry["v2"] + v.flatten(1).pow(2).sum(1), s.x.double()

    pipe.sample(n, sampler="ddim", steps=steps, spacing="trailing", options={"eta": 0.0}, seed=seed,
                batch_size=batch_size, callback=record, progress=progress, decode=False, **conditions)
    total, dims = 0.0, 0
    for entry in sums.values():  # sum_i |D - v_i|^2 = N |D|^2 - 2 D . sum_i v_i + sum_i |v_i|^2, D = x_1 - x_0
        drift = (entry["x1"] - entry["x"]).flatten(1)
        per_sample = steps * drift.pow(2).sum(1) - 2 * (drift * entry["v"].flatten(1)).sum(1) + entry["v2"]
        total, dims = total + per_sample.sum().item() / steps, dims + drift.numel()
    return total / dims

