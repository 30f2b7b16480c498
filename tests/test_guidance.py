import pytest
import torch

from unnoise.conditioning import Condition
from unnoise.convergence import CountingDenoiser
from unnoise.grids import time_grid
from unnoise.guidance import ClassifierFreeGuidance
from unnoise.oracle import GaussianMixture
from unnoise.samplers import get_sampler


@pytest.fixture
def labelled(mixture):
    return GaussianMixture(mixture.means, mixture.stds, mixture.weights, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))


def test_scale_one_is_conditional_and_zero_unconditional(labelled, ddpm):
    den = labelled.denoiser(ddpm)
    x, cond = torch.randn(16, 2, dtype=torch.float64), torch.randint(0, 4, (16,))
    x0_c, x0_u = den(x, 0.4, cond), den(x, 0.4)
    assert torch.allclose(ClassifierFreeGuidance(den, 1.0, -1)(x, 0.4, cond), x0_c, atol=1e-12)
    assert torch.allclose(ClassifierFreeGuidance(den, 0.0, -1)(x, 0.4, cond), x0_u, atol=1e-12)
    counted = CountingDenoiser(den)
    guided = ClassifierFreeGuidance(counted, 3.0, -1)(x, 0.4, cond)
    assert counted.calls == 1  # both branches in one batched call
    assert torch.allclose(guided, x0_u + 3.0 * (x0_c - x0_u), atol=1e-12)


def test_rescale_and_interval(labelled, ddpm):
    den = labelled.denoiser(ddpm)
    x, cond = torch.randn(16, 2, dtype=torch.float64), torch.randint(0, 4, (16,))
    x0_c = den(x, 0.4, cond)
    rescaled = ClassifierFreeGuidance(den, 5.0, -1, rescale=1.0)(x, 0.4, cond)
    assert torch.allclose(rescaled.std(dim=1), x0_c.std(dim=1), atol=1e-12)  # Lin et al. eq. 15-16
    limited = ClassifierFreeGuidance(den, 5.0, -1, interval=(0.5, 1.0))
    assert torch.allclose(limited(x, 0.4, cond), x0_c, atol=1e-12)  # outside: conditional only
    assert not torch.allclose(limited(x, 0.6, cond), den(x, 0.6, cond))
    t = torch.tensor([0.4] * 8 + [0.6] * 8, dtype=torch.float64)  # per-example times
    mixed = limited(x, t, cond)
    assert torch.allclose(mixed[:8], x0_c[:8], atol=1e-12)
    assert torch.allclose(mixed[8:], limited(x[8:], 0.6, cond[8:]), atol=1e-12)


def test_guidance_composes_with_samplers_and_sharpens_the_class(labelled, ddpm):
    # Guidance targets p(x) p(y | x)^w: the exact class posterior p(y = 2 | x) of the samples rises.
    den = labelled.denoiser(ddpm)
    x_T, _ = labelled.marginal(ddpm, 1.0).sample(500, torch.Generator().manual_seed(0))
    cond = torch.full((500,), 2)
    times = time_grid(ddpm, 20, "logsnr")
    plain = get_sampler("dpmpp_2m")(den, ddpm, x_T, times, cond=cond)
    guided = get_sampler("dpmpp_2m")(ClassifierFreeGuidance(den, 4.0, -1), ddpm, x_T, times, cond=cond)

    def posterior(x):
        joint = labelled._log_joint(x, 1.0, labelled.stds**2)  # log w_k N(x; mu_k, s_k^2), (B, K)
        return torch.softmax(joint, 1)[:, labelled.labels == 2].sum(1).mean()

    assert posterior(guided) > posterior(plain) > 0.5


def test_bad_guidance_arguments(labelled, ddpm):
    den = labelled.denoiser(ddpm)
    with pytest.raises(ValueError, match="rescale must lie in"):
        ClassifierFreeGuidance(den, 2.0, -1, rescale=2.0)
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(den, 2.0, -1, interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="needs a condition"):
        ClassifierFreeGuidance(den, 2.0, -1)(torch.zeros(2, 2, dtype=torch.float64), 0.5)


def test_text_conditions_of_different_lengths_share_one_batched_call():
    # A prompt of 3 tokens against the empty prompt's 2: the pair is padded to one length with the
    # padding masked, so the batched result equals two separate calls.
    import dataclasses

    from unnoise.models import MODEL_PRESETS, build_model

    torch.manual_seed(0)
    net = build_model(dataclasses.replace(MODEL_PRESETS["unet_tiny"](), context_dim=12))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor(0.5)
    cond = Condition(context=torch.randn(2, 3, 12, generator=g), context_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]).bool())
    null = Condition(context=torch.randn(1, 2, 12, generator=g), context_mask=torch.ones(1, 2, dtype=torch.bool))
    den = lambda x_, t_, c: net(x_, t_.expand(x_.shape[0]), c)  # noqa: E731
    with torch.no_grad():
        x0_c = den(x, t, cond)
        x0_u = den(x, t, null.expand(2))
        counted = CountingDenoiser(den)
        guided = ClassifierFreeGuidance(counted, 3.0, null)(x, t, cond)
        assert counted.calls == 1
        assert torch.allclose(guided, x0_u + 3.0 * (x0_c - x0_u), atol=1e-5)
        assert torch.allclose(ClassifierFreeGuidance(den, 0.0, null)(x, t, cond), x0_u, atol=1e-6)
    with pytest.raises(ValueError, match="cannot stack a condition with"):
        ClassifierFreeGuidance(den, 2.0, 10)(x, t, cond)
