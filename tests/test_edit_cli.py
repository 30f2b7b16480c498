"""`unnoise edit` end to end on a tiny MNIST model: SDEdit and inpainting write grids with their
settings; the known pixels survive inpainting exactly; bad requests fail with one line before any work."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from unnoise.cli import main
from unnoise.inputs import box_mask, read_image, read_mask


@pytest.fixture(scope="module")
def run(tiny_mnist_run):
    return tiny_mnist_run


@pytest.fixture
def files(tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255  # a "1"
    Image.fromarray(digit).save(tmp_path / "digit.png")
    mask = np.zeros((28, 28), np.uint8)
    mask[:, 14:] = 255  # generate the right half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path


def test_sdedit_and_inpaint_write_their_edits(run, files, capsys):
    out = files / "sd.npz"
    assert main(["edit", str(run), "--image", str(files / "digit.png"), "--strength", "0.4", "--n", "3",
                 "--steps", "4", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["samples"].shape == (3, 1, 28, 28) and np.isfinite(f["samples"]).all()
        settings = json.loads(str(f["settings"]))
    assert settings["mode"] == "sdedit" and settings["strength"] == 0.4 and settings["steps"] == 4
    for extra in ([], ["--resample", "2", "--jump", "2"]):
        out = files / f"ip{len(extra)}.npz"
        assert main(["edit", str(run), "--image", str(files / "digit.png"), "--mode", "inpaint", "--mask",
                     str(files / "mask.png"), "--n", "2", "--steps", "4", "--out", str(out), *extra]) == 0
        with np.load(out) as f:
            x = torch.from_numpy(f["samples"])
            assert json.loads(str(f["settings"]))["sampler"] == "ddpm"
        image = read_image(files / "digit.png", (1, 28, 28))
        assert torch.equal(x[..., :14], image.expand(2, -1, -1, -1)[..., :14])  # the kept half, exactly
    assert main(["edit", str(run), "--image", str(files / "digit.png"), "--mode", "inpaint", "--box", "0,0,28,14",
                 "--n", "2", "--steps", "3", "--out", str(files / "box.png")]) == 0
    assert Image.open(files / "box.png").text["mode"] == "inpaint"


def test_masks_and_boxes(files):
    keep = read_mask(files / "mask.png", (1, 28, 28))
    assert keep.shape == (1, 1, 28, 28) and keep[..., :14].all() and not keep[..., 14:].any()
    box = box_mask("2,3,10,5", (1, 28, 28))
    assert (~box).sum() == 8 * 2 and not box[0, 0, 3, 2] and box[0, 0, 5, 2]
    big = files / "big.png"
    Image.fromarray(np.full((56, 40), 255, np.uint8)).save(big)
    assert torch.equal(read_image(big, (1, 28, 28)), torch.ones(1, 1, 28, 28))  # resized, 255 -> 1


@pytest.mark.parametrize("args, message", [
    (["--strength", "0"], "--strength must lie in (0, 1], got 0"),
    (["--mode", "inpaint"], "--mode inpaint needs a --mask or a --box"),
    (["--mode", "inpaint", "--box", "0,0,40,4"], "--box 0,0,40,4 must satisfy"),
    (["--box", "0,0,4,4"], "--mask and --box are for --mode inpaint"),
    (["--out", "x.jpg"], "--out must be a file name ending in .png or .npz"),
])
def test_bad_requests_fail_in_one_line(run, files, capsys, args, message):
    assert main(["edit", str(run), "--image", str(files / "digit.png"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_missing_image_is_named(run, files, capsys):
    assert main(["edit", str(run), "--image", str(files / "none.png"), "--out", str(files / "o.png")]) == 2
    assert "none.png: no such file" in capsys.readouterr().err
    assert not (files / "o.png").exists()


def test_invert_and_interpolate(run, files, capsys):
    """Exact inversion of a real picture by an (untrained) class-conditional model: the round trip is at
    float32 precision, where explicit DDIM inversion is far off; the interpolation's ends are the images."""
    z = files / "z.npz"
    assert main(["invert", str(run), "--image", str(files / "digit.png"), "--steps", "10", "--out", str(z),
                 "--reconstruction", str(files / "rec.png")]) == 0
    with np.load(z) as f:
        exact = json.loads(str(f["settings"]))
        assert f["z"].shape == (1, 1, 28, 28)
    assert exact["round_trip_rms"] < 1e-4 and exact["guidance"] is None and exact["label"] is None
    assert main(["invert", str(run), "--image", str(files / "digit.png"), "--steps", "10", "--method", "ddim",
                 "--out", str(files / "d.npz")]) == 0
    with np.load(files / "d.npz") as f:
        assert json.loads(str(f["settings"]))["round_trip_rms"] > 100 * exact["round_trip_rms"]
    out = files / "frames.npz"
    assert main(["interpolate", str(run), str(z), str(files / "mask.png"), "--steps", "10", "--frames", "4",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        frames = torch.from_numpy(f["samples"])
    image = read_image(files / "digit.png", (1, 28, 28))[0]
    assert frames.shape == (4, 1, 28, 28) and (frames[0] - image).abs().max() < 1e-3
    assert (frames[-1] - read_image(files / "mask.png", (1, 28, 28))[0]).abs().max() < 1e-3
    capsys.readouterr()
    assert main(["interpolate", str(run), str(z), str(z), "--steps", "12", "--out", str(out)]) == 2
    assert "inverted with other settings" in capsys.readouterr().err
