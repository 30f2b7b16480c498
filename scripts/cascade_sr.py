"""A two-stage cascade measured on Fashion-MNIST: a 14x14 base model's samples enlarged to 28x28 by a
super-resolution model trained with noise-conditioning augmentation ([loss] hint_noise > 0) and by one
trained without it, over the level s the base's output is noised to before enlarging. For each: FD
against the test images, class accuracy, and consistency, PSNR(downsample(SR(y)), y) in dB over the
[-1, 1] range, the downsampling being the data set's own (bilinear, antialiased). Beside them: the same
models enlarging the test images' own 14x14 copies (what they were trained on), and the base's samples
blown up bilinearly with no model. Classes i mod 10, guidance 1, DPM-Solver++(2M) with 20 steps in
both stages.

    python scripts/cascade_sr.py --base runs/fashion-base14 --sr runs/fashion-sr \\
        --sr-plain runs/fashion-sr-noaug --n 1000 --out docs/figures/fashion_cascade
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from unnoise.cascade import super_resolve
from unnoise.data import load_dataset
from unnoise.data.hints import to_float
from unnoise.eval.reference import reference
from unnoise.eval.samples import sample_metrics
from unnoise.features import feature_net_for
from unnoise.noise import derived_seed
from unnoise.pipeline import Pipeline
from unnoise.plots import save_image_grid

SETTINGS = {"guidance": 1.0, "sampler": "dpmpp_2m", "steps": 20}
LEVELS = (0.0, 0.001, 0.0025, 0.005, 0.01)  # s; on edm's schedule sigma = 80 s: 0 to 0.8


def downsample(x: Tensor, side: int) -> Tensor:
    """The data set's resize (bilinear, antialiased), in float: what made the low-resolution copies."""
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def psnr(a: Tensor, b: Tensor) -> float:
    """Mean over images of PSNR in dB, images in [-1, 1] (peak-to-peak 2)."""
    return (10 * torch.log10(4 / (a - b).square().flatten(1).mean(1))).mean().item()


def measure(name: str, sr: Pipeline, low: Tensor, labels: Tensor, level: float, ref, feats) -> tuple[dict, Tensor]:
    """One row: `sr` enlarging `low` at augmentation level `level`."""
    high = super_resolve(sr, low, hint_noise=level, labels=labels, seed=derived_seed(0, 1), **SETTINGS)
    row = {"model": name, "input": "", "s": level, "consistency PSNR": psnr(downsample(high, low.shape[-1]), low),
           **sample_metrics(high, labels, ref, feats, ("fd", "acc")).named()}
    print(json.dumps(row), flush=True)
    return row, high


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the 14x14 base run")
    p.add_argument("--sr", required=True, help="the super-resolution run trained with conditioning augmentation")
    p.add_argument("--sr-plain", required=True, help="the super-resolution run trained without it")
    p.add_argument("--n", type=int, default=1000, help="samples per row")
    p.add_argument("--out", type=Path, required=True, help="path stem of the .json and _strip.png written")
    args = p.parse_args()
    base, sr, plain = (Pipeline.load(r, "cpu") for r in (args.base, args.sr, args.sr_plain))
    feats = feature_net_for(sr.config.data)
    ref = reference(sr.config, feats, Path(sr.source))
    labels = torch.arange(args.n) % 10
    test = load_dataset(replace(base.config.data, split="test"))  # the test images' own 14x14 copies
    real_low, real_labels = to_float(test.images[: args.n]), test.labels[: args.n]
    rows, strip = [], []
    for name, model in (("SR with augmentation", sr), ("SR without", plain)):
        row, _ = measure(name, model, real_low, real_labels, 0.0, ref, feats)
        rows.append({**row, "input": "test images' 14x14"})
    low = base.sample(args.n, labels=labels, seed=0, **SETTINGS).clamp(-1, 1)
    blown = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
    rows.append({"model": "bilinear, no model", "input": "base samples", "s": None,
                 "consistency PSNR": psnr(downsample(blown, low.shape[-1]), low),
                 **sample_metrics(blown, labels, ref, feats, ("fd", "acc")).named()})
    strip += [F.interpolate(low[:10], scale_factor=2, mode="nearest"), blown[:10]]
    for name, model, levels in (("SR without", plain, (0.0,)), ("SR with augmentation", sr, LEVELS)):
        for level in levels:
            row, high = measure(name, model, low, labels, level, ref, feats)
            rows.append({**row, "input": "base samples"})
            strip.append(high[:10])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    steps = {"base": base.step, "sr": sr.step, "sr_plain": plain.step}
    args.out.with_suffix(".json").write_text(json.dumps({"runs": vars(args) | {"out": str(args.out)}, "steps": steps,
                                                         "settings": SETTINGS, "rows": rows}, indent=1) + "\n")
    save_image_grid(torch.stack(strip, 1).flatten(0, 1), args.out.with_name(args.out.name + "_strip.png"),
                    columns=len(strip))


if __name__ == "__main__":
    main()
