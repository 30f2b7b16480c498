"""Classifier guidance: the algebra against the oracle's exact class posterior, guided sampling,
and a noise-aware classifier trained by the ordinary train loop."""

import json
import math
from pathlib import Path

import pytest
import torch

from unnoise.classifier import build_classifier
from unnoise.cli import main
from unnoise.config import load_config
from unnoise.grids import time_grid
from unnoise.guidance import ALPHA_ZERO_LAMBDA, ClassifierGuidance
from unnoise.oracle import GaussianMixture
from unnoise.samplers import get_sampler
from unnoise.schedules import get_schedule
from unnoise.pipeline import Pipeline
from unnoise.training.loop import train


@pytest.fixture
def labelled(mixture):
    return GaussianMixture(mixture.means, mixture.stds, mixture.weights, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))


@pytest.mark.parametrize("name", ["ddpm", "edm", "flow", "cosine"])
def test_exact_classifier_at_scale_one_gives_the_conditional_denoiser(labelled, name):
    # grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), and Tweedie: x0 = (x + sigma^2 score) / alpha.
    schedule = get_schedule(name)
    den, clf = labelled.denoiser(schedule), labelled.classifier(schedule)
    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randint(0, 4, (16,))
    one = ClassifierGuidance(den, clf, schedule, 1.0, model_cond=-1)  # -1: the oracle's unconditional
    zero = ClassifierGuidance(den, clf, schedule, 0.0, model_cond=-1)
    for t in (0.05, 0.3, 0.7, 0.95):
        xt = x * schedule.sigma(t).item() + schedule.alpha(t).item() * 0.3
        assert torch.allclose(one(xt, t, y), den(xt, t, y), atol=1e-10, rtol=0)
        assert torch.equal(zero(xt, t, y), den(xt, t, -1))
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64)  # per-example times, as in training
    xt = x * schedule.sigma(t).view(-1, 1)
    assert torch.allclose(one(xt, t, y), den(xt, t, y), atol=1e-10, rtol=0)
    if schedule.alpha(1.0).item() == 0:
        # At t = 1 (alpha = 0) the exact guided x0 is E[x0 | y], and the correction E[x0 | y] - E[x0] is
        # not 0. It is taken where alpha / sigma = e^-5: right to first order in that ratio.
        for tt in (1.0, torch.ones(16, dtype=torch.float64)):
            size = (zero(x, tt, y) - den(x, tt, y)).abs().max().item()
            err = (one(x, tt, y) - den(x, tt, y)).abs().max().item()
            assert size > 0.1 and err < 3 * math.exp(ALPHA_ZERO_LAMBDA) * size, (err, size)


def test_the_oracle_classifier_is_the_class_posterior(labelled, ddpm):
    clf = labelled.classifier(ddpm)
    x = torch.randn(32, 2, dtype=torch.float64)
    log_p = clf(x, 0.3)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(32, dtype=torch.float64))
    # Bayes by hand: responsibilities of the noised mixture, summed per class
    marginal = labelled.marginal(ddpm, 0.3)
    joint = marginal._log_joint(x, 1.0, marginal.stds**2)
    by_hand = torch.stack([torch.softmax(joint, 1)[:, labelled.labels == y].sum(1) for y in range(4)], 1)
    assert torch.allclose(log_p.exp(), by_hand, atol=1e-12)


def test_guided_sampling_draws_the_class_and_sharpens_it_with_scale(labelled, ddpm):
    # Scale 1 with the exact classifier samples p(x | y): the sample mean matches the class's true mean
    # within 4 standard errors. Larger scales push the class posterior of the samples towards 1.
    n, target = 2000, 2
    den, clf = labelled.denoiser(ddpm), labelled.classifier(ddpm)
    g = torch.Generator().manual_seed(0)
    x_T, _ = labelled.marginal(ddpm, 1.0).sample(n, g)
    times = time_grid(ddpm, 40, "logsnr")
    y = torch.full((n,), target)

    def guided(scale):
        return get_sampler("dpmpp_2m")(ClassifierGuidance(den, clf, ddpm, scale, model_cond=-1), ddpm, x_T,
                                       times, cond=y)

    def posterior(x):  # the exact p(y = target | x) at the data, averaged over samples
        return clf(x, 0.0).exp()[:, target].mean().item()

    at_one = guided(1.0)
    keep = labelled.labels == target
    cls = GaussianMixture.create(labelled.means[keep], labelled.stds[keep], labelled.weights[keep])
    truth, _ = cls.sample(20000, torch.Generator().manual_seed(1))
    se = truth.std(0) / math.sqrt(n)
    assert ((at_one.mean(0) - truth.mean(0)).abs() < 4 * se).all(), (at_one.mean(0), truth.mean(0), se)
    assert abs(posterior(at_one) - posterior(truth)) < 0.02
    shares = [posterior(guided(s)) for s in (0.0, 1.0, 4.0)]
    assert shares[0] < shares[1] < shares[2], shares
    assert abs(shares[0] - labelled.weights[keep].sum().item()) < 0.1  # scale 0: the mixture's own share


def test_bad_classifier_guidance_arguments(labelled, ddpm):
    den, clf = labelled.denoiser(ddpm), labelled.classifier(ddpm)
    with pytest.raises(ValueError, match="must be >= 0"):
        ClassifierGuidance(den, clf, ddpm, -1.0)
    with pytest.raises(ValueError, match="needs the labels"):
        ClassifierGuidance(den, clf, ddpm, 1.0)(torch.zeros(2, 2, dtype=torch.float64), 0.5)


# ---- a noise-aware classifier trained by the training loop, used by the pipeline ---------------------------

DATA = {"name": "mnist"}
DIFFUSION = {"schedule": "edm", "parameterization": "edm"}
CLASSIFIER = {
    "data": DATA, "diffusion": DIFFUSION,
    "model": {"preset": "classifier_small", "base_channels": 16, "channel_mult": [1, 2], "attention_factors": [2],
              "head_channels": 32},
    "loss": {"time_sampling": "lognormal"},
    "train": {"steps": 150, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "log_every": 50,
              "checkpoint_every": 150, "ema_decay": 0.9},
}
MODEL = {
    "data": DATA, "diffusion": DIFFUSION,
    "model": {"preset": "unet_tiny", "image_size": 28, "in_channels": 1, "out_channels": 1, "num_classes": 10},
    "train": {"steps": 5, "batch_size": 8, "log_every": 5, "checkpoint_every": 5, "label_dropout": 0.1},
    "sample": {"sampler": "heun", "steps": 3, "n": 4, "guidance": 1.0},
}


def tiny_model(out, **sections) -> str:
    """A 5-step class-conditional MNIST model; returns its checkpoint folder."""
    return train(load_config(None, tree={**MODEL, **sections, "out": str(out)}), quiet=True).checkpoints[-1]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "run"
    summary = train(load_config(None, tree={**CLASSIFIER, "out": str(out)}), quiet=True)
    return out, summary


def test_the_train_loop_trains_a_noise_aware_classifier(classifier_run):
    out, summary = classifier_run
    accuracy = json.loads((out / "accuracy.json").read_text())["accuracy by sigma~"]
    assert accuracy == {str(k): v for k, v in summary.report["accuracy"].items()}
    # 150 steps of 32 digits: far above chance (0.1) at low noise, back to chance when noise drowns it
    assert accuracy["0.1"] > 0.5, accuracy
    assert accuracy["0.1"] > accuracy["2.0"] > accuracy["10.0"] - 0.05, accuracy
    assert not (out / "samples.png").exists()


def test_pipeline_with_classifier_guidance(classifier_run, tmp_path):
    model = tiny_model(tmp_path / "m")
    plain = Pipeline.load(model).sample(4, seed=3)
    pipe = Pipeline.load(model, classifier=classifier_run[0])
    assert torch.equal(pipe.sample(4, seed=3, classifier_scale=0.0), plain)
    guided = pipe.sample(4, seed=3, classifier_scale=5.0)
    assert guided.shape == plain.shape and torch.isfinite(guided).all() and not torch.allclose(guided, plain)
    # the unconditional branch alone (classifier-free scale 0) plus the classifier: ADM's own setting
    uncond = pipe.sample(4, seed=3, guidance=0.0, classifier_scale=5.0)
    assert not torch.allclose(uncond, guided)


def test_classifier_runs_refuse_what_does_not_fit(classifier_run, tmp_path):
    with pytest.raises(ValueError, match="label_dropout must be 0"):
        train(load_config(None, tree={**CLASSIFIER, "out": str(tmp_path / "a"),
                                      "train": {**CLASSIFIER["train"], "label_dropout": 0.1}}))
    with pytest.raises(ValueError, match="sees no labels"):
        load_config(None, tree={**CLASSIFIER, "model": {**CLASSIFIER["model"], "num_classes": 10}})
    with pytest.raises(ValueError, match="not a classifier run"):
        build_classifier(load_config(None, tree=MODEL), {})
    ddpm_model = tiny_model(tmp_path / "m", diffusion={"schedule": "ddpm", "parameterization": "eps"})
    with pytest.raises(ValueError, match="trained on schedule 'edm'"):
        Pipeline.load(ddpm_model, classifier=classifier_run[0])


def test_guidance_curves_and_sampling_from_the_command_line(classifier_run, tmp_path, capsys):
    model = tiny_model(tmp_path / "m")
    common = ["eval", model, "--n", "20", "--batch-size", "20", "--guidance-scales", "0,2", "--steps", "2"]
    assert main(common) == 0
    assert main([*common, "--classifier", str(classifier_run[0])]) == 0
    out = capsys.readouterr().out
    assert "| scale | FD | precision | recall | class accuracy |" in out and "guidance.png" in out
    folder = Path(model)
    for kind in ("classifier-free", "classifier"):
        doc = json.loads((folder / f"guidance-{kind}.json").read_text())
        assert [r["scale"] for r in doc["rows"]] == [0.0, 2.0]
        assert all(0 <= r["accuracy"] <= 1 and r["FD"] > 0 for r in doc["rows"])
    assert (folder / "guidance.png").stat().st_size > 10_000
    png = tmp_path / "guided.png"
    assert main(["sample", model, "--n", "4", "--steps", "2", "--label", "3", "--classifier", str(classifier_run[0]),
                 "--classifier-scale", "4", "--out", str(png)]) == 0
    assert png.is_file()
    plain, limited = tmp_path / "plain.npz", tmp_path / "limited.npz"
    common = ["sample", model, "--n", "2", "--steps", "2", "--guidance", "3"]
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--guidance-rescale", "0.7", "--guidance-interval", "0.2,0.9", "--out", str(limited)]) == 0
    import numpy as np
    assert not np.allclose(np.load(plain)["samples"], np.load(limited)["samples"])
    with pytest.raises(SystemExit):
        main([*common, "--guidance-interval", "0.5,0.2", "--out", str(limited)])
    assert "expected 0 <= lo < hi <= 1, got '0.5,0.2'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"guidance_interval must be \[lo, hi\] .* got \[0.5, 0.2\]"):
        load_config(None, tree={**MODEL, "sample": {"guidance_interval": [0.5, 0.2]}})
    assert main(["sample", model, "--n", "2", "--classifier", str(classifier_run[0]), "--classifier-scale", "-1",
                 "--out", str(png)]) != 0
    assert "classifier_scale must be >= 0, got -1.0" in capsys.readouterr().err
