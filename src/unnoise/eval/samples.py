"""Drawing samples for evaluation (through unnoise.pipeline.Pipeline) and the sample metrics:
Fréchet distance, KID, precision/recall and class accuracy in a feature network's features, a
nearest-training-neighbour check in pixels, and the floor a perfect model would score."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from tqdm import tqdm

from unnoise import metrics
from unnoise.convergence import CountingDenoiser
from unnoise.data.image_set import to_signed_unit
from unnoise.eval.reference import Reference
from unnoise.features import LoadedFeatures
from unnoise.pipeline import Pipeline


def cfg_scale(pipe: Pipeline, guidance: float | None) -> float | None:
    """The classifier-free scale to sample with: None keeps the run's, except on an unconditional
    model, which has no guidance to apply (1: none)."""
    return 1.0 if guidance is None and not pipe.interface.conditional else guidance


def draw(pipe: Pipeline, n: int, *, sampler: str | None, steps: int | None, spacing: str | None,
         guidance: float | None, seed: int, batch_size: int, options: dict | None = None,
         classifier_scale: float | None = None, prompts: list[str] | None = None, progress: bool = True,
         desc: str = "sampling") -> tuple[Tensor, Tensor | None, int | float, float]:
    """n samples in batches: images (n, C, H, W) float32 in [-1, 1] (clamped) on the CPU, the labels
    asked for (class-conditional models, or classifier guidance: i mod classes), the NFE per sample
    (averaged over batches: an adaptive solver's varies; with guidance one call is a doubled batch,
    with a classifier one call includes its forward and backward pass) and the seconds per sample.
    None settings keep the run's [sample] ones. With `prompts` (a text model) sample i uses prompt
    i mod len(prompts) and the labels are None: the caller knows what each prompt asks for."""
    counters: list[CountingDenoiser] = []

    def count(denoise):
        counters.append(CountingDenoiser(denoise))
        return counters[-1]

    out = []
    start = time.perf_counter()
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for first in range(0, n, batch_size):
            b = min(batch_size, n - first)
            x = pipe.sample(b, prompts=prompts, sampler=sampler, steps=steps, spacing=spacing,
                            guidance=cfg_scale(pipe, guidance), classifier_scale=classifier_scale, seed=seed,
                            options=options, progress=False, first=first, batch_size=b, wrap=count)  # first + j
            out.append(x.float().clamp(-1, 1))
            bar.update(b)
    seconds = (time.perf_counter() - start) / n
    labels = torch.arange(n) % pipe.classes if pipe.classes and not prompts else None
    calls = sum(c.calls * len(x) for c, x in zip(counters, out, strict=True)) / n
    return torch.cat(out), labels, round(calls, 2) if calls != int(calls) else int(calls), seconds


@dataclass(frozen=True)
class SampleMetrics:
    """The sample metrics of generated images against a reference (None: not asked for, or not
    measurable, e.g. accuracy without labels)."""

    features: str  # the feature network's name: part of every feature metric's name
    fd: float | None = None  # Fréchet distance
    kid: float | None = None  # kernel (inception) distance
    kid_se: float | None = None  # its standard error
    precision: float | None = None  # k = 3
    recall: float | None = None
    accuracy: float | None = None  # of the feature network's classes against the labels asked for
    nn_median: float | None = None  # median pixel distance of a sample to its nearest training image
    nn_median_test: float | None = None  # the same for held-out test images
    nn_closer_than_1pct: float | None = None  # share of samples closer than 1% of the test images are

    def names(self) -> dict[str, str]:
        """Each field's name in results, e.g. fd -> "FD[fashion-mnist-cnn]"."""
        f = self.features
        return {"fd": f"FD[{f}]", "kid": f"KID[{f}]", "kid_se": f"KID[{f}] se", "precision": f"precision[{f}]",
                "recall": f"recall[{f}]", "accuracy": f"accuracy[{f}]", "nn_median": "nn_train median",
                "nn_median_test": "nn_train median (test images)",
                "nn_closer_than_1pct": "nn_train closer than 1% of test"}

    def named(self) -> dict[str, float]:
        """The measured metrics under their result names, in field order."""
        names = self.names()
        return {names[f.name]: v for f in fields(self) if f.name in names and (v := getattr(self, f.name)) is not None}


def sample_metrics(images: Tensor, labels: Tensor | None, ref: Reference, feats: LoadedFeatures,
                   which: tuple[str, ...]) -> SampleMetrics:
    """The sample metrics of `which` (fd, kid, pr, acc, nn) for generated images against the reference."""
    out: dict = {}
    f, logits = feats.embed(images)
    if "fd" in which:
        mu, cov = metrics.gaussian_stats(f)
        out["fd"] = metrics.frechet_distance(mu, cov, ref.mu, ref.cov)
    if "kid" in which:
        out["kid"], out["kid_se"] = metrics.kernel_inception_distance(ref.features, f)
    if "pr" in which:
        m = min(len(f), len(ref.features))
        out["precision"], out["recall"] = metrics.precision_recall(ref.features[:m], f[:m], k=3)
    if "acc" in which and labels is not None and bool((labels >= 0).any()):  # -1: no label to score against
        known = labels >= 0
        out["accuracy"] = (logits[known].argmax(1) == labels[known]).double().mean().item()
    if "nn" in which:
        # Memorisation check (pixels): distance from each sample to its nearest training image, beside
        # the same for held-out test images. Samples much closer than test images are copies.
        m = min(1000, len(images), len(ref.test_images))
        pool = to_signed_unit(ref.train_images)
        d_gen = metrics.nearest_distances(images[:m], pool)
        d_test = metrics.nearest_distances(to_signed_unit(ref.test_images[:m]), pool)
        out["nn_median"], out["nn_median_test"] = d_gen.median().item(), d_test.median().item()
        out["nn_closer_than_1pct"] = (d_gen < d_test.quantile(0.01)).double().mean().item()
    return SampleMetrics(feats.name, **out)


def floor_metrics(ref: Reference, feats: LoadedFeatures, n: int, labels: Tensor | None = None, seed: int = 0) -> dict:
    """FD and KID of n training images against the reference: what a perfect model scores at this n
    (FD is biased upwards at finite n; the floor says how far). Given the samples' labels, the real
    images have the same number per class: a class-balanced set scores much lower than a random one
    (on Fashion-MNIST at n = 200: FD 0.33-0.53 against 1.0-2.2), so only that floor is fair."""
    # Real images from the training split, or from the held-out one when the reference is the
    # training split (then the floor may have fewer than n images: it says how many). A reference of
    # "all" contains the training images: that floor is biased low, and its name says so.
    outside = ref.split == "train"
    images, image_labels = (ref.test_images, ref.test_labels) if outside else (ref.train_images, ref.train_labels)
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        pick = torch.randperm(len(images), generator=g)[: min(n, len(images))]
    else:
        parts = []
        for c, count in zip(*torch.unique(labels, return_counts=True), strict=True):
            pool = torch.nonzero(image_labels == c).flatten()
            parts.append(pool[torch.randperm(len(pool), generator=g)[: int(count)]])
        pick = torch.cat(parts)
    f, _ = feats.embed(to_signed_unit(images[pick]))
    mu, cov = metrics.gaussian_stats(f)
    kid, se = metrics.kernel_inception_distance(ref.features, f)
    kind = (f"{'held-out' if outside else 'training'} images{'' if labels is None else ', same classes'}"
            + (", also in the reference" if ref.split == "all" else ""))  # then it is biased low
    return {f"FD[{feats.name}] floor ({len(pick)} {kind})": metrics.frechet_distance(mu, cov, ref.mu, ref.cov),
            f"KID[{feats.name}] floor": kid, f"KID[{feats.name}] floor se": se}
