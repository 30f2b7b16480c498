"""What `Pipeline` costs around the network: load once, sample many.

    python bench/pipeline.py runs/demo            # a trained run (e.g. `unnoise demo`'s)

1. Load, first `sample` call, second `sample` call (8 samples, DPM-Solver++ 2M, 10 steps): the
   second call must cost only the sampling.
2. `sample(n, batch_size=b)` against the bare network: the same number of forward calls at the same
   batch shapes (doubled for classifier-free guidance), in alternating rounds; samples/s of both and
   their ratio (median, min-max). The ratio is the share of the time spent inside the network.

Preloads tcmalloc (re-executing itself) where it is installed, as the other benchmarks do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import preload_tcmalloc  # noqa: E402

preload_tcmalloc()

import torch  # noqa: E402

from unnoise.convergence import CountingDenoiser  # noqa: E402
from unnoise.pipeline import Pipeline  # noqa: E402


def load_and_two_calls(run: str) -> dict[str, float]:
    start = time.perf_counter()
    pipe = Pipeline.load(run, "cpu")
    loaded = time.perf_counter()
    pipe.sample(8, label=3, sampler="dpmpp_2m", steps=10, progress=False)
    first = time.perf_counter()
    pipe.sample(8, label=3, sampler="dpmpp_2m", steps=10, progress=False)
    second = time.perf_counter()
    return {"load": loaded - start, "first sample call": first - loaded, "second sample call": second - first}


def bare(pipe: Pipeline, n: int, batch: int, calls: int, doubled: bool) -> float:
    """seconds for `calls` network forwards per batch of `batch` (x2 rows with guidance), n samples."""
    net = pipe.denoiser.net
    rows = 2 * batch if doubled else batch
    x = torch.randn(rows, *pipe.interface.sample_shape)
    t = torch.full((rows,), 0.5)
    labels = torch.zeros(rows, dtype=torch.long) if pipe.interface.num_classes else None
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(n // batch):
            for _ in range(calls):
                net(x, t, labels)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained run or checkpoint folder")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    for k, v in load_and_two_calls(args.run).items():
        print(f"{k}: {v:.3f} s")
    pipe = Pipeline.load(args.run, "cpu")
    counter = []
    pipe.sample(args.batch_size, batch_size=args.batch_size, progress=False,
                wrap=lambda d: counter.append(CountingDenoiser(d)) or counter[-1])  # warm-up; counts the calls
    calls, doubled = counter[-1].calls, pipe.interface.conditional and pipe.config.sample.guidance != 1
    ours, theirs = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        pipe.sample(args.n, batch_size=args.batch_size, progress=False)
        ours.append(time.perf_counter() - start)
        theirs.append(bare(pipe, args.n, args.batch_size, calls, doubled))
    ratios = [b / a for a, b in zip(ours, theirs, strict=True)]
    print(f"{args.n} samples, batch {args.batch_size}, {calls} network calls per batch"
          f"{' (guided: 2 x batch rows)' if doubled else ''}, {args.rounds} alternating rounds")
    print(f"pipeline: {args.n / statistics.median(ours):.2f} samples/s (min-max "
          f"{args.n / max(ours):.2f}-{args.n / min(ours):.2f})")
    print(f"bare network: {args.n / statistics.median(theirs):.2f} samples/s")
    print(f"pipeline / bare speed: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
