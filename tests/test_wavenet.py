"""The DiffWave residual stack (unnoise.models.wavenet) and a truth check of the whole path on
waveforms: trained on a stationary AR(2) process, its samples' power spectrum is compared with the
closed form (unnoise.audio.ar2_spectrum) beside the real data's own distance to it."""

from pathlib import Path

import pytest
import torch

from unnoise.audio import ar2_covariance, ar2_spectrum, log_spectral_distance
from unnoise.conditioning import Condition
from unnoise.data import DataConfig, load_dataset
from unnoise.models.wavenet import WaveNet, WaveNetConfig

CONFIG = Path(__file__).parents[1] / "src" / "unnoise" / "configs" / "ar2-wavenet.toml"


def _random(config: WaveNetConfig) -> WaveNet:
    torch.manual_seed(0)
    net = WaveNet(config).double()
    net.output.weight.data.normal_(0, 0.2)  # it starts at zero, which would hide every dependence
    return net


def test_the_stack_is_non_causal_with_the_receptive_field_of_its_dilations():
    """Kernel 3 and dilations 1, 2, 4, 8 reach 15 samples each way: an input change at sample 64
    moves the output at 49..79 and nowhere else, before it as well as after (non-causal)."""
    net = _random(WaveNetConfig(length=128, channels=8, layers=4, cycle=4))
    x = torch.randn(1, 1, 128, dtype=torch.float64)
    moved = x.clone()
    moved[0, 0, 64] += 1
    t = torch.tensor([0.5], dtype=torch.float64)
    changed = ((net(moved, t) - net(x, t)).abs()[0, 0] > 1e-12).nonzero().flatten()
    assert changed.min().item() == 64 - 15 and changed.max().item() == 64 + 15


def test_frames_of_hop_samples_and_labels():
    """With hop 4 the stack runs on 32 frames of 4 samples and writes 128 samples back; a label changes
    the output, the null label (num_classes) is accepted, a label past it is refused."""
    net = _random(WaveNetConfig(length=128, channels=8, layers=2, cycle=2, hop=4, num_classes=3))
    x = torch.randn(2, 1, 128, dtype=torch.float64)
    t = torch.tensor([0.2, 0.2], dtype=torch.float64)
    a, b = net(x, t, Condition(labels=torch.tensor([0, 3]))), net(x, t, Condition(labels=torch.tensor([1, 3])))
    assert a.shape == x.shape
    assert (a[0] - b[0]).abs().max() > 1e-6 and (a[1] - b[1]).abs().max() == 0
    with pytest.raises(ValueError, match="labels must lie"):
        net(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="multiple of model.hop"):
        WaveNetConfig(length=130, hop=4)
    with pytest.raises(ValueError, match="waveforms of shape"):
        net(torch.randn(2, 1, 64, dtype=torch.float64), t)


def _fit_negation(mask: bool) -> float:
    """Train a hop-8 stack of 8 channels to output -x for white x (what cancelling the noise of a
    silent stretch asks of the network) and return the relative error left."""
    torch.manual_seed(0)
    net = WaveNet(WaveNetConfig(length=256, channels=8, layers=2, cycle=2, hop=8, mask=mask))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    t = torch.full((16,), 0.3)
    for _ in range(300):
        x = torch.randn(16, 1, 256)
        loss = (net(x, t) + x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(64, 1, 256)
    with torch.no_grad():
        return ((net(x, t[:1].expand(64)) + x).square().mean() / x.square().mean()).item()


def test_the_masked_path_passes_whole_frames_the_relus_cannot():
    """8 channels after a ReLU carry at most 4 signed values, so the stack alone cannot pass a frame
    of 8 white samples: a linear map through them would leave half the power, and the trained stack
    leaves 0.38. The masked linear path (encoding, a gain per channel, decoding) represents -x exactly
    and learns it (1e-13 left, float32)."""
    assert _fit_negation(mask=True) < 1e-4
    assert _fit_negation(mask=False) > 0.2


def test_ar2_data_have_the_closed_form_law():
    """The data's lag covariances are the Yule-Walker ones within 4 standard errors (over 10,000
    independent signals), and their average spectrum is the closed form's up to the Welch estimate's
    own leakage and noise (0.55 dB measured at n_fft 64; a nearby process is 2.7 dB away)."""
    data = load_dataset(DataConfig("ar2", length=128)).signals[:, 0].double()  # (10000, 128)
    cov = ar2_covariance(1.5, -0.9, 1.0, 6)[0]
    cov = cov * 0.25 / cov[0]  # scaled to the set's std 0.5
    for lag in range(6):
        per_signal = (data[:, : 128 - lag] * data[:, lag:]).mean(1)
        se = per_signal.std() / len(per_signal) ** 0.5
        assert abs(per_signal.mean() - cov[lag]) < 4 * se, lag
    assert log_spectral_distance(data, _truth(64), 64) < 0.8


def _truth(n_fft: int) -> torch.Tensor:
    """The closed-form spectrum of the set's process (std 0.5), at the n_fft // 2 + 1 Welch frequencies."""
    unit = ar2_covariance(1.5, -0.9, 1.0, 1)[0, 0]
    return ar2_spectrum(1.5, -0.9, (0.25 / unit).sqrt().item(), n_fft // 2 + 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from unnoise.config import load_config
    from unnoise.training.loop import train

    out = tmp_path_factory.mktemp("ar2") / "run"
    train(load_config(CONFIG, [f"out={str(out)!r}"]), quiet=True)
    return out


@pytest.mark.slow
def test_a_trained_waveform_model_has_the_process_spectrum(trained):
    """400 samples of the shipped ar2-wavenet recipe (800 steps) against the closed-form spectrum:
    LSD within 1.5 dB of what 400 real test signals score (the Welch estimate's leakage and noise);
    white noise and a nearby AR(2) process (1.4, -0.85) are beyond that bound, so it has power."""
    from unnoise.pipeline import Pipeline

    truth = _truth(64)
    x = Pipeline.load(trained).sample(400, progress=False)
    floor = log_spectral_distance(load_dataset(DataConfig("ar2", length=128, split="test")).signals[:400], truth, 64)
    bound = floor + 1.5
    assert log_spectral_distance(x, truth, 64) < bound
    nearby = load_dataset(DataConfig("ar2", length=128, split="test", ar1=1.4, ar2=-0.85)).signals[:400]
    assert log_spectral_distance(nearby, truth, 64) > bound
    assert log_spectral_distance(torch.randn(400, 1, 128) * 0.5, truth, 64) > bound
