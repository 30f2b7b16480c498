"""Samplers: stateless functions with one signature, registered by name.

    sample(denoise, schedule, x, times, *, cond=None, generator=None, callback=None, **options) -> x_0

`times` is a grid from `unnoise.grids.time_grid` (or any strictly decreasing times ending at 0);
`x` is drawn at times[0]. See `steps.py` for the conventions they share. The samplers exported here
record no autograd graph unless x requires grad (`steps.graph_only_if_asked`). Inversion (data to
noise: `ddim_invert`, `fixed_point_invert`) and `slerp` between noises live in `inversion.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from unnoise.samplers.adaptive import ode_adaptive
from unnoise.samplers.consistency import consistency
from unnoise.samplers.ddpm import ddim, ddpm
from unnoise.samplers.dpmsolver import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde
from unnoise.samplers.euler import euler, euler_ancestral, heun
from unnoise.samplers.inversion import InversionReport, ddim_invert, fixed_point_invert, slerp
from unnoise.samplers.langevin import annealed_langevin, euler_maruyama, langevin_correct, pc
from unnoise.samplers.plms import plms
from unnoise.samplers.steps import Callback, Denoiser, StepInfo, graph_only_if_asked
from unnoise.samplers.unipc import unipc

_SAMPLERS: dict[str, Callable] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "unipc": unipc,
    "plms": plms,
    "ode_adaptive": ode_adaptive,
    "euler_maruyama": euler_maruyama,
    "pc": pc,
    "annealed_langevin": annealed_langevin,
    "consistency": consistency,
}
SAMPLERS: dict[str, Callable] = {name: graph_only_if_asked(fn) for name, fn in _SAMPLERS.items()}
globals().update(SAMPLERS)  # unnoise.samplers.ddim is the registered (graph-free) function


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "get_sampler", "StepInfo", "Callback", "Denoiser", "langevin_correct",
           "ddim_invert", "fixed_point_invert", "slerp", "InversionReport", *SAMPLERS]
