import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from unnoise.data import DATASET_NAMES, DataConfig, load_dataset, modality_of
from unnoise.data.signals import JITTER, TEST_SIGNALS, SignalSet, se_kernel, signals
from unnoise.models import MODEL_PRESETS, build_model
from unnoise.oracle import GaussianData
from unnoise.schedules import get_schedule

CONFIG = Path(__file__).parents[1] / "src" / "unnoise" / "configs" / "signals-1d.toml"


@pytest.fixture(scope="module")
def train_set() -> SignalSet:
    return load_dataset(DataConfig("signals"))


def kernel(lag: torch.Tensor, lengthscale: float = 8.0, amplitude: float = 0.5) -> torch.Tensor:
    """k(d) = s^2 exp(-d^2 / (2 ell^2)) plus the jitter at lag 0 (Rasmussen & Williams 2006, eq. 4.9)."""
    return amplitude**2 * (torch.exp(-lag.double() ** 2 / (2 * lengthscale**2)) + JITTER * (lag == 0))


def autocovariance(x: torch.Tensor, lags: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimates of E[x_i x_(i+k)] for a zero-mean set (N, 1, L), and their standard errors: each
    signal gives one (correlated-within, independent-across) average, so the spread is over signals."""
    x = x[:, 0].double()  # (N, L)
    per_signal = torch.stack([(x[:, : x.shape[1] - k] * x[:, k:]).mean(1) for k in lags], 1)  # (N, lags)
    return per_signal.mean(0), per_signal.std(0) / math.sqrt(x.shape[0])


def test_protocol_shapes_and_dtypes(train_set):
    ds = train_set
    assert "signals" in DATASET_NAMES and modality_of(DataConfig("signals")) == "signal"
    assert len(ds) == 10_000 and ds.sample_shape == (1, 256) and ds.signals.dtype == torch.float32
    assert ds.name == "signals" and ds.modality == "signal" and ds.num_classes == 0 and ds.class_names == []
    assert ds.captions is None and ds.labels.dtype == torch.int64 and bool((ds.labels == -1).all())
    x, label = ds[3]
    assert x.shape == (1, 256) and label == -1
    xb, labels = ds.batch(torch.tensor([0, 5, 7]))
    assert xb.shape == (3, 1, 256) and xb.dtype == torch.float32 and labels.tolist() == [-1, -1, -1]
    assert torch.equal(xb[1], ds[5][0])
    assert ds.signals.abs().max() < 3.0 and abs(ds.signals.std().item() - 0.5) < 0.01


def test_draws_are_reproducible_bit_for_bit_and_splits_are_separate(train_set):
    again = load_dataset(DataConfig("signals"))
    assert torch.equal(again.signals, train_set.signals)
    test = load_dataset(DataConfig("signals", split="test"))
    everything = load_dataset(DataConfig("signals", split="all"))
    assert len(test) == TEST_SIGNALS and len(everything) == len(train_set) + TEST_SIGNALS
    assert torch.equal(everything.signals, torch.cat([train_set.signals, test.signals]))
    assert torch.cdist(test.signals[:, 0], train_set.signals[:100, 0]).min() > 1.0  # no shared signal
    other_seed = load_dataset(DataConfig("signals", seed=1, num_points=100))
    assert not torch.allclose(other_seed.signals, train_set.signals[:100])
    assert torch.equal(load_dataset(DataConfig("signals", num_points=100)).signals, train_set.signals[:100])


@pytest.mark.parametrize("threads", [1, 2])
def test_draws_do_not_depend_on_the_thread_count(train_set, threads):
    # LAPACK's Cholesky and BLAS's matmul would change the last bits with the thread count.
    torch.set_num_threads(threads)  # conftest restores the previous count
    assert torch.equal(signals(n=2000).signals, train_set.signals[:2000])


def test_variance_and_autocovariance_are_the_kernel(train_set):
    # Lags 0..16 (k(16) is still 3% of k(0)) within 4 standard errors; the test has power: a kernel
    # 10% longer, or 5% more amplitude, is many standard errors away at some lag.
    lags = range(17)
    estimate, se = autocovariance(train_set.signals, lags)
    lag = torch.tensor(list(lags))
    assert ((estimate - kernel(lag)).abs() < 4 * se).all(), ((estimate - kernel(lag)) / se)
    assert ((estimate - kernel(lag, lengthscale=8.8)).abs() / se).max() > 10
    assert ((estimate - kernel(lag, amplitude=0.525)).abs() / se).max() > 10
    per_signal = train_set.signals.double().mean((1, 2))  # (N,) independent across signals
    assert per_signal.mean().abs() < 4 * per_signal.std() / math.sqrt(len(per_signal))  # zero mean


def test_the_oracle_is_the_law_of_the_data(train_set):
    law = train_set.gaussian()
    assert isinstance(law, GaussianData) and law.shape == (1, 256) and bool((law.mean == 0).all())
    lag = torch.arange(256)
    expected = kernel(lag[:, None] - lag[None, :])
    assert torch.allclose(law.cov, expected, atol=1e-12) and torch.equal(train_set.cov, se_kernel(256, 8.0, 0.5))
    # Whitened by the law (jitter included), the signals are N(0, I): every entry of their covariance
    # within 6 standard errors of I, even along the directions only the jitter gives variance to.
    white = (train_set.signals.double().flatten(1) @ law.eigenvectors) / law.eigenvalues.sqrt()  # (N, 256)
    n = len(train_set)
    assert (torch.cov(white.T) - torch.eye(256, dtype=torch.float64)).abs().max() < 6 * math.sqrt(2 / n)
    assert law.eigenvalues.min() > 0.9 * JITTER * 0.25


@pytest.mark.parametrize("t", [0.3, 0.6])
def test_the_oracle_denoiser_reaches_its_mse_on_the_data(train_set, t):
    schedule, g = get_schedule("edm"), torch.Generator().manual_seed(0)
    law = train_set.gaussian()
    x0 = train_set.signals[:4000].double()
    sigma = schedule.sigma(t).item()
    x_t = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)  # edm: alpha = 1
    errors = (law.denoiser(schedule)(x_t, t) - x0).square().flatten(1).mean(1)  # (n,)
    exact = law.denoising_mse(schedule, t)
    assert abs(errors.mean().item() - exact) < 4 * errors.std().item() / math.sqrt(len(errors))


@pytest.mark.parametrize("field, value", [("length", 0), ("lengthscale", 0.0), ("amplitude", -1.0)])
def test_config_values_are_checked(field, value):
    with pytest.raises(ValueError, match=f"{field} must be > 0, got {value}"):
        DataConfig("signals", **{field: value})


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n >= 1"):
        signals(n=0)
    with pytest.raises(ValueError, match="split must be one of"):
        signals(n=4, split="valid")
    with pytest.raises(ValueError, match="seed >= 0"):
        signals(n=4, seed=-1)


def test_other_length_and_kernel():
    ds = load_dataset(DataConfig("signals", num_points=8, length=64, lengthscale=3.0, amplitude=1.0))
    assert ds.batch(torch.arange(8))[0].shape == (8, 1, 64) and ds.gaussian().shape == (1, 64)
    assert ds.cov[0, 3].item() == pytest.approx(math.exp(-0.5))


def test_the_1d_unet_reads_a_batch(train_set):
    torch.manual_seed(0)
    net = build_model(MODEL_PRESETS["unet1d_small"]())
    x, _ = train_set.batch(torch.arange(4))
    assert net(x, torch.rand(4)).shape == (4, 1, 256)


def test_the_shipped_config_loads_and_trains_a_step(train_set):
    from unnoise.config import load_config

    config = load_config(CONFIG)
    assert config.data.name == "signals" and config.model.dims == 1
    assert config.model.interface.sample_shape == load_dataset(config.data).sample_shape
    torch.manual_seed(0)
    net = build_model(config.model)
    x, _ = train_set.batch(torch.arange(8))
    out = net(x, torch.rand(8))
    out.square().mean().backward()
    assert out.shape == x.shape


SHORT = [  # the shipped recipe on shorter signals and a narrower U-Net, for a 1-2 minute test
    "data.length=64", "data.lengthscale=4.0", "data.num_points=4000", "model.image_size=64",
    "model.base_channels=16", "model.channel_mult=[1, 2, 2]", "model.attention_factors=[4]", "model.head_channels=32",
    "train.steps=SHORT_STEPS", "train.max_seconds=0", "train.checkpoint_every=0", "sample.n=8",
]
SHORT_STEPS = 600


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from unnoise.config import load_config
    from unnoise.training.loop import train

    out = tmp_path_factory.mktemp("signals") / "run"
    overrides = [o.replace("SHORT_STEPS", str(SHORT_STEPS)) for o in SHORT] + [f"out={str(out)!r}"]
    train(load_config(CONFIG, overrides), quiet=True)
    return out


def test_a_trained_1d_model_denoises_near_the_optimum(trained):
    # The data are Gaussian, so E[x0 | x_t] is exact; the network's error at each noise level is put
    # beside the least any denoiser can reach, on the same held-out signals and noise.
    from unnoise.eval.denoising import denoising_error
    from unnoise.pipeline import Pipeline

    pipe = Pipeline.load(trained)
    test = load_dataset(replace(pipe.config.data, split="test"))
    x0, _ = test.batch(torch.arange(500))
    rows = denoising_error(pipe.denoiser, test.gaussian().denoiser(pipe.schedule), x0, pipe.schedule)
    ratios = {r.sigma_tilde: round(r.ratio, 3) for r in rows}
    # Measured after these 600 steps (26 s here): 1.028, 1.018, 1.020, 1.008, 1.005 at sigma~ = 0.02 ..
    # 3. Bound: within 15% of the optimum at every level. The best denoiser that treats each position
    # alone (ignoring the correlations the network must learn) is 2.5, 3.5, 3.6, 2.0 and 1.15 times
    # the optimum at these levels (measured on the same signals), so the bound tells the two apart
    # everywhere but at the largest noise level.
    assert all(0.95 < r < 1.15 for r in ratios.values()), ratios


def test_the_sample_command_writes_signals_and_their_plot(trained, tmp_path, capsys):
    import numpy as np

    from unnoise.cli import main

    assert main(["sample", str(trained), "--n", "8", "--steps", "4", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (8, 1, 64)
    assert main(["sample", str(trained), "--n", "8", "--steps", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 5_000 and "shape (1, 64)" in capsys.readouterr().out
    assert (trained / "samples.png").is_file()  # the grid training wrote, by the same modality


def test_the_denoising_script_prints_the_table(trained, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from denoising_error import main as script

    assert script([str(trained), "--n", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "| sigma~ | t | MSE | optimal MSE | ratio |" and len(lines) == 3 + 5  # a row per level
    with pytest.raises(SystemExit):
        script([str(trained), "--n", "0"])
