import dataclasses
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from unnoise.conditioning import Condition
from unnoise.guidance import ClassifierFreeGuidance
from unnoise.models import MODEL_PRESETS, DiTConfig, UNetConfig, build_model, count_parameters
from unnoise.models.embeddings import sincos_positions_2d, sinusoidal_embedding
from unnoise.parameterization import NetworkDenoiser, get_parameterization, path_point
from unnoise.schedules import get_schedule

KINDS = ["unet", "dit"]
B, CLASSES, CONTEXT_DIM, CONTEXT_LEN = 2, 5, 12, 3


def make(kind: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(MODEL_PRESETS[f"{kind}_tiny"](), **overrides))


def conditional(kind: str, seed: int = 0) -> torch.nn.Module:
    return make(kind, seed, num_classes=CLASSES, context_dim=CONTEXT_DIM)


def inputs(net: torch.nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """x, t and a full cond (labels including the null label, and a context) for net."""
    c, g = net.config, torch.Generator().manual_seed(seed)
    x = torch.randn(B, c.in_channels, c.image_size, c.image_size, generator=g)
    cond = Condition(labels=torch.tensor([1, CLASSES]), context=torch.randn(B, CONTEXT_LEN, CONTEXT_DIM, generator=g))
    return x, torch.rand(B, generator=g), cond


def perturb_(net: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> torch.nn.Module:
    """Move every weight off its (often zero) initial value, so each input can reach the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def train_steps(net: torch.nn.Module, steps: int) -> torch.optim.Optimizer:
    x, t, cond = inputs(net)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        (net(x, t, cond) - target).square().mean().backward()
        opt.step()
    opt.zero_grad()
    (net(x, t, cond) - target).square().mean().backward()
    return opt


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["none", "labels", "context", "both"])
def test_output_has_the_input_shape(kind, which):
    net = perturb_(conditional(kind))
    x, t, full = inputs(net)
    cond = {"none": None, "labels": full.labels, "context": Condition(context=full.context), "both": full}[which]
    assert net(x, t, cond).shape == x.shape
    plain = make(kind)
    assert plain(x, t).shape == x.shape


@pytest.mark.parametrize("kind", KINDS)
def test_other_output_channels_and_non_square_sizes(kind):
    net = make(kind, out_channels=5)
    x = torch.randn(B, 3, 16, 8)
    assert net(x, torch.rand(B)).shape == (B, 5, 16, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_net_is_exactly_zero_and_one_step_moves_it(kind):
    net = conditional(kind)
    x, t, cond = inputs(net)
    assert torch.equal(net(x, t, cond), torch.zeros_like(x))
    train_steps(net, 1)
    assert net(x, t, cond).abs().min() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind):
    # Zero initialisation blocks gradients at first: the output layer, then the residual branches
    # (or adaLN gates) open one step at a time. After three steps nothing may be left unused.
    net = conditional(kind)
    train_steps(net, 3)
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("kind", KINDS)
def test_labels_and_null_label(kind):
    net = perturb_(make(kind, num_classes=CLASSES))
    x, t, _ = inputs(net)
    out = [net(x, t, torch.full((B,), label)) for label in range(CLASSES + 1)]
    for a in range(CLASSES + 1):
        for b in range(a):
            assert not torch.allclose(out[a], out[b])
    assert torch.equal(net(x, t), out[CLASSES])  # cond=None is the null label
    assert torch.equal(net(x, t, Condition()), out[CLASSES])
    assert torch.equal(net(x, t, Condition(labels=torch.full((B,), 2))), out[2])


@pytest.mark.parametrize("kind", KINDS)
def test_context_reaches_the_output(kind):
    net = perturb_(conditional(kind))
    x, t, cond = inputs(net)
    with_context = net(x, t, cond)
    other = net(x, t, replace(cond, context=cond.context + 1))
    assert not torch.allclose(with_context, other)
    assert not torch.allclose(with_context, net(x, t, cond.labels))  # no context: cross-attention skipped


@pytest.mark.parametrize("kind", KINDS)
def test_masked_context_tokens_are_never_read(kind):
    # Prompts of different lengths are padded to one L: what the padding holds must not matter,
    # in cross-attention nor in the pooled context added to the embedding.
    net = perturb_(conditional(kind))
    x, t, cond = inputs(net)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    garbage = cond.context.clone()
    garbage[~mask] = 100.0
    masked = net(x, t, replace(cond, context_mask=mask))
    assert torch.allclose(net(x, t, replace(cond, context=garbage, context_mask=mask)), masked, atol=1e-5)
    short = Condition(labels=cond.labels[1:], context=cond.context[1:, :1])  # sample 1 alone, unpadded
    assert torch.allclose(net(x[1:], t[1:], short), masked[1:], atol=1e-5)
    assert not torch.allclose(net(x, t, cond), masked)  # the mask matters
    with pytest.raises(ValueError, match="no token to attend to"):
        net(x, t, replace(cond, context_mask=torch.tensor([[True, False, False], [False, False, False]])))
    with pytest.raises(ValueError, match="context_mask must be a bool tensor of shape"):
        net(x, t, replace(cond, context_mask=mask.float()))
    with pytest.raises(ValueError, match="context_mask given without a context"):
        Condition(labels=cond.labels, context_mask=mask)


@pytest.mark.parametrize("kind", KINDS)
def test_time_reaches_the_output(kind):
    net = perturb_(make(kind))
    x, _, _ = inputs(net)
    t = torch.full((B,), 0.5)
    assert not torch.allclose(net(x, t), net(x, t + 0.01))
    c_noise = torch.full((B,), -1.5)  # EDM's ln(sigma~) / 4 may be negative
    assert not torch.allclose(net(x, c_noise), net(x, -c_noise))
    assert torch.equal(net(x, torch.tensor(0.5)), net(x, t))  # a scalar t applies to the whole batch


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case, message", [
    ("channels", r"shape \(B, 3, H, W\)"),
    ("size", "multiples of 2"),
    ("labels_unconditional", "without classes"),
    ("label_range", r"0\.\.5"),
    ("label_dtype", "int64"),
    ("context_without_cross", "without cross-attention"),
    ("context_width", rf"\(2, L, {CONTEXT_DIM}\)"),
    ("t_shape", r"t must have shape \(2,\)"),
    ("cond_key", "a condition must be None, a Condition"),
])
def test_clear_errors(kind, case, message):
    net, plain = conditional(kind), make(kind)
    x, t, cond = inputs(net)
    calls = {
        "channels": lambda: net(x[:, :2], t),
        "size": lambda: net(x[:, :, :15, :15], t),
        "labels_unconditional": lambda: plain(x, t, cond.labels),
        "label_range": lambda: net(x, t, torch.tensor([0, CLASSES + 1])),
        "label_dtype": lambda: net(x, t, torch.tensor([0.0, 1.0])),
        "context_without_cross": lambda: plain(x, t, Condition(context=cond.context)),
        "context_width": lambda: net(x, t, Condition(context=cond.context[..., :-1])),
        "t_shape": lambda: net(x, t[:1]),
        "cond_key": lambda: net(x, t, {"labels": cond.labels}),
    }
    with pytest.raises(ValueError, match=message):
        calls[case]()


def test_unet_size_error_names_the_downsampling():
    net = build_model(MODEL_PRESETS["unet_small"]())
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, 1, 30, 30), torch.rand(1))


@pytest.mark.parametrize("make_config, message", [
    (lambda: UNetConfig(image_size=30, channel_mult=(1, 2, 2)), "multiple of 4"),
    (lambda: UNetConfig(attention_factors=(8,)), "attention_factors"),
    (lambda: UNetConfig(base_channels=96, head_channels=64), "heads"),
    (lambda: UNetConfig(base_channels=30), "multiple of 4"),
    (lambda: DiTConfig(image_size=30, patch_size=4), "patch_size"),
    (lambda: DiTConfig(hidden_size=100, heads=6), "heads=6"),
])
def test_config_errors(make_config, message):
    with pytest.raises(ValueError, match=message):
        make_config()


def test_build_model_rejects_other_configs():
    with pytest.raises(TypeError, match="UNetConfig, DiTConfig or MLPConfig"):
        build_model(get_schedule("edm"))


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_seed_is_deterministic(kind):
    a, b, c = (perturb_(conditional(kind, seed)) for seed in (0, 0, 1))
    x, t, cond = inputs(a)
    assert torch.equal(a(x, t, cond), b(x, t, cond))
    assert not torch.allclose(a(x, t, cond), c(x, t, cond))


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_round_trip(kind, tmp_path):
    net = perturb_(conditional(kind))
    save_file(net.state_dict(), tmp_path / "net.safetensors")
    copy = conditional(kind, seed=1)
    copy.load_state_dict(load_file(tmp_path / "net.safetensors"))
    x, t, cond = inputs(net)
    assert torch.equal(copy(x, t, cond), net(x, t, cond))


@pytest.mark.parametrize("name, low, high", [
    ("unet_tiny", 20e3, 100e3),
    ("unet_small", 0.8e6, 1.4e6),
    ("unet_base", 3.5e6, 5.5e6),
    ("dit_tiny", 50e3, 300e3),
    ("dit_s2", 31e6, 34e6),  # DiT-S/2: 33M in Peebles & Xie 2023, Table 4 (latent channels, 1000 classes)
    ("dit_s4", 31e6, 34e6),
    ("dit_b2", 127e6, 132e6),  # DiT-B/2: 130M
])
def test_preset_parameter_counts(name, low, high):
    with torch.device("meta"):  # sizes without allocating or initialising weights
        n = count_parameters(build_model(MODEL_PRESETS[name]()))
    assert low <= n <= high


def test_sinusoidal_embedding_known_values():
    emb = sinusoidal_embedding(torch.tensor([0.0, 2.0]), 4, max_period=100.0)  # frequencies 1, 1/10
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                             [torch.cos(torch.tensor(2.0)), torch.cos(torch.tensor(0.2)),
                              torch.sin(torch.tensor(2.0)), torch.sin(torch.tensor(0.2))]])
    assert torch.allclose(emb, expected)


def test_sincos_positions_are_distinct_and_split_rows_from_columns():
    pos = sincos_positions_2d(16, 3, 4)  # (12, 16), row-major
    assert pos.shape == (12, 16)
    assert torch.cdist(pos, pos).add(torch.eye(12)).min() > 0.1
    assert torch.equal(pos[1, :8], pos[0, :8]) and torch.equal(pos[4, 8:], pos[0, 8:])  # same row / column


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_autocast(kind):
    net = perturb_(conditional(kind))
    x, t, cond = inputs(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.allclose(out.float(), net(x, t, cond), atol=0.1 * net(x, t, cond).abs().max().item())


@pytest.mark.parametrize("kind", KINDS)
def test_fresh_net_behind_edm_preconditioning_is_c_skip_times_x(kind):
    # A zero network output leaves only the skip term of Karras et al. 2022, eq. 7.
    net, param, schedule = make(kind), get_parameterization("edm"), get_schedule("edm")
    x, _, _ = inputs(net)
    denoise = NetworkDenoiser(net, param, schedule)
    p = path_point(schedule, torch.full((B,), 0.5), x.ndim)
    assert torch.allclose(denoise(x, 0.5), param.x0(torch.zeros_like(x), x, p))


@pytest.mark.parametrize("kind", KINDS)
def test_classifier_free_guidance_with_the_null_label(kind):
    net = perturb_(make(kind, num_classes=CLASSES))
    denoise = NetworkDenoiser(net, get_parameterization("v"), get_schedule("cosine"))
    x, _, _ = inputs(net)
    labels = torch.tensor([0, 3])
    guided = ClassifierFreeGuidance(denoise, 3.0, null_cond=CLASSES)(x, 0.5, labels)
    x0_c, x0_u = denoise(x, 0.5, labels), denoise(x, 0.5, None)
    assert torch.allclose(guided, x0_u + 3.0 * (x0_c - x0_u), atol=1e-5)


def unet1d(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(MODEL_PRESETS["unet1d_small"](), **overrides))


def test_unet_1d_maps_signals_to_signals_and_starts_at_zero():
    net = unet1d()
    x, t = torch.randn(B, 1, 256, generator=torch.Generator().manual_seed(0)), torch.rand(B)
    assert torch.equal(net(x, t), torch.zeros_like(x))
    assert net.config.interface.sample_shape == (1, 256)
    assert all(not isinstance(m, torch.nn.Conv2d) for m in net.modules())
    out = perturb_(net)(x, t)
    assert out.shape == (B, 1, 256) and out.abs().min() > 0
    assert net(x[..., :64], t).shape == (B, 1, 64)  # any length divisible by 8


def test_unet_1d_takes_labels_and_context():
    net = perturb_(unet1d(num_classes=CLASSES, context_dim=CONTEXT_DIM))
    x, t = torch.randn(B, 1, 256, generator=torch.Generator().manual_seed(0)), torch.rand(B)
    out = [net(x, t, torch.full((B,), label)) for label in range(CLASSES + 1)]
    assert not torch.allclose(out[0], out[1]) and torch.equal(net(x, t), out[CLASSES])
    context = torch.randn(B, CONTEXT_LEN, CONTEXT_DIM, generator=torch.Generator().manual_seed(1))
    with_context = net(x, t, Condition(labels=torch.full((B,), 1), context=context))
    assert with_context.shape == x.shape and not torch.allclose(with_context, out[1])


@pytest.mark.parametrize("shape, message", [
    ((B, 1, 16, 16), r"expected signals of shape \(B, 1, L\), got \(2, 1, 16, 16\)"),
    ((B, 2, 256), r"expected signals of shape \(B, 1, L\), got \(2, 2, 256\)"),
    ((B, 1, 100), r"signal length must be a multiple of 8 \(the U-Net halves them 3 times\), got 100"),
])
def test_unet_1d_shape_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        unet1d()(torch.randn(shape), torch.rand(B))


def test_unet_2d_refuses_signals():
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\)"):
        build_model(MODEL_PRESETS["unet_small"]())(torch.randn(B, 1, 28), torch.rand(B))


@pytest.mark.parametrize("make_config, message", [
    (lambda: UNetConfig(dims=3), "dims must be 1 .signals. or 2 .images., got 3"),
    (lambda: dataclasses.replace(MODEL_PRESETS["classifier_small"](), dims=1), "dims must be 2, got 1"),
    (lambda: dataclasses.replace(MODEL_PRESETS["unet1d_small"](), image_size=100), "multiple of 8"),
])
def test_unet_1d_config_errors(make_config, message):
    with pytest.raises(ValueError, match=message):
        make_config()


def test_dims_changes_no_parameter_names_and_2d_state_dicts_still_load(tmp_path):
    # Module names do not depend on dims: the 1-D preset built in 2-D has the same keys, and only
    # the kernels' shapes differ. A 2-D state dict saved by a preset loads into dims=2 given explicitly.
    one, two = unet1d(), unet1d(dims=2)
    shapes_1d = {k: tuple(v.shape) for k, v in one.state_dict().items()}
    shapes_2d = {k: tuple(v.shape) for k, v in two.state_dict().items()}
    assert shapes_1d.keys() == shapes_2d.keys()
    assert all(s2 == s1 or s2 == s1 + (3,) or s2 == s1 + (1,) for s1, s2 in
               ((shapes_1d[k], shapes_2d[k]) for k in shapes_1d))
    for name in ("unet_small", "classifier_small"):
        torch.manual_seed(0)
        saved = perturb_(build_model(MODEL_PRESETS[name]()))
        save_file(saved.state_dict(), tmp_path / "net.safetensors")
        torch.manual_seed(1)
        explicit = build_model(dataclasses.replace(MODEL_PRESETS[name](), dims=2))
        explicit.load_state_dict(load_file(tmp_path / "net.safetensors"))  # strict: same keys and shapes
        x, t = torch.randn(B, 1, 28, 28), torch.rand(B)
        assert torch.equal(explicit(x, t), saved(x, t))


def test_resblock_1d_and_its_2d_default():
    from unnoise.models.unet import ResBlock

    block_2d, block_1d = ResBlock(8, 16, 12), ResBlock(8, 16, 12, dims=1)
    assert isinstance(block_2d.conv1, torch.nn.Conv2d) and isinstance(block_1d.conv1, torch.nn.Conv1d)
    perturb_(block_1d)
    emb = torch.randn(B, 12)
    assert block_1d(torch.randn(B, 8, 32), emb).shape == (B, 16, 32)
    assert ResBlock(8, 8, 0, dims=1)(torch.randn(B, 8, 32)).shape == (B, 8, 32)  # the autoencoder's form


def test_unet_1d_preset_parameter_count():
    with torch.device("meta"):
        n = count_parameters(build_model(MODEL_PRESETS["unet1d_small"]()))
    assert 0.6e6 <= n <= 1.0e6
