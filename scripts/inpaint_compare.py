"""Inpainting held-out Fashion-MNIST images: the replacement method against RePaint at equal network
calls, with the right half or the centre 14x14 masked. The model's unconditional branch fills the
hole (guidance 0: no class is given), so the class of the completion, read by the feature network,
says whether the fill agrees with the visible part. FD against the 10,000 test images.

    python scripts/inpaint_compare.py runs/fashion-unet 300 docs/figures/fashion_inpaint
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from unnoise.data import DataConfig, load_dataset
from unnoise.edit import inpaint
from unnoise.eval.reference import reference
from unnoise.eval.samples import sample_metrics
from unnoise.features import feature_net_for
from unnoise.pipeline import Pipeline
from unnoise.plots import save_image_grid

# (name, resample, jump, steps): 50 network calls each (RePaint: 20 + 2 x 5 x 3 jump points)
METHODS = (("replacement", 1, 1, 50), ("RePaint r=3 j=5", 3, 5, 20))


def masks() -> dict[str, torch.Tensor]:
    right, centre = torch.ones(1, 1, 28, 28), torch.ones(1, 1, 28, 28)
    right[..., 14:] = 0
    centre[..., 7:21, 7:21] = 0
    return {"right half": right, "centre 14x14": centre}


def main(run: str, n: int, out: Path) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load(run, "cpu")
    test = load_dataset(DataConfig(name="fashion-mnist", split="test"))
    images, labels = test.images[:n].float() / 127.5 - 1, test.labels[:n]
    feats = feature_net_for(pipe.config.data)
    ref = reference(pipe.config, feats, Path(pipe.source))
    rows, panels = [], [images[:8]]
    for mask_name, keep in masks().items():
        panels.append(images[:8] * keep - (1 - keep))  # the hole shown black
        for name, resample, jump, steps in METHODS:
            calls = []
            x = inpaint(pipe, images, keep, resample=resample, jump=jump, steps=steps, label=0, guidance=0.0,
                        seed=0, wrap=lambda d, c=calls: _counting(d, c))
            m = sample_metrics(x, labels, ref, feats, ("fd", "acc")).named()
            rows.append({"mask": mask_name, "method": name, "network calls per image": sum(calls) // n, **m})
            print(json.dumps(rows[-1]), flush=True)
            panels.append(x[:8])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"run": run, "step": pipe.step, "n": n, "rows": rows},
                                                   indent=1) + "\n")
    save_image_grid(torch.stack(panels, 1).flatten(0, 1), out.with_name(out.name + "_strip.png"), columns=len(panels))


def _counting(denoise, calls: list):
    def counted(x, t, cond=None):
        calls.append(len(x))
        return denoise(x, t, cond)
    return counted


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
