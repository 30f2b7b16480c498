"""Moving digits (unnoise.data.video): shapes, labels, elastic bounces, rigid sub-pixel motion,
independent-frame rows for joint video-image training, determinism."""

import numpy as np
import pytest
import torch

from unnoise.data.video import VideoSet, bounce, moving_digits, place
from unnoise.video import centre_of_mass

T, SIZE, DIGIT = 10, 32, 16
LO, HI = (DIGIT - 1) / 2, SIZE - 1 - (DIGIT - 1) / 2  # the reach of the digit square's centre


@pytest.fixture(scope="module")
def clips() -> VideoSet:
    return moving_digits("test", independent_fraction=0.2)  # 1000 videos + 200 rows of independent frames


def test_shapes_labels_and_serving(clips):
    assert len(clips) == 1200 and clips.sample_shape == (1, T, SIZE, SIZE) and clips.videos.dtype == torch.uint8
    assert clips.modality == "video" and clips.frames == T and clips.image_size == SIZE and clips.channels == 1
    assert clips.class_names == [str(d) for d in range(10)]
    assert torch.bincount(clips.labels[:1000]).tolist() == [100] * 10  # 2 videos of each of 50 digits a class
    assert (clips.labels[1000:] == -1).all()
    x, labels = clips.batch(torch.tensor([0, 1, 1100]))
    assert x.shape == (3, 1, T, SIZE, SIZE) and x.dtype == torch.float32 and labels.tolist() == [0, 0, -1]
    raw = clips.videos[[0, 1, 1100]].float()
    assert torch.equal(x, raw / 127.5 - 1)  # 0 -> -1, 255 -> 1
    assert (clips.videos[:1000].amax((1, 2, 3, 4)) > 100).all()  # every video shows ink (faintest peak: 146)
    assert clips.videos[:1000].float().mean() < 40  # on a black canvas


def test_digit_stays_on_canvas_and_moves_rigidly(clips):
    centres, com = clips.trajectories[:1000].double(), centre_of_mass(clips.batch(torch.arange(1000))[0])
    assert centres.min() >= LO - 1e-4 and centres.max() <= HI + 1e-4
    # Nothing is cut off at a wall: each frame holds the whole digit. Rounding moves each of the at most
    # (DIGIT + 1)^2 pixels under the placed digit by <= 0.5, so two frames' ink differs by <= (DIGIT + 1)^2.
    mass = clips.videos[:1000, 0].double().sum((-2, -1))  # (N, T) in pixel units 0..255
    assert (mass - mass[:, :1]).abs().max() <= (DIGIT + 1) ** 2
    # The digit's ink centre is its square's centre plus a fixed offset (MNIST centres ink at 14, not
    # 13.5, of 28): within a pixel, and the same in every frame up to rounding (measured <= 0.011 px).
    offset = com - centres
    assert offset.abs().max() < 1.0
    assert (offset - offset.mean(1, keepdim=True)).abs().max() < 0.05


def test_bounces_are_elastic(clips):
    """Frame-by-frame simulation (move, then reflect off a wall and flip that velocity component) from
    the first frame's position and velocity reproduces every stored position and velocity."""
    p, v = clips.trajectories[:1000, 0].double().clone(), clips.velocities[:1000, 0].double().clone()
    speed = v.norm(dim=-1)
    assert speed.min() >= 1.0 - 1e-5 and speed.max() <= 3.0 + 1e-5
    bounced = torch.zeros(1000, dtype=torch.bool)
    for t in range(1, T):
        p = p + v
        over, under = p > HI, p < LO
        p = torch.where(over, 2 * HI - p, torch.where(under, 2 * LO - p, p))
        v = torch.where(over | under, -v, v)
        bounced |= (over | under).any(-1)
        torch.testing.assert_close(p, clips.trajectories[:1000, t].double(), atol=1e-4, rtol=0)
        torch.testing.assert_close(v, clips.velocities[:1000, t].double(), atol=1e-5, rtol=0)
    assert bounced.float().mean() > 0.5  # most videos do hit a wall (measured 0.9): the check has teeth


def test_bounce_is_reflection():
    u = np.linspace(-40, 60, 1001)
    folded = bounce(u, 2.0, 12.0)
    assert folded.min() >= 2.0 and folded.max() <= 12.0
    inside = (u >= 2) & (u <= 12)
    np.testing.assert_allclose(folded[inside], u[inside])
    np.testing.assert_allclose(bounce(12.0 + 3.0, 2.0, 12.0), 9.0)  # 3 past the far wall -> 3 back inside
    np.testing.assert_allclose(bounce(2.0 - 1.5, 2.0, 12.0), 3.5)
    np.testing.assert_allclose(bounce(u + 20.0, 2.0, 12.0), folded, atol=1e-9)  # period 2 (hi - lo)


def test_bilinear_placement_moves_the_centre_of_mass_exactly():
    tiles = torch.rand(5, 6, 6, dtype=torch.float64)
    corners = torch.tensor([[0.0, 0.0], [3.25, 1.5], [9.99, 0.01], [10.0, 10.0], [4.5, 7.75]], dtype=torch.float64)
    canvas = place(tiles, corners, 16)  # (5, 16, 16)
    torch.testing.assert_close(canvas.sum((-2, -1)), tiles.sum((-2, -1)))  # nothing lost at the edges
    expected = centre_of_mass(tiles[:, None, None] * 2 - 1)[:, 0] + corners
    torch.testing.assert_close(centre_of_mass(canvas[:, None, None] * 2 - 1)[:, 0], expected)


def test_independent_rows_are_frames_of_different_videos(clips):
    flags = clips.conditions(torch.arange(len(clips)))["independent"]
    assert flags.dtype == torch.bool and flags.tolist() == [False] * 1000 + [True] * 200
    assert clips.conditions(torch.tensor([3, 1005]))["independent"].tolist() == [False, True]
    own = clips.sources[:1000]
    assert torch.equal(own[..., 0], torch.arange(1000)[:, None].expand(-1, T)) and torch.equal(
        own[..., 1], torch.arange(T).expand(1000, -1))
    src = clips.sources[1000:]  # (200, T, 2): (video, frame) of each independent frame
    assert all(len(set(row.tolist())) == T for row in src[..., 0])  # T different videos a row
    assert (src[..., 0] < 1000).all() and len(set(src[..., 1].flatten().tolist())) == T  # frames of every index
    frames = clips.videos[src[..., 0], :, src[..., 1]]  # (200, T, 1, H, W)
    assert torch.equal(clips.videos[1000:], frames.transpose(1, 2))
    assert torch.equal(clips.trajectories[1000:], clips.trajectories[src[..., 0], src[..., 1]])


def test_build_is_deterministic(clips, tmp_path, monkeypatch):
    monkeypatch.setenv("UNNOISE_CACHE", str(tmp_path))  # a fresh build, not the cached file
    again = moving_digits("test", independent_fraction=0.2)
    assert list(tmp_path.glob("moving-digits-*.npz"))
    assert torch.equal(again.videos, clips.videos) and torch.equal(again.labels, clips.labels)
    assert torch.equal(again.trajectories, clips.trajectories) and torch.equal(again.sources, clips.sources)


def test_all_is_train_then_test():
    small = {"frames": 2, "image_size": 12, "digit_size": 8, "videos_per_digit": 1}
    both, train, test = (moving_digits(split, **small) for split in ("all", "train", "test"))
    assert len(both) == 5000 and torch.equal(both.videos, torch.cat([train.videos, test.videos]))
    assert torch.equal(both.labels, torch.cat([train.labels, test.labels]))


@pytest.mark.parametrize("kwargs", [
    {"split": "valid"}, {"frames": 1}, {"digit_size": 32}, {"digit_size": 2}, {"videos_per_digit": 0},
    {"independent_fraction": 1.5},
])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        moving_digits(**kwargs)
