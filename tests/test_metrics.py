"""Sample-quality metrics: closed forms, limits, and their behaviour on real digits."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unnoise import metrics
from unnoise.data import DataConfig, load_dataset
from unnoise.features import load_feature_net


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # a shared eigenbasis: (C1 C2)^(1/2) = Q sqrt(a b) Q^T
    a, b = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    fd = metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    truth = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fd == pytest.approx(truth, rel=1e-10)
    assert metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu1, q @ np.diag(a) @ q.T) == pytest.approx(0, abs=1e-10)


def test_kid_is_unbiased_at_zero_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(0)
    real, same = torch.randn(4000, 16, generator=g), torch.randn(4000, 16, generator=g)
    kid, se = metrics.kernel_inception_distance(real, same)
    assert abs(kid) < 3 * se and se > 0
    shifted, se2 = metrics.kernel_inception_distance(real, same + 0.3)
    assert shifted > 10 * se2
    # The standard error is honest: over 40 independent pairs of sets, the spread matches it.
    values, errors = zip(*(metrics.kernel_inception_distance(torch.randn(300, 16, generator=g) + 0.3,
                                                             torch.randn(300, 16, generator=g)) for _ in range(40)),
                         strict=True)
    assert 0.6 < np.std(values) / np.mean(errors) < 1.6


def test_precision_recall_limits():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 8, generator=g)
    assert metrics.precision_recall(real, real.clone()) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # Generated samples from only half the real distribution (mode dropping): precise, half the recall.
    half = torch.randn(600, 8, generator=g)
    half[:, 0] = half[:, 0].abs() + 0.5
    p, r = metrics.precision_recall(real, half)
    assert p > 0.8 and 0.2 < r < 0.75


def test_nearest_distances():
    pool = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d = metrics.nearest_distances(torch.tensor([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]]), pool)
    assert d.tolist() == [1.0, 0.0, 5.0]


# ---- on real digits with the packaged feature network ------------------------------------------


@pytest.fixture(scope="module")
def digits():
    feats = load_feature_net("mnist")
    train = load_dataset(DataConfig("mnist", split="train")).images.float() / 127.5 - 1
    test = load_dataset(DataConfig("mnist", split="test")).images.float() / 127.5 - 1
    ref, _ = feats.embed(test)
    return feats, train, test, ref, metrics.gaussian_stats(ref)


def _fd(feats, images, stats):
    f, _ = feats.embed(images)
    return metrics.frechet_distance(*metrics.gaussian_stats(f), *stats)


def _blur(x, sigma):
    r = math.ceil(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), value=-1.0), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), value=-1.0), k.view(1, 1, -1, 1))


def test_packaged_feature_network_classifies_held_out_digits(digits):
    feats, _, test, _, _ = digits
    labels = load_dataset(DataConfig("mnist", split="test")).labels
    _, logits = feats.embed(test)
    assert (logits.argmax(1) == labels).double().mean() > 0.95
    assert feats.name == "mnist-cnn" and feats.info["test_accuracy"] > 0.95


def test_fd_of_real_images_is_near_its_floor_and_grows_with_noise_and_blur(digits):
    feats, train, _, _, stats = digits
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train), generator=g)
    real = train[pick[:500]]
    # The floor: two disjoint halves of the training split, 500 each, like the 500 test images.
    floor = _fd(feats, train[pick[500:1000]], metrics.gaussian_stats(feats.embed(real)[0]))
    fd_real = _fd(feats, real, stats)
    assert fd_real < 2.0 * floor + 1.0, (fd_real, floor)
    noisy = [_fd(feats, (real + s * torch.randn(real.shape, generator=g)).clamp(-1, 1), stats)
             for s in (0.1, 0.25, 0.5, 1.0)]
    blurred = [_fd(feats, _blur(real, s), stats) for s in (0.7, 1.2, 2.0, 3.0)]
    for curve in (noisy, blurred):
        assert fd_real < curve[0] and all(a < b for a, b in zip(curve, curve[1:], strict=False)), (fd_real, curve)


def test_kid_of_real_images_is_near_zero_and_grows_with_noise(digits):
    feats, train, _, ref, _ = digits
    g = torch.Generator().manual_seed(1)
    real = train[torch.randperm(len(train), generator=g)[:1000]]
    values = []
    for s in (0.0, 0.25, 0.5, 1.0):
        f, _ = feats.embed((real + s * torch.randn(real.shape, generator=g)).clamp(-1, 1))
        values.append(metrics.kernel_inception_distance(ref, f))
    kid0, se0 = values[0]
    assert abs(kid0) < 3 * se0 + 1e-3
    assert all(a[0] < b[0] for a, b in zip(values, values[1:], strict=False)), values
