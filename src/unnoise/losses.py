"""The training loss: weight(t) * |network output - target|^2, with t drawn from p(t).

    loss = DiffusionLoss(schedule, parameterization, LossConfig())
    per_example = loss(net, x0, cond, generator)       # (B,)

Weightings are stated as weights on the x0 error and carried to the network's output space by the
parameterisation's own slope: every adapter is affine, x0_hat = a x_t + b F, so
|x0_hat - x0|^2 = b^2 |F - target|^2 and a weight w on the x0 error is w b^2 on the output.

    simple    weight 1 on |F - target|^2, whatever the target (Ho et al. 2020, eq. 14)
    min-snr   w = min(SNR, gamma) on the x0 error (Hang et al. 2023, eq. 7)
    edm       w = lambda(sigma) = (s~^2 + s_d^2) / (s~ s_d)^2 on the x0 error (Karras et al. 2022, eq. 8;
              with EDM preconditioning this is weight 1 on F)
    truncated-snr  w = max(SNR, 1) on the x0 error (Salimans & Ho 2022, §4 "truncated SNR weighting")

Time distributions: "uniform" in t (on the indices 1..T for discrete schedules), "lognormal"
ln s~ ~ N(p_mean, p_std^2) (Karras et al. 2022, §5 "Training"), mapped to t through the schedule, or
"logit-normal" t = sigmoid(u), u ~ N(logit_mean, logit_std^2) (Esser et al. 2024, eq. 19: more
weight on the middle of a flow's path).

Coupling of data and noise in a batch: "independent" (each x0 with its own eps), or "ot", minibatch
optimal transport (Tong et al. 2023, §3.2; Pooladian et al. 2023): the batch's noise reordered by the
exact assignment that minimises sum_i |x0_i - eps_pi(i)|^2 (scipy's linear_sum_assignment), which
straightens the paths a flow learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from unnoise.parameterization import EDMPreconditioning, Parameterization, path_point
from unnoise.schedules import Schedule

WEIGHTINGS = ("simple", "min-snr", "edm", "truncated-snr")
TIME_SAMPLING = ("uniform", "lognormal", "logit-normal")
COUPLINGS = ("independent", "ot")


@dataclass(frozen=True)
class LossConfig:
    weighting: str = "edm"  # simple | min-snr | edm | truncated-snr (see module docstring)
    time_sampling: str = "lognormal"  # uniform | lognormal | logit-normal
    p_mean: float = -1.2  # lognormal: mean of ln(sigma~) (Karras et al. use -1.2)
    p_std: float = 1.2  # lognormal: std of ln(sigma~)
    logit_mean: float = 0.0  # logit-normal: mean of logit(t) (Esser et al. use 0)
    logit_std: float = 1.0  # logit-normal: std of logit(t) (Esser et al. use 1)
    coupling: str = "independent"  # independent | ot (minibatch optimal transport of data to noise)
    min_snr_gamma: float = 5.0  # gamma of min-SNR weighting (Hang et al. use 5)
    sigma_data: float = 0.5  # data std in the edm weighting
    hint_noise: float = 0.0  # the image condition noised to a level s ~ U(0, hint_noise) (Ho et al. 2022, §4.2)

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"time_sampling must be one of {', '.join(TIME_SAMPLING)}, got {self.time_sampling!r}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}, got {self.coupling!r}")
        if self.p_std <= 0 or self.logit_std <= 0 or self.min_snr_gamma <= 0 or self.sigma_data <= 0:
            raise ValueError("p_std, logit_std, min_snr_gamma and sigma_data must be > 0")
        if not 0 <= self.hint_noise <= 1:
            raise ValueError(f"hint_noise must lie in [0, 1] (a time of the schedule), got {self.hint_noise}")


class DiffusionLoss:
    """Draws its own times and noise; returns per-example losses."""

    def __init__(self, schedule: Schedule, parameterization: Parameterization, config: LossConfig = LossConfig()):
        self.schedule, self.parameterization, self.config = schedule, parameterization, config
        self._derivatives = getattr(parameterization, "needs_derivatives", False)

    def sample_times(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n,) float64 times in [t_min, 1]."""
        s, c = self.schedule, self.config
        if c.time_sampling == "lognormal":
            log_sigma = c.p_mean + c.p_std * torch.randn(n, generator=generator, dtype=torch.float64)
            t = s.t_from_sigma_tilde(log_sigma.exp())
        elif c.time_sampling == "logit-normal":
            t = torch.sigmoid(c.logit_mean + c.logit_std * torch.randn(n, generator=generator, dtype=torch.float64))
        elif s.num_timesteps:
            t = torch.randint(1, s.num_timesteps + 1, (n,), generator=generator).double() / s.num_timesteps
        else:
            t = torch.rand(n, generator=generator, dtype=torch.float64)
        return t.clamp(s.t_min, 1.0)

    def x0_weight(self, t: Tensor) -> Tensor:
        """The weight on the x0 error at times t (float64), for min-snr, edm and truncated-snr."""
        st = self.schedule.sigma_tilde(t)
        if self.config.weighting == "min-snr":
            return torch.clamp(st**-2, max=self.config.min_snr_gamma)
        if self.config.weighting == "truncated-snr":
            return torch.clamp(st**-2, min=1.0)
        sd = self.config.sigma_data
        return (st**2 + sd**2) / (st * sd) ** 2

    def __call__(self, net: Any, x0: Tensor, cond: Any = None, generator: torch.Generator | None = None,
                 noise: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """Per-example loss (B,). `noise` and `t` may be given (for reproducible sharding); else drawn."""
        B = x0.shape[0]
        t = self.sample_times(B, generator) if t is None else t
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device) if noise is None else noise
        p = path_point(self.schedule, t.to(x0.device, x0.dtype), x0.ndim, self._derivatives)
        x_t = p.alpha * x0 + p.sigma * eps
        x_in, t_in = self.parameterization.network_inputs(x_t, p)
        out = net(x_in, t_in, cond)
        target = self.parameterization.target(x0, eps, p)
        per_example = ((out.to(target.dtype) - target) ** 2).flatten(1).mean(1)  # bf16 outputs upcast
        if self.config.weighting == "simple":
            return per_example
        return per_example * self._output_weight(t, p, x_t).to(per_example.device)

    def _output_weight(self, t: Tensor, p, x_t: Tensor) -> Tensor:
        """w(t) b(t)^2 with b = d x0_hat / d F, read off the (affine) adapter."""
        if isinstance(self.parameterization, EDMPreconditioning) and self.config.weighting == "edm":
            return torch.ones(t.shape[0], dtype=torch.float32)  # lambda c_out^2 = 1 exactly (eq. 8)
        ones = torch.ones((t.shape[0],) + (1,) * (x_t.ndim - 1), dtype=torch.float64, device=x_t.device)
        p64 = type(p)(p.t.double(), *(v.double() if isinstance(v, Tensor) else v
                                     for v in (p.alpha, p.sigma, p.d_alpha, p.d_sigma)))
        zero = torch.zeros_like(ones)
        b = (self.parameterization.x0(ones, zero, p64) - self.parameterization.x0(zero, zero, p64)).flatten()
        return (self.x0_weight(t.to(b.device)) * b**2).to(x_t.dtype)


# ---- the autoencoder of latent diffusion ---------------------------------------------------------


@dataclass(frozen=True)
class AutoencoderLossConfig:
    kl_weight: float = 1e-6  # on KL(q(z | x) || N(0, I)) (Rombach et al. 2022 use 1e-6)
    perceptual_weight: float = 1.0  # on the feature-map distance in the data set's feature network; 0 = off
    disc_weight: float = 0.5  # on the adversarial term, times the adaptive weight; 0 = no discriminator
    disc_start: int = 2000  # optimiser step at which the discriminator starts (the autoencoder first learns to
    #                         reconstruct; Esser et al. 2021 start late too)
    disc_lr: float = 2e-4  # the discriminator's AdamW learning rate
    scale_images: int = 2000  # training images whose latents set the scale factor (unit variance)

    def __post_init__(self):
        for name in ("kl_weight", "perceptual_weight", "disc_weight", "disc_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"autoencoder.{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_lr <= 0 or self.scale_images < 2:
            raise ValueError("autoencoder.disc_lr must be > 0 and scale_images >= 2")


def reconstruction_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean absolute error per example (B,): L1, as LDM's autoencoders use (sharper than L2)."""
    return (x_hat.float() - x.float()).abs().flatten(1).mean(1)


def perceptual_loss(feature_net, x: Tensor, x_hat: Tensor) -> Tensor:
    """Per example (B,): squared distance of channel-normalised feature maps, averaged over positions
    and summed over stages: LPIPS's form (Zhang et al. 2018, eq. 1) with unit channel weights, in the
    features of unnoise's own classifier for the data set (no ImageNet network exists offline)."""
    total = 0.0
    for a, b in zip(feature_net.stage_maps(x), feature_net.stage_maps(x_hat), strict=True):
        a, b = F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10)
        total = total + ((a - b) ** 2).sum(1).flatten(1).mean(1)
    return total


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """(mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) / 2 (Lim & Ye 2017; as in LDM)."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4,
                    mean=lambda g: g) -> Tensor:
    """||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + 1e-4) (Esser et al. 2021, eq. 7), at the decoder's
    last layer G_L: balances the two terms whatever their scales; detached. `mean` averages the
    gradients over processes first, so N processes weigh as one process with their whole batch does."""
    g_rec = mean(torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0])
    g_gan = mean(torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0])
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()
