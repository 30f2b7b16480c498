"""Audio signal processing: log-mel spectrograms, WAV files, pictures of clips, and spectral checks.

Everything a waveform model needs around its samples, written here in torch/NumPy/SciPy (no audio
library): a mel filterbank (HTK mel scale), log-mel spectrograms, 16-bit WAV in and out, a PNG of
waveforms over their spectrograms, and the average power spectrum of a set of signals with the
log-spectral distance between two of them. For a closed-form check of a waveform model, the exact
power spectrum and autocovariance of a stationary AR(2) Gaussian process.

    spec = log_mel(x, 16000)                            # x (B, 1, L) -> (B, 1, 64, 1 + L // 128)
    write_wav(x[0], "clip.wav", 16000); y = read_wav("clip.wav", 16000)   # (1, L) float32
    lsd = log_spectral_distance(samples, ar2_spectrum(1.2, -0.6, 0.1, 129))   # dB

Power spectra here are two-sided densities per unit of cycles/sample: |FFT(w x)|^2 / sum(w^2) for a
window w, whose mean over all FFT bins is the signal's variance, so white noise of variance s^2 has
the flat spectrum s^2. ar2_spectrum uses the same convention.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch import Tensor

from unnoise.files import write_atomic

LOG_FLOOR = 1e-5  # added to mel energies before the log: -115 dB re a full-scale sine's bin power


def hz_to_mel(f: Tensor | float) -> Tensor:
    """The HTK mel scale m = 2595 log10(1 + f / 700) (Young et al., The HTK Book 3.4, 2006, §5.4;
    after O'Shaughnessy 1987, p. 150)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: Tensor | float) -> Tensor:
    """The inverse of hz_to_mel: f = 700 (10^(m / 2595) - 1)."""
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=16)
def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters of unit peak (HTK Book 3.4, §5.4): centres
    equally spaced in mel between f_min and f_max, each rising from its lower neighbour's centre and
    falling to its upper neighbour's, evaluated at the FFT bins' frequencies. Cached: do not modify."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel filters need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, "
                         f"got f_min={f_min}, f_max={f_max}")
    edges = mel_to_hz(torch.linspace(hz_to_mel(f_min).item(), hz_to_mel(f_max).item(), n_mels + 2))  # (M + 2,)
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft  # (F,) bin frequencies
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1) each
    rising, falling = (bins - lower) / (centre - lower), (upper - bins) / (upper - centre)  # (M, F)
    bank = torch.minimum(rising, falling).clamp(min=0.0)
    if (bank.sum(1) == 0).any():  # a filter narrower than the bin spacing sees nothing: fewer mels or more n_fft
        raise ValueError(f"n_mels={n_mels} is too many for n_fft={n_fft} at {sample_rate} Hz: some mel filters "
                         "fall between FFT bins; use fewer mels or a larger n_fft")
    return bank.float()


def power_spectrogram(x: Tensor, n_fft: int, hop: int) -> Tensor:
    """(..., L) -> (..., n_fft // 2 + 1, 1 + L // hop): |STFT|^2 / sum(w^2) with a periodic Hann window w,
    frames centred (reflect-padded ends)."""
    window = torch.hann_window(n_fft, dtype=torch.float32, device=x.device)
    shape = x.shape[:-1]
    spec = torch.stft(x.reshape(-1, x.shape[-1]).float(), n_fft, hop, window=window, center=True,
                      pad_mode="reflect", return_complex=True)  # (B', F, T)
    power = spec.real**2 + spec.imag**2
    return (power / window.square().sum()).reshape(*shape, *power.shape[-2:])


def log_mel(x: Tensor, sample_rate: int, n_fft: int = 512, hop: int = 128, n_mels: int = 64, f_min: float = 0.0,
            f_max: float | None = None) -> Tensor:
    """Log-mel spectrogram log(mel energy + LOG_FLOOR) of waveforms x (..., L): (..., n_mels, 1 + L // hop).

    The defaults suit 16 kHz: 32 ms frames every 8 ms, 64 mel bands from 0 to 8 kHz. Mel energy =
    sum over FFT bins of the unit-peak triangular filter times the power spectrogram (power_spectrogram)."""
    if x.shape[-1] <= n_fft // 2:
        raise ValueError(f"log_mel needs more than n_fft // 2 = {n_fft // 2} samples, got shape {tuple(x.shape)}")
    if hop < 1:
        raise ValueError(f"hop must be >= 1, got {hop}")
    bank = mel_filterbank(n_fft, sample_rate, n_mels, f_min, f_max).to(x.device)  # (M, F)
    mel = torch.matmul(bank, power_spectrogram(x, n_fft, hop))  # (..., M, T)
    return torch.log(mel + LOG_FLOOR)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample along the last axis by the rational factor to_rate / from_rate (polyphase FIR,
    scipy.signal.resample_poly with its default Kaiser-windowed anti-alias filter)."""
    if from_rate == to_rate:
        return x
    from scipy.signal import resample_poly  # here, not at import: scipy.signal takes 2 s to import

    g = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(x, int(to_rate) // g, int(from_rate) // g, axis=-1)


def _as_clip(x: Tensor | np.ndarray) -> np.ndarray:
    """A clip (1, L) or (L,) as a float64 vector (L,)."""
    x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"a clip is (1, L) or (L,) with L >= 1, got shape {x.shape}")
    return x


def write_wav(x: Tensor | np.ndarray, path: str | os.PathLike, sample_rate: int) -> Path:
    """Write a clip (1, L) or (L,) in [-1, 1] as a mono 16-bit PCM WAV file, atomically. Sample value v
    becomes round(32768 v), clipped to -32768..32767 (so values beyond [-1, 1] clip, as a DAC would):
    the scale libsndfile divides by when it reads 16-bit PCM, so read_wav gives v back within 2^-16."""
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1 Hz, got {sample_rate}")
    pcm = np.clip(np.round(_as_clip(x) * 32768), -32768, 32767).astype(np.int16)
    return write_atomic(path, lambda tmp: soundfile.write(str(tmp), pcm, sample_rate, subtype="PCM_16",
                                                          format="WAV"))


def read_wav(path: str | os.PathLike, sample_rate: int) -> Tensor:
    """An audio file (anything libsndfile reads) as (1, L) float32 at sample_rate: channels averaged,
    resampled (resample) when the file's rate differs."""
    data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)  # (L, channels)
    return torch.from_numpy(resample(data.mean(1), rate, sample_rate).astype(np.float32)).unsqueeze(0)


def plot_audio(x: Tensor, path: str | os.PathLike, sample_rate: int, columns: int | None = None,
               metadata: dict[str, str] | None = None) -> Path:
    """Clips (N, 1, L) as a PNG grid: per clip its waveform (y in [-1, 1]) above its log-mel spectrogram."""
    from unnoise.plots import _save, plt  # matplotlib only when a picture is drawn

    if x.ndim != 3 or x.shape[1] != 1:
        raise ValueError(f"expected clips of shape (N, 1, L), got {tuple(x.shape)}")
    n, length = x.shape[0], x.shape[-1]
    columns = columns or min(n, 4)
    rows = math.ceil(n / columns)
    clips = x.detach().float().cpu()
    spectra = log_mel(clips, sample_rate)  # (N, 1, M, T)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(2.8 * columns, 2.6 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.4] * rows})
    seconds = np.arange(length) / sample_rate
    for k in range(rows * columns):
        wave_ax, spec_ax = axes[2 * (k // columns), k % columns], axes[2 * (k // columns) + 1, k % columns]
        if k < n:
            wave_ax.plot(seconds, clips[k, 0].numpy(), linewidth=0.5)
            wave_ax.set_xlim(0, seconds[-1] if length > 1 else 1)
            wave_ax.set_ylim(-1, 1)
            spec_ax.imshow(spectra[k, 0].numpy(), origin="lower", aspect="auto", cmap="magma",
                           extent=(0, length / sample_rate, 0, spectra.shape[-2]))
        for ax in (wave_ax, spec_ax):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= n:
                ax.axis("off")
    fig.tight_layout(h_pad=0.2, w_pad=0.4)
    return _save(fig, path, metadata)


def _as_signals(x: Tensor, name: str) -> Tensor:
    """Signals (N, L) or (N, 1, L) as (N, L) float64."""
    if x.ndim == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 2:
        raise ValueError(f"{name} must be signals (N, L) or (N, 1, L), got shape {tuple(x.shape)}")
    return x.detach().double().cpu()


def average_psd(x: Tensor, n_fft: int = 256) -> Tensor:
    """Welch's estimate (Welch 1967) of the power spectrum of signals x (N, L) or (N, 1, L), averaged over
    all signals: periodic Hann segments of n_fft samples, hop n_fft // 2, no detrending;
    (n_fft // 2 + 1,) float64 at frequencies pi k / (n_fft // 2) rad/sample, in the module's convention."""
    x = _as_signals(x, "x")
    if n_fft < 2 or x.shape[1] < n_fft:
        raise ValueError(f"average_psd needs 2 <= n_fft <= L, got n_fft={n_fft}, L={x.shape[1]}")
    segments = x.unfold(1, n_fft, n_fft // 2)  # (N, S, n_fft)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    power = torch.fft.rfft(segments * window, dim=-1).abs().square() / window.square().sum()  # (N, S, F)
    return power.mean((0, 1))


def log_spectral_distance(x: Tensor, reference: Tensor, n_fft: int = 256) -> float:
    """LSD = sqrt(mean_f (10 log10 P1(f) - 10 log10 P2(f))^2) in dB between the average power spectrum P1
    of signals x (N, L) or (N, 1, L) and P2, either the average_psd of `reference` signals (ndim >= 2) or
    `reference` itself when it is a power spectrum (n_fft // 2 + 1,) (e.g. ar2_spectrum), mean over the
    n_fft // 2 + 1 frequencies 0..pi. Zero for identical sets; a gain g on one set gives |20 log10 g|."""
    p1 = average_psd(x, n_fft)
    if reference.ndim == 1:
        if reference.shape[0] != n_fft // 2 + 1:
            raise ValueError(f"a reference spectrum for n_fft={n_fft} has {n_fft // 2 + 1} frequencies, "
                             f"got {reference.shape[0]}")
        p2 = reference.detach().double().cpu()
    else:
        p2 = average_psd(reference, n_fft)
    if not (p1 > 0).all() or not (p2 > 0).all():
        raise ValueError("log_spectral_distance needs positive power at every frequency (a silent set?)")
    return (10 * torch.log10(p1) - 10 * torch.log10(p2)).square().mean().sqrt().item()


def _check_ar2(a1: float, a2: float, noise_std: float) -> None:
    # The stationarity triangle: both roots of 1 - a1 z - a2 z^2 outside the unit circle
    # (Box, Jenkins, Reinsel & Ljung, Time Series Analysis, 5th ed. 2015, §3.2.4).
    if not (abs(a2) < 1 and a1 + a2 < 1 and a2 - a1 < 1):
        raise ValueError(f"AR(2) with a1={a1}, a2={a2} is not stationary: need |a2| < 1, a1 + a2 < 1, a2 - a1 < 1")
    if not noise_std > 0:
        raise ValueError(f"noise_std must be > 0, got {noise_std}")


def ar2_spectrum(a1: float, a2: float, noise_std: float, n_freqs: int) -> Tensor:
    """Power spectrum of the stationary AR(2) process x_t = a1 x_{t-1} + a2 x_{t-2} + e_t, e_t ~ N(0, s^2):
    S(w) = s^2 / |1 - a1 e^{-iw} - a2 e^{-2iw}|^2 (Brockwell & Davis, Time Series: Theory and Methods,
    2nd ed. 1991, Thm 4.4.2, without their 1 / (2 pi): the module's convention), at w = pi k / (n_freqs - 1),
    k = 0..n_freqs - 1 (the rfft bins of n_fft = 2 (n_freqs - 1)); (n_freqs,) float64."""
    _check_ar2(a1, a2, noise_std)
    if n_freqs < 2:
        raise ValueError(f"n_freqs must be >= 2, got {n_freqs}")
    w = torch.linspace(0, math.pi, n_freqs, dtype=torch.float64)
    z = torch.exp(-1j * w)  # e^{-iw}
    return noise_std**2 / (1 - a1 * z - a2 * z**2).abs().square()


def ar2_covariance(a1: float, a2: float, noise_std: float, length: int) -> Tensor:
    """(length, length) float64 covariance Cov(x_i, x_j) = gamma(|i - j|) of the stationary AR(2) process.

    From the Yule-Walker equations (Box et al. 2015, §3.2.4): gamma(0) = s^2 (1 - a2) / ((1 + a2)
    ((1 - a2)^2 - a1^2)), gamma(1) = a1 gamma(0) / (1 - a2), gamma(k) = a1 gamma(k-1) + a2 gamma(k-2)."""
    _check_ar2(a1, a2, noise_std)
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    gamma = [noise_std**2 * (1 - a2) / ((1 + a2) * ((1 - a2) ** 2 - a1**2))]
    gamma.append(a1 * gamma[0] / (1 - a2))
    for _ in range(2, length):
        gamma.append(a1 * gamma[-1] + a2 * gamma[-2])
    lags = torch.arange(length)
    return torch.tensor(gamma[:length], dtype=torch.float64)[(lags[:, None] - lags[None, :]).abs()]
