"""A network stand-in that predicts each parameterisation's exact target from the oracle."""

import torch

from unnoise.parameterization import PathPoint, VelocityPrediction, path_point


def oracle_network(mixture, schedule, parameterization):
    """A 'network' that outputs exactly what the parameterization's target is for the oracle."""
    denoise = mixture.denoiser(schedule)

    def net(x_in, t_in, cond=None):
        if parameterization.__class__.__name__ in ("EDMPreconditioning", "ConsistencyParameterization"):
            t = schedule.t_from_sigma_tilde(torch.exp(4 * t_in.double())).to(x_in.dtype)
            a, s = schedule.alpha(t).view(-1, 1).to(x_in.dtype), schedule.sigma(t).view(-1, 1).to(x_in.dtype)
            x = x_in * (s**2 + a**2 * parameterization.sigma_data**2).sqrt()
        else:
            t, x = t_in, x_in
        if isinstance(parameterization, VelocityPrediction):
            p = path_point(schedule, t, x.ndim)
        else:  # the other targets need no derivatives, which are slow to take
            shape = (-1,) + (1,) * (x.ndim - 1)
            a, s = schedule.alpha(t.double()).to(x.dtype), schedule.sigma(t.double()).to(x.dtype)
            p = PathPoint(t, a.reshape(shape), s.reshape(shape), 0.0, 0.0)
        x0 = denoise(x, t)
        eps = (x - p.alpha * x0) / p.sigma
        return parameterization.target(x0, eps, p)

    return net
