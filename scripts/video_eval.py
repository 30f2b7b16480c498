"""A video model measured against real moving digits: per-frame digit accuracy of class-conditional
samples and agreement across frames (the project's MNIST feature network, each frame's digit
reframed as MNIST frames its digits), the centre-of-mass path's distance from the best
constant-velocity-with-bounce path, the ink's speed, and the per-frame Fréchet distance to the real
training videos. The same measures on real test videos give the floor, and on both with their
frames shuffled in time show which measures see motion (trajectory error) and which do not. The
measures live in unnoise.eval.modalities (what `unnoise eval` runs on a video run).

    python scripts/video_eval.py runs/moving-mnist --n 500 --out docs/figures/moving_mnist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unnoise.eval.modalities import Sampling, evaluate_video, write_measured


def main() -> None:
    from unnoise.pipeline import Pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a video model's run folder")
    p.add_argument("--n", type=int, default=500, help="samples, and real test videos, to measure (500)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (None: the run's)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (0)")
    p.add_argument("--out", type=Path, required=True, help="path stem of the .json, .gif and .png written")
    args = p.parse_args()
    pipe = Pipeline.load(args.run)
    measured = evaluate_video(pipe, Sampling(args.n, seed=args.seed, guidance=args.guidance), args.run)
    for row in measured.report["rows"]:
        print(json.dumps(row), flush=True)
    written = write_measured(measured, pipe, args.out)
    print(f"wrote {written[0]}, .gif and .png; sampling took {measured.report['sampling_seconds']:.0f} s")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
