"""What `unnoise sample` writes carries the settings it was made with (PNG text chunks, .npz
entries), one file per sample on request, class grids laid out by class; `unnoise export` writes a
model folder that samples exactly as its run does and cannot be resumed from."""

import json

import numpy as np
import pytest
from PIL import Image

from unnoise.cli import main
from unnoise.config import load_config
from unnoise.files import current_umask
from unnoise.training.loop import train

TREE = {"data": {"name": "digits8x8"},
        "model": {"preset": "unet_tiny", "in_channels": 1, "out_channels": 1, "image_size": 8, "num_classes": 10},
        "train": {"steps": 4, "batch_size": 16, "log_every": 2, "checkpoint_every": 4, "label_dropout": 0.1},
        "sample": {"n": 4, "steps": 2, "guidance": 2.0}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "run"
    train(load_config(None, tree={**TREE, "out": str(out)}), quiet=True)
    return out


def _cells(path, rows: int, columns: int, size: int = 8, gap: int = 1) -> np.ndarray:
    """The images of a grid PNG, (rows * columns, size, size) uint8, row by row."""
    grid = np.asarray(Image.open(path))
    return np.stack([grid[gap + r * (size + gap):gap + r * (size + gap) + size,
                          gap + c * (size + gap):gap + c * (size + gap) + size]
                     for r in range(rows) for c in range(columns)])


def test_grid_individual_files_and_npz_carry_their_settings(run, tmp_path, capsys):
    grid, folder, raw = tmp_path / "grid.png", tmp_path / "each", tmp_path / "x.npz"
    common = [str(run), "--n", "20", "--steps", "3", "--seed", "5", "--sampler", "ddim", "--option", "eta=0.5"]
    assert main(["sample", *common, "--out", str(grid), "--individual", str(folder)]) == 0
    assert main(["sample", *common, "--out", str(raw)]) == 0
    text = Image.open(grid).text
    assert {k: text[k] for k in ("sampler", "steps", "seed", "step", "guidance", "options")} == {
        "sampler": "ddim", "steps": "3", "seed": "5", "step": "4", "guidance": "2.0", "options": '{"eta": 0.5}'}
    assert json.loads(text["labels"]) == [i % 10 for i in range(20)] and str(run) in text["model"]
    # the class grid is laid out by class: 10 columns, column c holds class c
    assert Image.open(grid).size == (10 * 9 + 1, 2 * 9 + 1)
    cells = _cells(grid, rows=2, columns=10)
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(20)]
    for i, f in enumerate(files):
        one = Image.open(f)
        assert one.size == (8, 8) and np.array_equal(np.asarray(one), cells[i])  # the same sample, no border
        assert (one.text["index"], one.text["label"], one.text["seed"]) == (str(i), str(i % 10), "5")
    with np.load(raw, allow_pickle=False) as f:  # strings and settings load without pickle
        assert f["samples"].shape == (20, 1, 8, 8) and list(f["labels"]) == [i % 10 for i in range(20)]
        assert list(f["index"]) == list(range(20)) and int(f["seed"]) == 5
        assert json.loads(str(f["settings"]))["options"] == {"eta": 0.5}
        pixels = ((np.clip(f["samples"][:, 0], -1, 1) + 1) * 127.5).round().astype(np.uint8)
    assert np.array_equal(pixels, cells)  # the .npz holds the same samples as the picture
    assert "wrote" in capsys.readouterr().out
    trained = Image.open(run / "samples.png")  # the grid training wrote carries its settings too
    assert trained.text["step"] == "4" and json.loads(trained.text["labels"]) == [0, 1, 2, 3]


def test_columns_and_one_label(run, tmp_path):
    path = tmp_path / "threes.png"
    assert main(["sample", str(run), "--n", "6", "--steps", "2", "--label", "3", "--columns", "3",
                 "--out", str(path)]) == 0
    assert Image.open(path).size == (3 * 9 + 1, 2 * 9 + 1)
    assert json.loads(Image.open(path).text["labels"]) == [3] * 6


def test_bad_output_requests_are_refused_before_sampling(run, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["sample", str(run), "--individual", str(full), "--out", str(tmp_path / "a.png")]) == 2
    assert "holds files already" in capsys.readouterr().err and not (tmp_path / "a.png").exists()
    assert main(["sample", str(run), "--option", "churn=1", "--out", str(tmp_path / "b.png")]) == 2
    assert "takes no option churn" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one line, exit 2
        main(["sample", str(run), "--option", "no-equals-sign"])


def test_export_writes_a_model_folder_that_samples_as_the_run(run, tmp_path, capsys):
    model = tmp_path / "shared" / "digits"
    assert main(["export", str(run), str(model)]) == 0
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "ema.safetensors"]
    assert (model / "ema.safetensors").stat().st_mode & 0o777 == 0o666 & ~current_umask()  # as open() makes it
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", str(run), "--n", "4", "--steps", "2", "--out", str(a)]) == 0
    assert main(["sample", str(model), "--n", "4", "--steps", "2", "--out", str(b)]) == 0
    with np.load(a) as x, np.load(b) as y:
        assert np.array_equal(x["samples"], y["samples"])
        assert json.loads(str(y["settings"]))["step"] == 4
    capsys.readouterr()
    assert main(["export", str(run), str(model)]) == 2  # never overwritten
    assert "exists already" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds a model for sampling, not a checkpoint to resume from"):
        train(load_config(None, tree={**TREE, "out": str(tmp_path / "again")}), resume=str(model), quiet=True)
