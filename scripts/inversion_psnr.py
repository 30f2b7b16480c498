"""Round-trip PSNR of real Fashion-MNIST test images through a trained run: DDIM inversion against
fixed-point inversion, at 10, 25, 50 and 100 ddim steps (the unconditional branch), one thread.

    python scripts/inversion_psnr.py runs/fashion-unet 16 docs/figures/fashion_inversion_psnr.json
"""

from __future__ import annotations

import json
import sys
import time

import torch

from unnoise.data import DataConfig, load_dataset
from unnoise.edit import invert, reconstruct
from unnoise.pipeline import Pipeline

STEPS = (10, 25, 50, 100)


def main(run: str, n: int, out: str) -> None:
    torch.set_num_threads(1)
    pipe = Pipeline.load(run, "cpu")
    images = load_dataset(DataConfig(name="fashion-mnist", split="test")).images[:n].float() / 127.5 - 1
    rows = []
    for steps in STEPS:
        for method in ("ddim", "exact"):
            start = time.time()
            z, report = invert(pipe, images, method=method, steps=steps)
            back = reconstruct(pipe, z, steps=steps)
            psnr = (10 * torch.log10(4 / (back - images).square().flatten(1).mean(1))).tolist()  # range [-1, 1]
            rows.append({"steps": steps, "method": method, "psnr_mean": sum(psnr) / n, "psnr_min": min(psnr),
                         "max_residual": max(report.residuals) if report else None,
                         "max_updates": max(report.iterations) if report else None,
                         "seconds": time.time() - start})
            print(json.dumps(rows[-1]), flush=True)
    with open(out, "w") as f:
        json.dump({"run": run, "step": pipe.step, "n": n, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
