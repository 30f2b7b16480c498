"""An edge ControlNet measured on Fashion-MNIST: how well samples follow their edge hints (F1 between
the Canny edges of each sample and its hint) and how real they look (FD against the test images),
beside the base model sampled with the same classes and seeds and no hint. The hints are the Canny
edges of held-out test images; each sample asks for its image's class. Guidance 1, DPM-Solver++(2M)
with 20 steps.

    python scripts/controlnet_edges.py runs/fashion-controlnet runs/fashion-unet 500 docs/figures/fashion_controlnet
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from unnoise.conditioning import Condition
from unnoise.data import DataConfig, load_dataset
from unnoise.data.hints import edges
from unnoise.eval.reference import reference
from unnoise.eval.samples import sample_metrics
from unnoise.features import feature_net_for
from unnoise.pipeline import Pipeline
from unnoise.plots import save_image_grid

SETTINGS = {"guidance": 1.0, "sampler": "dpmpp_2m", "steps": 20, "seed": 0}


def edge_f1(images: Tensor, hints: Tensor) -> float:
    """Mean F1 of the Canny edges of images (in [-1, 1]) against edge hints (1 on an edge), per pixel."""
    found = edges(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)) > 0
    truth = hints > 0
    tp = (found & truth).flatten(1).sum(1).double()
    precision = tp / found.flatten(1).sum(1).clamp(min=1)
    recall = tp / truth.flatten(1).sum(1).clamp(min=1)
    return (2 * precision * recall / (precision + recall).clamp(min=1e-12)).mean().item()


def main(control_run: str, base_run: str, n: int, out: Path) -> None:
    control, base = Pipeline.load(control_run, "cpu"), Pipeline.load(base_run, "cpu")
    test = load_dataset(DataConfig(name="fashion-mnist", split="test"))
    pixels, labels = test.images[:n], test.labels[:n]
    hints = edges(pixels)
    feats = feature_net_for(base.config.data)
    ref = reference(base.config, feats, Path(base.source))
    rows, panels = [], [hints[:10]]
    for name, pipe, cond in (("ControlNet", control, Condition(image=hints)), ("base, no hint", base, None)):
        x = pipe.sample(n, labels=labels, cond=cond, **SETTINGS)
        rows.append({"model": name, "edge F1": edge_f1(x, hints),
                     **sample_metrics(x, labels, ref, feats, ("fd", "acc")).named()})
        print(json.dumps(rows[-1]), flush=True)
        panels.append(x[:10])
    rows.append({"model": "the test images themselves", "edge F1": edge_f1(pixels.float() / 127.5 - 1, hints)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"control": control_run, "control_step": control.step,
                                                    "base": base_run, "base_step": base.step, "n": n,
                                                    "settings": SETTINGS, "rows": rows}, indent=1) + "\n")
    save_image_grid(torch.stack(panels, 1).flatten(0, 1), out.with_name(out.name + "_strip.png"), columns=3)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
