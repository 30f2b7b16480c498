import re
import time

import numpy as np
import pytest
import torch

from unnoise.data import FASHION_HELDOUT_PROMPTS, Captions, DataConfig, load_dataset
from unnoise.data import emoji as emoji_module
from unnoise.data.fashion import FASHION_NAMES, FASHION_TEMPLATES

# ---- the Captions table --------------------------------------------------------------------------


def test_captions_refuse_bad_tables_with_clear_errors():
    texts = ("", "a", "b")
    with pytest.raises(ValueError, match="texts\\[0\\] must be the empty string"):
        Captions(("a", "b"), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="distinct; repeated: \\['a'\\]"):
        Captions(("", "a", "a"), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="int64 \\(N, K\\)"):
        Captions(texts, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="-1 \\(padding\\) or in 0..2, got \\[3\\]"):
        Captions(texts, torch.tensor([[1, 3]]))
    with pytest.raises(ValueError, match="at least one caption id; rows \\[1\\]"):
        Captions(texts, torch.tensor([[1, 2], [-1, -1]]))
    with pytest.raises(ValueError, match="padding must follow .* rows \\[0\\]"):
        Captions(texts, torch.tensor([[-1, 2]]))
    captions = Captions(list(texts), torch.tensor([[1, -1], [2, 1]]))
    assert captions.texts == texts and len(captions) == 2


def test_draw_is_uniform_over_valid_ids_and_reproducible():
    captions = Captions(("", "a", "b", "c", "d"), torch.tensor([[1, 2, 3, -1], [4, -1, -1, -1], [1, 2, 3, 4]]))
    n = 30_000
    index = torch.tensor([0, 1, 2]).repeat(n)  # (3n,)
    ids = captions.draw(index, torch.Generator().manual_seed(0)).view(n, 3)
    assert ids.dtype == torch.int64 and (ids[:, 1] == 4).all()
    for row, valid in ((0, [1, 2, 3]), (2, [1, 2, 3, 4])):
        freq = torch.bincount(ids[:, row], minlength=5)[1:].double() / n
        p = 1 / len(valid)
        expected = torch.tensor([p if k in valid else 0.0 for k in range(1, 5)], dtype=torch.float64)
        assert (freq - expected).abs().max() < 5 * (p * (1 - p) / n) ** 0.5  # 5 sigma of a binomial frequency
    again = captions.draw(index, torch.Generator().manual_seed(0))
    other = captions.draw(index, torch.Generator().manual_seed(1))
    assert torch.equal(again, ids.flatten()) and not torch.equal(other, ids.flatten())


# ---- Fashion-MNIST: class names in templates, and held-out prompts -------------------------------


def _named_classes(text: str) -> list[int]:
    """Classes whose training noun appears in `text` as a whole word ("shirt" is not in "t-shirt")."""
    return [c for c, name in enumerate(FASHION_NAMES) if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)]


def test_fashion_captions_name_each_image_class():
    ds = load_dataset(DataConfig("fashion-mnist", split="test", captions=True))
    captions = ds.captions
    assert captions.ids.shape == (10_000, len(FASHION_TEMPLATES)) == (10_000, 8)
    assert len(captions.texts) == 1 + 10 * 8 and (captions.ids > 0).all()  # never the null caption
    text_class = torch.tensor([-1] + [_named_classes(t)[0] for t in captions.texts[1:]])
    assert all(len(_named_classes(t)) == 1 for t in captions.texts[1:])
    assert (text_class[captions.ids] == ds.labels.unsqueeze(1)).all()  # every caption of every image
    assert "a photo of an ankle boot" in captions.texts and "a pair of trousers" in captions.texts
    assert load_dataset(DataConfig("fashion-mnist", split="test")).captions is None


def test_fashion_heldout_prompts_are_unseen_paraphrases():
    train_texts = set(load_dataset(DataConfig("fashion-mnist", captions=True)).captions.texts)
    prompts = [p for p, _ in FASHION_HELDOUT_PROMPTS]
    assert len(set(prompts)) == 30 and not set(prompts) & train_texts
    assert sorted(c for _, c in FASHION_HELDOUT_PROMPTS) == sorted(list(range(10)) * 3)
    assert not any(_named_classes(p) for p in prompts)  # synonyms, not the training nouns
    assert ("a picture of a jumper", 2) in FASHION_HELDOUT_PROMPTS


def test_captions_only_for_sets_that_have_them():
    with pytest.raises(ValueError, match="captions=True needs a set with captions"):
        DataConfig("mnist", captions=True)
    with pytest.raises(ValueError, match="emoji images are RGB"):
        DataConfig("emoji", channels=1)


# ---- emoji ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNNOISE_CACHE", str(tmp_path_factory.mktemp("cache")))
        start = time.perf_counter()
        everything = load_dataset(DataConfig("emoji", split="all"))  # builds the cache
        built = time.perf_counter() - start
        yield everything, built


def test_emoji_set_shapes_and_captions(emoji_cache):
    ds, _ = emoji_cache
    n = len(ds)
    assert 1300 <= n <= 1400
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    # labels: Unicode's emoji groups, every emoji in one of the 8
    assert ds.num_classes == 8 and ds.labels.min() >= 0 and len(ds.labels.unique()) == 8
    group = dict(zip(ds.code_points, ds.labels.tolist(), strict=True))
    assert ds.class_names[group[0x1F34E]] == "Food & Drink" and ds.class_names[group[0x1F600]] == "Smileys & Emotion"
    assert ds.captions.texts[0] == "" and torch.equal(ds.captions.ids[:, 0], torch.arange(1, n + 1))
    assert ds.code_points == sorted(ds.code_points)
    # Only single pictographic code points: no ASCII, regional indicators, skin tones or joiners.
    assert min(ds.code_points) >= 0x80 and not {0x1F1E6, 0x1F3FB, 0x200D, 0x20E3, 0xFE0F} & set(ds.code_points)
    i = ds.code_points.index(0x1F34E)
    assert ds.captions.texts[ds.captions.ids[i, 0]] == "red apple"
    assert "grinning face with smiling eyes" in ds.captions.texts
    apple = ds.images[i].int()  # (3, 32, 32) on white
    fruit = apple.sum(0) < 600  # not background
    r, g, b = apple[:, fruit]
    assert fruit.float().mean() > 0.3 and ((r > g + 50) & (r > b + 50)).float().mean() > 0.6  # mostly red
    corner_white = (ds.images[:, :, 0, 0] == 255).all(1).float().mean()  # square glyphs fill their corners
    assert 0.75 < corner_white < 1  # 0.84 with font 2.042: the background shows around most emoji


def test_emoji_splits_are_disjoint_and_test_is_every_tenth(emoji_cache):
    everything, _ = emoji_cache
    train, test = (load_dataset(DataConfig("emoji", split=s)) for s in ("train", "test"))
    assert len(train) + len(test) == len(everything) and abs(len(test) / len(everything) - 0.1) < 0.01
    assert not set(train.code_points) & set(test.code_points)
    assert not set(train.captions.texts[1:]) & set(test.captions.texts[1:])  # test captions stay held out
    assert test.code_points == everything.code_points[9::10]
    assert torch.equal(test.images, everything.images[9::10])


def test_emoji_second_load_reads_the_cache(emoji_cache, monkeypatch):
    everything, built = emoji_cache
    (cached,) = emoji_module.cache_folder().glob("emoji-32px-white-*.npz")

    def no_render(*args):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(emoji_module, "render_emoji", no_render)
    start = time.perf_counter()
    again = load_dataset(DataConfig("emoji", split="all"))
    assert time.perf_counter() - start < built / 5
    assert torch.equal(again.images, everything.images) and again.captions.texts == everything.captions.texts
    with np.load(cached) as table:
        assert table["code_points"].tolist() == everything.code_points


def test_emoji_missing_font_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji_module, "EMOJI_FONT", tmp_path / "NotoColorEmoji.ttf")
    with pytest.raises(ValueError, match="apt-get install fonts-noto-color-emoji"):
        load_dataset(DataConfig("emoji"))
    with pytest.raises(ValueError, match="split must be one of train, test, all"):
        emoji_module.emoji_set("valid")


def test_emoji_groups_need_debian_unicode_data(tmp_path):
    from unnoise.data.emoji import emoji_groups

    with pytest.raises(ValueError, match="apt-get install unicode-data"):
        emoji_groups([0x1F600], path=tmp_path / "emoji-test.txt")
