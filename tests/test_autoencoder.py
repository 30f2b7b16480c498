"""The autoencoder of latent diffusion: its parts against known answers, a tiny one trained for real,
the measured scale factor, and latent models tied to the autoencoder they were trained with."""

import math

import pytest
import torch

from unnoise.checkpoint import export_model, load_checkpoint
from unnoise.config import load_config
from unnoise.losses import adaptive_weight, hinge_discriminator_loss, perceptual_loss
from unnoise.models import MODEL_PRESETS, build_model
from unnoise.models.autoencoder import Autoencoder, AutoencoderConfig, PatchDiscriminator, Posterior, psnr
from unnoise.latent import load_latent_space, measure_scale, space_for
from unnoise.pipeline import Pipeline
from unnoise.training.loop import train

AE = {
    "data": {"name": "emoji", "image_size": 16},
    "model": {"preset": "autoencoder_tiny"},
    "autoencoder": {"perceptual_weight": 0.0, "disc_start": 100, "scale_images": 300},
    "train": {"steps": 150, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "log_every": 50,
              "checkpoint_every": 150, "ema_decay": 0.9},
}
LATENT = {
    "data": {"name": "emoji", "image_size": 16},
    "model": {"preset": "unet_tiny", "in_channels": 2, "out_channels": 2, "image_size": 8},
    "train": {"steps": 4, "batch_size": 8, "log_every": 2, "checkpoint_every": 4},
    "sample": {"sampler": "euler", "steps": 2, "n": 4},
}


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "run"
    summary = train(load_config(None, tree={**AE, "out": str(out)}), quiet=True)
    return out, summary


def test_shapes_and_the_posterior():
    config = AutoencoderConfig(in_channels=1, image_size=32, latent_channels=3, base_channels=8)
    ae = Autoencoder(config)
    x = torch.randn(2, 1, 32, 32)
    posterior = ae.encode(x)
    assert posterior.mean.shape == (2, 3, 8, 8) == (2, *config.latent_shape) and config.downsampling == 4
    assert ae.decode(posterior.mean).shape == x.shape
    # KL(N(m, s^2) || N(0, 1)) summed over the latent, against torch.distributions
    p = Posterior(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    q = torch.distributions.Normal(p.mean, p.std)
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(p.kl(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 4"):
        ae.encode(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"latents of shape \(B, 3, h, w\)"):
        ae.decode(torch.randn(1, 4, 8, 8))
    assert PatchDiscriminator(1, 8)(x).shape == (2, 1, 6, 6)  # 32 -> 16 -> 8 -> 7 -> 6: a logit per patch


def test_the_losses_against_known_answers():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    # the adaptive weight balances the gradients at the last layer: for L_gan = c L_rec it is 1 / c
    w = torch.randn(4, requires_grad=True)
    rec = (w**2).sum()
    assert adaptive_weight(rec, 8.0 * rec, w).item() == pytest.approx(1 / 8, rel=1e-3)
    from unnoise.features import feature_net_for

    feats = feature_net_for("fashion-mnist").net
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.allclose(perceptual_loss(feats, x, x), torch.zeros(3), atol=1e-6)
    assert (perceptual_loss(feats, x, x + 0.3 * torch.randn_like(x)) > 0.01).all()
    inside = 0.9 * x  # away from the clamp at +-1
    assert psnr(inside, inside + 0.02).mean().item() == pytest.approx(10 * math.log10(4 / 0.02**2), abs=0.01)


def test_the_scale_factor_gives_unit_variance():
    # an encoder whose posterior is N(3 x, 0.5^2) on unit-normal x: z has std sqrt(9 + 0.25)
    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def encode(self, x):
            return Posterior(3 * x, torch.full_like(x, math.log(0.25)))

    x = torch.randn(4000, 1, 4, 4, generator=torch.Generator().manual_seed(1))  # not measure_scale's seed 0
    scale = measure_scale(Stub(), x)
    n = x.numel()
    assert scale == pytest.approx(1 / math.sqrt(9.25), rel=4 / math.sqrt(2 * n))  # SE of a std: std / sqrt(2n)


def test_a_tiny_autoencoder_learns_to_reconstruct(autoencoder_run):
    out, summary = autoencoder_run
    # The mean emoji, copied for every image, scores 11.7 dB; 150 steps reach about 19 (5 dB margin).
    from unnoise.data import DataConfig, load_dataset

    test = load_dataset(DataConfig(name="emoji", split="test", image_size=16))
    x = test.batch(torch.arange(len(test)))[0]
    baseline = psnr(x, x.mean(0, keepdim=True).expand_as(x)).mean().item()
    assert summary.report["psnr dB"] > baseline + 5, (summary.report["psnr dB"], baseline)
    assert (out / "reconstructions.png").is_file() and (out / "reconstruction.json").is_file()
    space = load_latent_space(out)
    z = space.encode(x)
    assert 0.7 < z.std().item() < 1.3  # unit variance by the stored scale (measured on training images)
    ckpt = load_checkpoint(out, with_state=False)
    assert ckpt.config["latent_scale"] == space.scale
    # decoding upcasts by itself: the same images under bf16 autocast, and finite
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = space.decode(z[:4])
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, space.decode(z[:4]))


def test_eval_of_an_autoencoder_measures_its_reconstructions_on_any_split(autoencoder_run, capsys):
    import json

    from unnoise.cli import main

    out, summary = autoencoder_run
    assert main(["eval", str(out), "--reference", "train"]) == 0
    ckpt = load_checkpoint(out, with_state=False).path
    result = json.loads((ckpt / "reconstruction-train.json").read_text())
    assert result["split"] == "train" and result["images"] == 1225 and (ckpt / "reconstructions-train.png").is_file()
    assert 0 <= result["accuracy[emoji-cnn] of reconstructions"] <= 1 and "psnr dB" in capsys.readouterr().out
    assert main(["eval", str(out)]) == 0  # the held-out split: what training wrote, from the same EMA weights
    held_out = json.loads((ckpt / "reconstruction.json").read_text())
    assert held_out["psnr dB"] == pytest.approx(summary.report["psnr dB"], rel=1e-6)
    capsys.readouterr()
    assert main(["eval", str(out), "--sweep", "--n", "5"]) == 2
    assert "is an autoencoder: eval measures its reconstructions" in capsys.readouterr().err


def test_a_latent_model_trains_samples_and_refuses_another_autoencoder(autoencoder_run, tmp_path):
    out, _ = autoencoder_run
    tree = {**LATENT, "latent": {"autoencoder": str(out)}, "out": str(tmp_path / "ldm")}
    summary = train(load_config(None, tree=tree), quiet=True)
    ckpt = load_checkpoint(summary.checkpoints[-1], with_state=False)
    config = load_config(None, tree=ckpt.config["tree"])
    assert config.latent.sha256 == load_latent_space(out).sha256  # the checkpoint names its autoencoder
    images = Pipeline.load(ckpt.path).sample(3, seed=0)
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()  # decoded to pixels
    # an exported latent model carries its autoencoder and samples the same wherever it is moved
    export_model(summary.checkpoints[-1], tmp_path / "exported")
    (tmp_path / "exported").rename(tmp_path / "moved")
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["autoencoder", "config.json", "ema.safetensors"]
    assert torch.equal(Pipeline.load(tmp_path / "moved").sample(3, seed=0), images)
    # another autoencoder at the same path: refused, with both hashes named
    other = tmp_path / "other"
    train(load_config(None, tree={**AE, "out": str(other), "train": {**AE["train"], "steps": 2,
                                                                                  "checkpoint_every": 2}}), quiet=True)
    moved = load_config(None, tree={**ckpt.config["tree"], "latent": {**ckpt.config["tree"]["latent"],
                                                                      "autoencoder": str(other)}})
    with pytest.raises(ValueError, match=f"weights {config.latent.sha256[:12]}.*a different autoencoder"):
        Pipeline.from_weights(moved, ckpt.ema)
    with pytest.raises(ValueError, match=r"set \[model\] in_channels = out_channels = 2 and image_size = 8"):
        space_for(load_config(None, tree={**tree, "model": {"preset": "unet_tiny"}}))
    with pytest.raises(ValueError, match="not an autoencoder checkpoint"):
        load_latent_space(summary.checkpoints[-1])


def test_a_latent_dit_follows_prompts_and_the_sample_command_decodes(autoencoder_run, tmp_path, capsys):
    # The other network and the other condition on the same latents: a DiT reading text through
    # cross-attention; `unnoise sample` writes decoded RGB images, not latents.
    import numpy as np

    from unnoise.cli import main

    out, _ = autoencoder_run
    tree = {**LATENT, "latent": {"autoencoder": str(out)}, "out": str(tmp_path / "ldit"),
            "model": {"preset": "dit_tiny", "in_channels": 2, "out_channels": 2, "image_size": 8,
                      "patch_size": 2, "context_dim": 384},
            "sample": {**LATENT["sample"], "guidance": 2.0, "prompts": ["red apple"]}}
    summary = train(load_config(None, tree=tree), quiet=True)
    path = tmp_path / "apples.npz"
    assert main(["sample", summary.checkpoints[-1], "--n", "2", "--prompt", "green apple", "--steps", "2",
                 "--out", str(path)]) == 0
    with np.load(path) as f:
        images = next(iter(f.values()))
    assert images.shape[0] == 2 and images.shape[-3:] in ((3, 16, 16), (16, 16, 3))
    capsys.readouterr()


def test_every_autoencoder_preset_builds():
    for name in ("autoencoder_f4", "autoencoder_tiny"):
        config = MODEL_PRESETS[name]()
        ae = build_model(config)
        x = torch.randn(1, config.in_channels, config.image_size, config.image_size)
        assert ae(x)[0].shape == x.shape


@pytest.mark.slow
def test_two_process_autoencoder_training_matches_one_process(tmp_path):
    # Without the discriminator (whose adaptive weight is per rank) the two ranks' averaged gradients
    # are the one process's: the weights agree up to float32 summation order, amplified by Adam.
    import torch.multiprocessing as mp
    from test_train import _ddp_worker, _free_port

    train_cfg = {**AE["train"], "steps": 5, "checkpoint_every": 5}
    tree = {**AE, "autoencoder": {**AE["autoencoder"], "disc_weight": 0.0}, "train": train_cfg}
    train(load_config(None, tree={**tree, "out": str(tmp_path / "one")}), quiet=True)
    mp.spawn(_ddp_worker, args=(2, _free_port(), {**tree, "out": str(tmp_path / "two")}, train), nprocs=2,
             join=True)
    a, b = load_checkpoint(tmp_path / "one" / "checkpoints"), load_checkpoint(tmp_path / "two" / "checkpoints")
    assert a.step == b.step == 5 and "latent_scale" in b.config
    for k in a.model:
        assert torch.allclose(a.model[k], b.model[k], rtol=0, atol=1e-4), (k, (a.model[k] - b.model[k]).abs().max())


def test_the_perceptual_term_and_the_reconstruction_metrics_on_mnist(tmp_path):
    import json

    tree = {**AE, "data": {"name": "mnist", "image_size": 32},
            "model": {"preset": "autoencoder_tiny", "in_channels": 1, "image_size": 32},
            "autoencoder": {"perceptual_weight": 1.0, "disc_start": 2, "scale_images": 100},
            "train": {**AE["train"], "steps": 4, "batch_size": 8, "checkpoint_every": 4}, "out": str(tmp_path / "m")}
    summary = train(load_config(None, tree=tree), quiet=True)
    assert {"psnr dB", "FD[mnist-cnn] of reconstructions", "accuracy[mnist-cnn] of reconstructions"} <= set(summary.report)
    log = [json.loads(line) for line in (tmp_path / "m" / "log.jsonl").read_text().splitlines()]
    assert "perceptual" in log[0] and "lambda" in log[-1] and "d" in log[-1]  # the discriminator ran from step 2
