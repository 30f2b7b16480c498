"""Video measurements (unnoise.video) on real moving digits, time-shuffled and jumping ones, and exact
bouncing paths; GIF and strip output read back."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unnoise.data.video import bounce, moving_digits, place
from unnoise.plots import image_grid
from unnoise.video import (
    centre_of_mass,
    digit_accuracy,
    fit_bounce,
    frame_agreement,
    frame_classes,
    frechet_distance_per_frame,
    save_gif,
    save_video_strip,
    trajectory_error,
    video_report,
)

T, SIZE, DIGIT = 10, 32, 16


@pytest.fixture(scope="module")
def clips():
    return moving_digits("test", independent_fraction=0.1)  # 1000 videos + 100 rows of independent frames


@pytest.fixture(scope="module")
def real(clips):
    """50 real test videos, 5 of each digit (the set is sorted by label, 100 videos a digit)."""
    return clips.batch(torch.arange(5, 1000, 20))


def shuffled(videos: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The same videos with their frames in a random order (a fixed permutation per video)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(videos.shape[2], generator=g) for _ in range(len(videos))])
    return videos[torch.arange(len(videos))[:, None], :, order].transpose(1, 2)


def test_trajectory_error_separates_real_shuffled_and_jumping_videos(clips):
    x, _ = clips.batch(torch.arange(0, 1000, 5))  # 200 videos
    real, mixed = trajectory_error(x), trajectory_error(shuffled(x))
    # A real path is an exact bounce but for the uint8 rounding of pixels, which moves an ink centre by
    # thousandths of a pixel (measured: mean 0.0015, max 0.0043 px over the 1000 test videos).
    assert real.max() < 0.05
    # Shuffling keeps every position but breaks the order (measured over 1000: mean 3.7 px, 1% below
    # 1.7 px); a slow digit with two neighbouring frames swapped can still come close, hence a fraction.
    assert mixed.mean() > 2.0 and (mixed > 1.0).float().mean() > 0.95
    jumping, _ = clips.batch(torch.arange(1000, 1100))  # frames of 10 different videos (mean 5.4 px)
    assert trajectory_error(jumping).mean() > 3.0


def exact_paths(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Videos (n, 1, T, SIZE, SIZE) float64 of a 2x2 block of ink centred in a DIGIT square whose corner
    follows an exact bounce path, and those centres (n, T, 2); some cross a wall right at a frame."""
    rng = np.random.default_rng(seed)
    travel = SIZE - DIGIT
    start, velocity = rng.uniform(0, 2 * travel, (n, 2)), rng.uniform(-3.9, 3.9, (n, 2))
    velocity[:4] = [[2.0, 0.0], [0.0, -4.0 / 3], [0.0, 0.0], [1.0, 1.0]]  # along an axis, still, diagonal
    start[:4] = [[10.0, 3.0], [6.0, 4.0], [0.0, 16.0], [13.0, 15.5]]  # walls hit exactly at a frame
    corners = bounce(start[:, None] + velocity[:, None] * np.arange(T)[None, :, None], 0, travel)  # (n, T, 2)
    tile = torch.zeros(DIGIT, DIGIT, dtype=torch.float64)
    tile[DIGIT // 2 - 1:DIGIT // 2 + 1, DIGIT // 2 - 1:DIGIT // 2 + 1] = 1.0  # centre of mass (DIGIT - 1) / 2
    canvas = place(tile.expand(n * T, -1, -1), torch.from_numpy(corners).reshape(-1, 2), SIZE)
    return canvas.reshape(n, 1, T, SIZE, SIZE) * 2 - 1, corners + (DIGIT - 1) / 2


def test_trajectory_error_is_zero_on_exact_bounce_paths():
    videos, centres = exact_paths(40, seed=0)
    torch.testing.assert_close(centre_of_mass(videos), torch.from_numpy(centres), atol=1e-9, rtol=0)
    assert trajectory_error(videos).max() < 1e-6
    rng = np.random.default_rng(1)  # the fit alone, on many paths of 1-D coordinates
    u, v = rng.uniform(0, 32, 200), rng.uniform(-3.9, 3.9, 200)
    paths = 7.5 + bounce(u[:, None] + v[:, None] * np.arange(T), 0, 16)
    assert fit_bounce(paths, 16, 7.5).max() < 1e-10


def test_centre_of_mass_of_simple_frames():
    frames = -torch.ones(2, 1, 1, 8, 6)
    frames[0, 0, 0, 5, 1] = 1.0  # one white pixel at row 5, column 1
    torch.testing.assert_close(centre_of_mass(frames)[:, 0], torch.tensor([[5.0, 1.0], [3.5, 2.5]],
                                                                           dtype=torch.float64))  # black: middle


@pytest.fixture(scope="module")
def report(clips, real):
    reference = frame_classes(clips.batch(torch.arange(15, 1000, 20))[0])[1].flatten(0, 1)  # 50 other videos
    return video_report(*real, reference=reference), reference


def test_real_videos_are_read_as_their_digits(report):
    result, _ = report
    # Measured on all 1000 test videos: accuracy 0.975, agreement 0.994; on these 50: 0.996 and 0.996.
    assert result["digit_accuracy[mnist-cnn]"] > 0.95
    assert result["frame_agreement[mnist-cnn]"] > 0.95
    assert result["videos"] == 50 and result["frames"] == T and result["trajectory_error"] < 0.05
    assert 1.0 < result["centre_speed"] < 3.0  # the digits move 1-3 pixels a frame, less across a bounce


def test_frame_reading_ignores_order_and_catches_jumps(clips, real):
    x, labels = real[0][:10], real[1][:10]
    assert digit_accuracy(shuffled(x), labels) == digit_accuracy(x, labels)  # per frame: order is invisible
    jumping, _ = clips.batch(torch.arange(1000, 1020))  # frames of different digits: little agreement
    assert frame_agreement(jumping) < 0.6  # measured 0.27 over 100 such rows
    with pytest.raises(ValueError, match="labels"):
        digit_accuracy(x, -torch.ones(10, dtype=torch.int64))


def test_frechet_distance_per_frame_real_against_noise(report, real):
    result, reference = report
    floor = result["FD[mnist-cnn, frames]"]  # two sets of 50 real test videos
    noise = torch.randn(50, 1, T, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    far = frechet_distance_per_frame(noise, reference)
    assert far > 20 * floor  # measured: 1000 test vs 1000 train videos 0.13, noise vs train 211
    assert frechet_distance_per_frame(real[0], reference) == pytest.approx(floor, rel=1e-9)


def test_gif_round_trip(real, tmp_path):
    videos = real[0][:5]
    path = save_gif(videos, tmp_path / "clips.gif", columns=3, metadata={"steps": 50, "sampler": "heun"})
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == T and gif.info["loop"] == 0
        assert gif.size == (2 * (3 * (SIZE + 1) + 1), 2 * (2 * (SIZE + 1) + 1))  # 3 x 2 grid, 1-pixel gaps, x2
        assert json.loads(gif.info["comment"]) == {"steps": 50, "sampler": "heun"}
        for t in (0, 4, T - 1):
            gif.seek(t)
            expected = np.array(image_grid(videos[:, :, t], 3)).repeat(2, 0).repeat(2, 1)
            assert np.array_equal(np.array(gif.convert("L")), expected)  # grey levels survive exactly


def test_video_strip_has_a_row_per_video(real, tmp_path):
    videos = real[0][:3]
    with Image.open(save_video_strip(videos, tmp_path / "strip.png")) as strip:
        pixels = np.array(strip)
    assert pixels.shape == (3 * (SIZE + 1) + 1, T * (SIZE + 1) + 1)
    row, frame = 2, 7
    top, left = 1 + row * (SIZE + 1), 1 + frame * (SIZE + 1)
    expected = ((videos[row, 0, frame] + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(pixels[top:top + SIZE, left:left + SIZE], expected)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 2, 4, 32, 32)])
def test_bad_video_shapes_are_refused(shape, tmp_path):
    with pytest.raises(ValueError, match="videos of shape"):
        trajectory_error(torch.zeros(shape))
    with pytest.raises(ValueError, match="videos of shape"):
        save_gif(torch.zeros(shape), tmp_path / "x.gif")
