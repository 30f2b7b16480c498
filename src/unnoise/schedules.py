"""Noise schedules: the Gaussian path x_t = alpha(t) * x0 + sigma(t) * noise, t in [0, 1].

t = 0 is the data itself for every schedule (alpha = 1, sigma = 0); t = 1 is the noisiest level.
`t_min` is the smallest positive time a sampling grid visits before its last step to t = 0
(DDPM's first index 1/T, Song et al.'s epsilon, EDM's sigma_min).

Symbols (Kingma et al. 2021, Karras et al. 2022):
    alpha, sigma     signal and noise scales              log_snr = 2 log(alpha / sigma)
    sigma_tilde      sigma / alpha, the "VE view" noise level of Karras et al. §4
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

TimeLike = float | Tensor
_F64 = torch.float64


def _as_f64(t: TimeLike) -> Tensor:
    return torch.as_tensor(t, dtype=_F64)


@dataclass(frozen=True)
class Schedule:
    """A forward process given by its two scale functions (evaluated in float64)."""

    name: str  # preset name, shown in tables and saved in checkpoints
    alpha_fn: Callable[[Tensor], Tensor]  # t (float64) -> alpha(t), with alpha(0) = 1
    sigma_fn: Callable[[Tensor], Tensor]  # t (float64) -> sigma(t), with sigma(0) = 0
    t_min: float  # smallest positive time sampling grids visit (see module docstring)
    num_timesteps: int | None = None  # discrete schedules: training times are multiples of 1/T
    log_snr_inverse: Callable[[Tensor], Tensor] | None = None  # closed form of t(log_snr), if known

    def alpha(self, t: TimeLike) -> Tensor:
        return self.alpha_fn(_as_f64(t))

    def sigma(self, t: TimeLike) -> Tensor:
        return self.sigma_fn(_as_f64(t))

    def noised(self, x0: Tensor, t: TimeLike, eps: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps, a draw of q(x_t | x0) (t a number, or one time per example),
        in x0's dtype."""
        t = _as_f64(t)
        shape = (-1,) + (1,) * (x0.ndim - 1) if t.ndim else ()
        a, s = (v.to(x0.device, x0.dtype).reshape(shape) for v in (self.alpha(t), self.sigma(t)))
        return a * x0 + s * eps

    def log_snr(self, t: TimeLike) -> Tensor:
        """2 log(alpha / sigma): +inf at t = 0, decreasing in t."""
        t = _as_f64(t)
        return 2.0 * (torch.log(self.alpha_fn(t)) - torch.log(self.sigma_fn(t)))

    def sigma_tilde(self, t: TimeLike) -> Tensor:
        """sigma / alpha: the noise level of the equivalent VE process (Karras et al. 2022, eq. 4)."""
        t = _as_f64(t)
        return self.sigma_fn(t) / self.alpha_fn(t)

    def t_from_log_snr(self, log_snr: TimeLike) -> Tensor:
        """Inverse of `log_snr` (monotone for every schedule here): the preset's closed form, else
        bisection, whose 64 halvings reach float64 precision. Values outside the schedule's range
        map to the nearest end, 0 or 1."""
        target = _as_f64(log_snr)
        if self.log_snr_inverse is not None:
            t = self.log_snr_inverse(target).clamp(0, 1)
            return torch.where(target == math.inf, torch.zeros_like(t), t)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target  # log_snr decreases in t: the root is later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        t = 0.5 * (lo + hi)
        return torch.where(target == math.inf, torch.zeros_like(t), t)

    def t_from_sigma_tilde(self, sigma_tilde: TimeLike) -> Tensor:
        return self.t_from_log_snr(-2.0 * torch.log(_as_f64(sigma_tilde)))

    def derivatives(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """(d alpha / dt, d sigma / dt) by forward-mode autodiff of the scale functions."""
        t = _as_f64(t)
        ones = torch.ones_like(t)
        _, d_alpha = torch.func.jvp(self.alpha_fn, (t,), (ones,))
        _, d_sigma = torch.func.jvp(self.sigma_fn, (t,), (ones,))
        return d_alpha, d_sigma


# ---------------------------------------------------------------------------------------------
# Variance-preserving schedules: alpha^2 + sigma^2 = 1, so log_snr alone fixes both.


def _vp_from_log_snr(name: str, log_snr_fn: Callable[[Tensor], Tensor], t_min: float,
                     num_timesteps: int | None = None, inverse: Callable | None = None) -> Schedule:
    # alpha^2 = sigmoid(log_snr), sigma^2 = sigmoid(-log_snr): exact in the tails, unlike sqrt(1 - a^2).
    return Schedule(name, lambda t: torch.sigmoid(log_snr_fn(t)).sqrt(),
                    lambda t: torch.sigmoid(-log_snr_fn(t)).sqrt(), t_min, num_timesteps, inverse)


def from_alphas_cumprod(alphas_cumprod: Tensor, name: str = "discrete") -> Schedule:
    """A discrete VP schedule from alpha_bar_1..alpha_bar_T (DDPM's cumulative product).

    Time t = i / T carries alpha_bar_i, with alpha_bar_0 = 1 at t = 0; between indices log-SNR is
    interpolated linearly, and times below 1/T are clean. A zero alpha_bar_T (zero
    terminal SNR) gives log_snr = -inf at t = 1.
    """
    ab = torch.as_tensor(alphas_cumprod, dtype=_F64).flatten()
    if ab.numel() < 1 or not bool(((ab >= 0) & (ab < 1)).all()) or not bool((ab[1:] <= ab[:-1]).all()):
        raise ValueError("alphas_cumprod must be non-increasing values in [0, 1), "
                         f"got {ab.numel()} values in [{ab.min().item():.3g}, {ab.max().item():.3g}]")
    T = ab.numel()
    table = torch.cat([ab.new_tensor([math.inf]), torch.log(ab) - torch.log1p(-ab)])  # (T+1,)

    def log_snr(t: Tensor) -> Tensor:
        x = (t * T).clamp(0, T)
        i = x.floor().clamp(max=T - 1).long()
        frac = x - i
        lo, hi = table[i], table[i + 1]
        # Index 0 is +inf (clean): (0, 1/T) stays clean rather than computing inf - inf. At an
        # index the derivative is the right-hand one, (hi - lo) T.
        return torch.where(torch.isinf(lo), lo, lo + frac * (hi - lo))

    def inverse(lam: Tensor) -> Tensor:
        flat = lam.reshape(-1)
        j = torch.searchsorted(-table[1:], -flat).clamp(1, T - 1)  # table[j] >= lam > table[j + 1]
        lo, hi = table[j], table[j + 1]
        t = (j + (flat - lo) / (hi - lo)) / T
        return torch.where(flat >= table[1], 1.0 / T, t).view_as(lam)  # above index 1: its time

    return _vp_from_log_snr(name, log_snr, 1.0 / T, T, inverse)


def ddpm_linear(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Ho et al. 2020 §4: betas linear in 1e-4..0.02 over T = 1000, alpha_bar = prod(1 - beta)."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=_F64)
    return from_alphas_cumprod(torch.cumprod(1 - betas, 0), "ddpm")


def cosine(s: float = 0.008) -> Schedule:
    """Nichol & Dhariwal 2021, eq. 17 in continuous time: alpha_bar = f(t) / f(0),
    f(t) = cos((t + s) / (1 + s) * pi / 2)^2. alpha(1) = 0 (zero terminal SNR)."""
    f0 = math.cos(s / (1 + s) * math.pi / 2)

    def alpha(t: Tensor) -> Tensor:
        # cos((t + s) / (1 + s) pi / 2) written as a sine, which is exactly 0 at t = 1.
        return (torch.sin((1 - t) / (1 + s) * math.pi / 2) / f0).clamp(0, 1)

    def inverse(lam: Tensor) -> Tensor:  # cos(u pi / 2) = f0 alpha, u = (t + s) / (1 + s)
        return torch.acos(f0 * torch.sigmoid(lam).sqrt()) * 2 / math.pi * (1 + s) - s

    return Schedule("cosine", alpha, lambda t: (1 - alpha(t) ** 2).clamp(min=0).sqrt(), 1e-3, None, inverse)


def vp_continuous(beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """Song et al. 2021, eq. 11 / App. B: log alpha(t) = -t^2 (b_max - b_min) / 4 - t b_min / 2."""
    if not 0 <= beta_min < beta_max:
        raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")

    def log_snr(t: Tensor) -> Tensor:
        log_alpha2 = -0.5 * t**2 * (beta_max - beta_min) - t * beta_min
        return log_alpha2 - torch.log(-torch.expm1(log_alpha2))  # log(a^2 / (1 - a^2))

    def inverse(lam: Tensor) -> Tensor:  # root of (b_max - b_min) t^2 / 2 + b_min t + log alpha^2 = 0
        d = beta_max - beta_min
        return (-beta_min + torch.sqrt(beta_min**2 - 2 * d * torch.nn.functional.logsigmoid(lam))) / d

    return _vp_from_log_snr("vp", log_snr, 1e-3, None, inverse)


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> Schedule:
    """Song et al. 2021, eq. 9 (NCSN): alpha = 1, sigma geometric from sigma_min (t -> 0+) to
    sigma_max (t = 1); sigma(0) = 0 is the data itself."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ratio = math.log(sigma_max / sigma_min)

    def sigma(t: Tensor) -> Tensor:
        return torch.where(t > 0, sigma_min * torch.exp(t * ratio), torch.zeros_like(t))

    def inverse(lam: Tensor) -> Tensor:
        return (torch.log(torch.exp(-lam / 2) / sigma_min) / ratio).clamp(min=0)

    return Schedule("ve", torch.ones_like, sigma, 1e-5, None, inverse)


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0) -> Schedule:
    """Karras et al. 2022, Table 1: alpha = 1, sigma(t) = t (here scaled so t = 1 is sigma_max).
    Sample it with the Karras grid (rho = 7)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    return Schedule("edm", torch.ones_like, lambda t: sigma_max * t, sigma_min / sigma_max, None,
                    lambda lam: torch.exp(-lam / 2) / sigma_max)


def rectified_flow() -> Schedule:
    """Liu et al. 2022; Lipman et al. 2022: alpha = 1 - t, sigma = t."""
    return Schedule("flow", lambda t: 1 - t, lambda t: t.clone(), 1e-3, None, lambda lam: torch.sigmoid(-lam / 2))


def zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Lin et al. 2024, Algorithm 1: shift and scale alpha so alpha(1) = 0 while alpha at the anchor
    is kept (the first index 1/T for discrete schedules, as in the paper; t = 0 otherwise), and keep
    the process variance preserving. Only variance-preserving schedules can be rescaled so."""
    probe = torch.linspace(0, 1, 11, dtype=_F64)
    if not torch.allclose(schedule.alpha(probe) ** 2 + schedule.sigma(probe) ** 2, torch.ones_like(probe)):
        raise ValueError(f"zero-terminal-SNR rescaling needs a variance-preserving schedule, "
                         f"not {schedule.name!r}; use ddpm, cosine or vp")
    anchor = schedule.t_min if schedule.num_timesteps else 0.0
    a_anchor = schedule.alpha(anchor).item()
    a_end = schedule.alpha(1.0).item()
    if a_end <= 0:
        return schedule
    scale = a_anchor / (a_anchor - a_end)

    def alpha(t: Tensor) -> Tensor:
        rescaled = (schedule.alpha_fn(t) - a_end) * scale
        return torch.where(t < anchor, schedule.alpha_fn(t), rescaled.clamp(0, 1))

    def sigma(t: Tensor) -> Tensor:
        return (1 - alpha(t) ** 2).clamp(min=0).sqrt()

    def inverse(lam: Tensor) -> Tensor:  # undo the affine map on alpha, then the base inverse
        a = (torch.sigmoid(lam).sqrt() / scale + a_end).clamp(max=1.0)
        return schedule.t_from_log_snr(2 * torch.log(a) - torch.log1p(-(a**2)))

    return Schedule(f"{schedule.name}-ztsnr", alpha, sigma, schedule.t_min, schedule.num_timesteps, inverse)


PRESETS: dict[str, Callable[[], Schedule]] = {
    "ddpm": ddpm_linear,
    "cosine": cosine,
    "vp": vp_continuous,
    "ve": ve,
    "edm": edm,
    "flow": rectified_flow,
}


def get_schedule(name: str) -> Schedule:
    """A preset by name; a `-ztsnr` suffix applies zero-terminal-SNR rescaling."""
    base, ztsnr = (name[: -len("-ztsnr")], True) if name.endswith("-ztsnr") else (name, False)
    if base not in PRESETS:
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(PRESETS)} "
                         "(optionally with the suffix -ztsnr)")
    schedule = PRESETS[base]()
    return zero_terminal_snr(schedule) if ztsnr else schedule
