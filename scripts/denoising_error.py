"""A trained model's denoising error beside the exact denoiser's, for data whose law is known.

    python scripts/denoising_error.py runs/signals-1d --n 1000

Reads the run's held-out split (its data set must offer `gaussian()`, the exact law: `signals`
does), noises each example at every level sigma~ with the same noise for both denoisers, and prints
the network's mean squared error, the optimum's and their ratio (unnoise.eval.denoising).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from unnoise.data import load_dataset
from unnoise.eval.denoising import denoising_error, format_denoising
from unnoise.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="a run or checkpoint folder")
    p.add_argument("--n", type=int, default=1000, help="held-out examples")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    args = p.parse_args(argv)
    pipe = Pipeline.load(args.run, "cpu")
    test = load_dataset(replace(pipe.config.data, split="test"))
    if not hasattr(test, "gaussian"):
        p.error(f"{pipe.config.data.name} has no known law to compare with (signals has one)")
    if not 1 <= args.n <= len(test):
        p.error(f"--n must lie in 1..{len(test)}, got {args.n}")
    x0, _ = test.batch(torch.arange(args.n))
    rows = denoising_error(pipe.denoiser, test.gaussian().denoiser(pipe.schedule), x0, pipe.schedule, seed=args.seed)
    print(f"{pipe.source}, step {pipe.step}: {args.n} held-out examples\n{format_denoising(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
