"""Feature networks: deterministic re-creation, the packaged weights, and clear refusals."""

import json

import pytest
import torch
from safetensors.torch import save_file

from unnoise.features import (FeatureConfig, FeatureNet, feature_net_for, load_feature_net, packaged_path,
                              save_feature_net, train_feature_net)

TINY = FeatureConfig(data="mnist", channels=(8, 8, 8), feature_dim=16, epochs=1, batch_size=64, limit=512)


def test_training_is_recreated_bit_for_bit(tmp_path):
    a = save_feature_net(*train_feature_net(TINY), tmp_path / "a.safetensors")
    b = save_feature_net(*train_feature_net(TINY), tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()
    reseeded = FeatureConfig(**{**TINY.__dict__, "seed": 1})
    other = save_feature_net(*train_feature_net(reseeded), tmp_path / "c.safetensors")
    assert other.read_bytes() != a.read_bytes()  # the seed matters: the equality above is not vacuous
    loaded = load_feature_net(a)
    assert loaded.info["train_images"] == 512 and loaded.info["config"]["seed"] == 0
    assert 0 <= loaded.info["test_accuracy"] <= 1 and loaded.info["test_images"] == 500


@pytest.mark.parametrize("data,accuracy,shape,classes", [("mnist", 0.95, (1, 28, 28), 10),
                                                          ("fashion-mnist", 0.88, (1, 28, 28), 10),
                                                          ("emoji", 0.5, (3, 32, 32), 8)])  # 8 emoji groups
def test_packaged_networks_record_how_they_were_made(data, accuracy, shape, classes):
    feats = load_feature_net(data)
    assert feats.name == f"{data}-cnn" and feats.info["data"] == data
    assert feats.info["test_accuracy"] >= accuracy  # measured on the test split, never trained on
    assert feats.info["config"]["seed"] == 0 and feats.info["threads"] >= 1
    assert packaged_path(data).stat().st_size < 1_000_000
    assert (feats.info["in_channels"], feats.info["image_size"], feats.info["image_size"]) == shape
    f, logits = feats.embed(torch.zeros(3, *shape))
    assert f.shape == (3, 128) and f.dtype == torch.float64 and logits.shape == (3, classes)


def test_inputs_of_another_size_or_colour_are_brought_to_the_network():
    net = FeatureNet(1, 28, 10, (8, 8, 8), 16).eval()
    grey = torch.rand(2, 1, 28, 28) * 2 - 1
    rgb = grey.expand(-1, 3, -1, -1)
    assert torch.allclose(net.features(rgb), net.features(grey), atol=1e-6)  # luma of grey RGB is the grey
    assert net.features(torch.zeros(2, 1, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match=r"take images \(B, 1 or 3, H, W\), got shape \(2, 2, 28, 28\)"):
        net.features(torch.zeros(2, 2, 28, 28))


def test_refusals_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no packaged feature network for 'folder'.*unnoise train-features"):
        feature_net_for("folder")
    with pytest.raises(ValueError, match="from .safetensors files only"):
        load_feature_net(tmp_path / "net.pt")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="not an unnoise feature network"):
        load_feature_net(plain)
    with pytest.raises(ValueError, match="channels must be three widths"):
        FeatureConfig(channels=(8, 8))
    with pytest.raises(ValueError, match=r"'folder' has 1 classes; .* at least 2 \(a folder: one subfolder"):
        train_feature_net(FeatureConfig(data="folder", path=str(_one_class_folder(tmp_path))))


def _one_class_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "images" / "only"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")
    return folder.parent


def test_metadata_is_json_with_the_config(tmp_path):
    from safetensors import safe_open

    path = save_feature_net(*train_feature_net(TINY), tmp_path / "n.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["unnoise.features"])
    assert meta["config"]["channels"] == [8, 8, 8] and meta["image_size"] == 28 and meta["num_classes"] == 10


def test_padded_images_are_cropped_back_before_the_network_sees_them():
    from unnoise.data import DataConfig, padded_from
    from unnoise.data.image_set import fit_images, to_signed_unit
    from unnoise.features import LoadedFeatures

    net = FeatureNet(1, 28, 10, (8, 8, 8), 16).eval()
    native = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    resizing = LoadedFeatures(net, "x", "0", {})
    for size in (32, 31):  # an even and an odd margin
        padded = to_signed_unit(fit_images(native, size, "pad"))
        cropping = LoadedFeatures(net, "x", "0", {}, crop=padded_from(DataConfig("fashion-mnist", image_size=size)))
        assert torch.equal(cropping.embed(padded)[0], resizing.embed(to_signed_unit(native))[0])
        assert not torch.allclose(resizing.embed(padded)[0], resizing.embed(to_signed_unit(native))[0], atol=1e-3)
    # only what was padded is cropped: native sizes, resized sets and sets fit never touches
    assert padded_from(DataConfig("fashion-mnist")) is None
    assert padded_from(DataConfig("mnist", image_size=32, fit="resize")) is None
    assert padded_from(DataConfig("emoji", image_size=32)) is None
    with pytest.raises(ValueError, match=r"take images \(B, 1 or 3, H, W\), got shape \(28, 28\)"):
        resizing.embed(torch.zeros(28, 28))
