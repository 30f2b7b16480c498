"""Audio signal processing against closed forms, and the shipped audio feature networks.

log-mel: a pure tone peaks in its mel band and white noise of variance s^2 gives s^2 times each
filter's weight; AR(2): the exact spectrum and autocovariance against long simulated paths (tolerances
from the number of independent segments or paths); LSD: zero for a set and itself, 3 dB for a 3 dB gain.
"""

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from unnoise.audio import (
    ar2_covariance,
    ar2_spectrum,
    average_psd,
    hz_to_mel,
    log_mel,
    log_spectral_distance,
    mel_filterbank,
    mel_to_hz,
)
from unnoise.audio_features import (
    AudioFeatureConfig,
    audio_feature_config,
    load_audio_features,
    save_audio_features,
    train_audio_features,
)
from unnoise.data.audio import drums, real_digits, spoken_digits
from unnoise.features import packaged_path
from unnoise.metrics import frechet_distance, gaussian_stats

A1, A2, NOISE = 1.2, -0.6, 0.5  # a resonant AR(2): complex roots of modulus sqrt(0.6), a 21 dB spectral peak


def test_mel_scale_at_known_points():
    assert hz_to_mel(0.0).item() == 0.0
    assert hz_to_mel(700.0).item() == pytest.approx(2595 * math.log10(2))  # f = 700 Hz doubles 1 + f/700
    assert hz_to_mel(1000.0).item() == pytest.approx(1000.0, abs=0.05)  # the scale's anchor: 1000 mel ~ 1 kHz
    f = torch.tensor([0.0, 55.0, 440.0, 4000.0, 8000.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-9)


@pytest.mark.parametrize("band", [8, 24, 40, 56])
def test_a_pure_tone_peaks_in_its_mel_band(band):
    edges = mel_to_hz(torch.linspace(0, hz_to_mel(8000.0).item(), 64 + 2))
    freq = edges[band + 1].item()  # the centre of mel band `band` (64 bands, 0..8 kHz)
    t = torch.arange(16000, dtype=torch.float64) / 16000
    tone = (0.5 * torch.sin(2 * torch.pi * freq * t)).float().reshape(1, 1, -1)
    energy = log_mel(tone, 16000).mean(-1)[0, 0]  # (64,) mean over frames
    assert energy.argmax().item() == band
    far = torch.cat([energy[:max(band - 3, 0)], energy[band + 4:]])
    assert (energy[band] - far).min() > math.log(100)  # 20 dB above every band three or more away


def test_white_noise_gives_its_variance_times_each_filter():
    sigma = 0.3
    noise = sigma * torch.randn(64, 1, 16000, generator=torch.Generator().manual_seed(0))
    mel = log_mel(noise, 16000).exp()[:, 0, :, 4:-4]  # (64, M, T): interior frames (no reflected ends)
    per_signal = mel.mean(-1)  # (64 signals, M): independent estimates of each band's mean energy
    expected = sigma**2 * mel_filterbank(512, 16000, 64).sum(1).double() + 1e-5  # E|X_k|^2 / sum w^2 = sigma^2
    se = per_signal.double().std(0) / math.sqrt(per_signal.shape[0])
    assert ((per_signal.double().mean(0) - expected).abs() < 5 * se).all()


def test_log_mel_refuses_impossible_settings():
    with pytest.raises(ValueError, match="n_mels=256 is too many for n_fft=512"):
        log_mel(torch.zeros(1, 4000), 16000, n_mels=256)
    with pytest.raises(ValueError, match="needs more than n_fft // 2 = 256 samples"):
        log_mel(torch.zeros(1, 100), 16000)


def _ar2_paths(n: int, length: int, seed: int = 0) -> np.ndarray:
    """(n, length) paths of x_t = A1 x_{t-1} + A2 x_{t-2} + e_t after a burn-in of 300 steps
    (the transient decays like 0.6^(t/2): 1e-33 by then)."""
    e = np.random.default_rng(seed).standard_normal((n, length + 300)) * NOISE
    return lfilter([1.0], [1.0, -A1, -A2], e, axis=1)[:, 300:]


def test_ar2_spectrum_matches_simulated_paths():
    paths = torch.from_numpy(_ar2_paths(200, 4096))
    psd = average_psd(paths, 256)
    exact = ar2_spectrum(A1, A2, NOISE, 129)
    # Welch (1967): averaging K Hann segments with 50 % overlap, var ~ S^2 (1 + 2 * 0.167^2) / K away from
    # 0 and pi (twice that there: a real periodogram is chi^2 with 1 degree of freedom). The window's bias
    # here is below 0.3 % (the exact expectation from ar2_covariance), well under the 5 standard errors.
    segments = 200 * ((4096 - 256) // 128 + 1)
    rel_se = torch.full((129,), math.sqrt(1.056 / segments), dtype=torch.float64)
    rel_se[[0, -1]] *= math.sqrt(2)
    assert ((psd / exact - 1).abs() < 5 * rel_se + 0.003).all()
    assert psd.argmax().item() == exact.argmax().item()
    # Parseval: the two-sided spectrum's mean over the circle is the variance gamma(0).
    fine = ar2_spectrum(A1, A2, NOISE, 20001)
    variance = ((fine[:-1] + fine[1:]) / 2).mean().item()  # trapezoid over [0, pi]
    assert variance == pytest.approx(ar2_covariance(A1, A2, NOISE, 1).item(), rel=1e-6)


def test_ar2_covariance_matches_simulated_paths():
    n, length = 20000, 12
    paths = _ar2_paths(n, length, seed=1)
    cov = ar2_covariance(A1, A2, NOISE, length).numpy()
    empirical = paths.T @ paths / n  # the mean is known to be 0
    # For Gaussian x: Var(x_i x_j) = C_ii C_jj + C_ij^2, so the standard error of each entry is that over n.
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert (np.abs(empirical - cov) < 5 * se).all()
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0
    assert cov[0, 1] == pytest.approx(A1 * cov[0, 0] / (1 - A2))  # the first Yule-Walker equation


def test_ar2_refuses_a_process_that_is_not_stationary():
    with pytest.raises(ValueError, match="a1=0.6, a2=0.5 is not stationary"):
        ar2_spectrum(0.6, 0.5, 1.0, 10)
    with pytest.raises(ValueError, match="noise_std must be > 0"):
        ar2_covariance(0.5, 0.2, 0.0, 4)


def test_log_spectral_distance_zero_for_a_set_and_three_db_for_a_gain():
    paths = torch.from_numpy(_ar2_paths(64, 2048, seed=2)).unsqueeze(1)  # (N, 1, L)
    assert log_spectral_distance(paths, paths) == 0.0
    louder = paths * 10 ** (3 / 20)  # +3 dB at every frequency
    assert log_spectral_distance(paths, louder) == pytest.approx(3.0, abs=1e-9)
    # Against the exact spectrum only sampling noise remains: each bin's error in dB has standard deviation
    # 10 log10(e) sqrt(1.056 / K) for K segments (Welch 1967), and their RMS over 129 bins is close to it;
    # a2 off by 0.05 gives 0.58 dB.
    segments = 64 * ((2048 - 256) // 128 + 1)
    lsd = log_spectral_distance(paths, ar2_spectrum(A1, A2, NOISE, 129))
    assert lsd < 1.5 * 4.343 * math.sqrt(1.056 / segments) + 0.02
    assert log_spectral_distance(louder, ar2_spectrum(A1, A2, NOISE, 129)) > 2.5
    with pytest.raises(ValueError, match="has 129 frequencies, got 65"):
        log_spectral_distance(paths, ar2_spectrum(A1, A2, NOISE, 65))


# ---- the feature networks --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return {data: load_audio_features(data) for data in ("spoken-digits", "drums")}


def _accuracy(feats, dataset) -> tuple[float, torch.Tensor]:
    features, logits = feats.embed(dataset.clips)
    assert features.dtype == torch.float64 and features.shape == (len(dataset), 128)
    return (logits.argmax(1) == dataset.labels).double().mean().item(), features


# What the shipped networks scored when they were trained (right answers, test clips): held-out voices,
# held-out kits, and the 10 recorded digits.
MEASURED = {"spoken-digits": (360, 360), "drums": (58, 72)}
REAL_DIGITS_RIGHT = 8


@pytest.mark.parametrize("data,loader", [("spoken-digits", spoken_digits), ("drums", drums)])
def test_shipped_networks_reach_their_measured_test_accuracy(shipped, data, loader):
    feats = shipped[data]
    right, n = MEASURED[data]
    assert feats.name == f"{data}-melcnn" and feats.info["data"] == data
    assert (feats.info["test_accuracy"], feats.info["test_clips"]) == (round(right / n, 5), n)
    assert feats.info["config"]["seed"] == 0 and packaged_path(data).stat().st_size < 1_000_000
    accuracy, _ = _accuracy(feats, loader("test"))
    # Another torch build may flip a near-tie: allow two binomial standard errors of a test set this size,
    # with Laplace's (right + 1) / (n + 2) so that a perfect score still has one (360 clips: 1 miss allowed).
    p = (right + 1) / (n + 2)
    assert accuracy >= right / n - 2 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("data,loader", [("spoken-digits", spoken_digits), ("drums", drums)])
def test_features_tell_noisy_clips_from_clean_ones(shipped, data, loader):
    # The floor is the FD between the train and test splits' features: two samples of the same source.
    # White noise 30 dB below the clips' peak must move the test split's features much further than that.
    feats, clips = shipped[data], loader("test").clips
    noisy = clips + 0.03 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(0))
    fd = frechet_distance(*gaussian_stats(feats.embed(clips)[0]), *gaussian_stats(feats.embed(noisy)[0]))
    assert fd > 5 * feats.info["fd_train_test"] > 0


def test_shipped_digit_network_hears_recorded_speech(shipped):
    feats = shipped["spoken-digits"]
    real = real_digits()
    correct = int((feats.embed(real.clips)[1].argmax(1) == real.labels).sum())
    assert feats.info["real_digits_correct"] == REAL_DIGITS_RIGHT
    assert correct >= REAL_DIGITS_RIGHT - 1


def test_training_is_recreated_bit_for_bit(tmp_path):
    tiny = audio_feature_config("drums", channels=(4, 4, 8), feature_dim=8, epochs=1, batch_size=32, limit=64)
    a = save_audio_features(*train_audio_features(tiny), tmp_path / "a.safetensors")
    b = save_audio_features(*train_audio_features(tiny), tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()
    loaded = load_audio_features(a)
    assert loaded.info["train_clips"] == 64 and loaded.info["config"]["channels"] == [4, 4, 8]
    features, logits = loaded.embed(torch.zeros(3, 1, 8192))
    assert features.shape == (3, 8) and logits.shape == (3, 5)
    with pytest.raises(ValueError, match=r"takes clips \(B, 1, 8192\), got shape \(3, 1, 100\)"):
        loaded.embed(torch.zeros(3, 1, 100))


def test_refusals_are_clear(tmp_path):
    with pytest.raises(ValueError, match="audio feature networks train on spoken-digits, drums, got 'mnist'"):
        AudioFeatureConfig(data="mnist")
    with pytest.raises(ValueError, match="from .safetensors files only"):
        load_audio_features(tmp_path / "net.pt")
    with pytest.raises(FileNotFoundError, match="no audio feature network at"):
        load_audio_features(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="not an unnoise audio feature network"):
        load_audio_features(packaged_path("mnist"))
