"""Reference statistics of a split, cached beside the checkpoint, and the prompts a text model is
evaluated with (the reference images' captions)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from unnoise import metrics
from unnoise.config import RunConfig
from unnoise.data import eval_split, load_dataset
from unnoise.data.image_set import to_signed_unit
from unnoise.features import LoadedFeatures
from unnoise.files import write_atomic

REFERENCE_SPLITS = ("test", "train", "all")


@dataclass
class Reference:
    features: Tensor  # (N, D) float64, of the reference split
    labels: Tensor  # (N,) its labels (-1: none)
    prompts: list[str] | None  # its images' first captions, where the data set has captions
    train_images: Tensor  # (M, C, H, W) uint8, for the nearest-neighbour check and the floor
    train_labels: Tensor  # (M,)
    test_images: Tensor  # (K, C, H, W) uint8, held out: the nearest-neighbour check's baseline
    test_labels: Tensor
    mu: np.ndarray
    cov: np.ndarray
    split: str  # the split the features come from


def reference(config: RunConfig, feats: LoadedFeatures, cache_dir: Path, split: str | None = None) -> Reference:
    """Features of `split` (None: the held-out split, or the whole set where there is none), cached in
    `cache_dir/reference-<key>.safetensors`, the key hashing the images and the feature network."""
    held_out = eval_split(config.data.name)
    split = split or held_out
    if split != "all" and held_out == "all":
        raise ValueError(f"{config.data.name} has no train/test split; the reference can only be 'all'")
    sets = {s: load_dataset(replace(config.data, split=s)) for s in {split, held_out, "train"}}
    ref_set, test, train = sets[split], sets[held_out], sets["train"]
    if ref_set.modality != "image":
        raise ValueError(f"sample-quality metrics need an image data set, got {config.data.name!r}")
    key = hashlib.sha256(feats.sha256.encode() + split.encode() + (f"crop{feats.crop}".encode() if feats.crop else b"")
                         + ref_set.images.numpy().tobytes()).hexdigest()[:16]
    path = Path(cache_dir) / f"reference-{key}.safetensors"
    if path.is_file():
        features = load_file(str(path))["features"]
    else:
        features, _ = feats.embed(to_signed_unit(ref_set.images))
        write_atomic(path, lambda tmp: save_file({"features": features.contiguous()}, str(tmp)))
    mu, cov = metrics.gaussian_stats(features)
    captions = ref_set.captions
    prompts = [captions.texts[i] for i in captions.ids[:, 0].tolist()] if captions is not None else None
    return Reference(features, ref_set.labels, prompts, train.images, train.labels, test.images, test.labels,
                     mu, cov, split)


def reference_prompts(config: RunConfig, ref: Reference, n: int, seed: int) -> tuple[list[str] | None, Tensor | None]:
    """A text model's prompts and what they ask for: the reference images' captions in a seeded order
    (sample i gets prompt i mod N, so n < N still spans the whole reference, not its first n images,
    which are often sorted), and for each of the n samples its image's label (-1: none). As COCO
    evaluations prompt with the reference's captions: samples and reference describe the same things.
    (None, None) for a model without text conditioning."""
    if not config.model.interface.text:
        return None, None
    if ref.prompts is None:
        raise ValueError(f"{config.data.name} has no captions to prompt a text model with")
    order = torch.randperm(len(ref.prompts), generator=torch.Generator().manual_seed(seed))
    return [ref.prompts[i] for i in order.tolist()], ref.labels[order][torch.arange(n) % len(order)]
