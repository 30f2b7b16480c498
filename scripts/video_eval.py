"""A video model measured against real moving digits: per-frame digit accuracy of class-conditional
samples and agreement across frames (the project's MNIST feature network, each frame's digit
reframed as MNIST frames its digits), the centre-of-mass path's distance from the best
constant-velocity-with-bounce path, the ink's speed, and the per-frame Fréchet distance to the real
training videos. The same measures on real test videos give the floor, and on both with their
frames shuffled in time show which measures see motion (trajectory error) and which do not.

    python scripts/video_eval.py runs/moving-mnist --n 500 --out docs/figures/moving_mnist
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from unnoise.data import load_dataset
from unnoise.video import frame_classes, save_gif, save_video_strip, video_report


def shuffled(videos: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each video's frames in a random order of its own."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(videos.shape[2], generator=g) for _ in range(len(videos))])
    return videos[torch.arange(len(videos))[:, None], :, order].transpose(1, 2)


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
    data = replace(pipe.config.data, independent_fraction=0.0)
    train = load_dataset(data)
    step = max(1, len(train) // 2000)  # 2000 videos spread over the classes (the set is sorted by label)
    reference = frame_classes(train.batch(torch.arange(0, len(train), step)[:2000])[0])[1].flatten(0, 1)
    test = load_dataset(replace(data, split="test"))
    index = torch.linspace(0, len(test) - 1, args.n).long()
    real, real_labels = test.batch(index)
    labels = torch.arange(args.n) % 10
    started = time.perf_counter()
    x = pipe.sample(args.n, labels=labels, guidance=args.guidance, seed=args.seed, progress=True)
    seconds = time.perf_counter() - started
    rows = []
    for name, videos, truth in (("samples", x, labels), ("real test", real, real_labels),
                                ("samples, frames shuffled", shuffled(x), labels),
                                ("real test, frames shuffled", shuffled(real), real_labels)):
        row = {"set": name, **video_report(videos, truth, reference)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    settings = pipe.settings(guidance=args.guidance, seed=args.seed)
    report = {"run": args.run, "step": pipe.step, "n": args.n, "sampler": settings.sampler, "steps": settings.steps,
              "guidance": settings.guidance, "seed": args.seed, "sampling_seconds": round(seconds, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    meta = {"run": args.run, "step": pipe.step, "guidance": settings.guidance, "sampler": settings.sampler}
    save_gif(x[:20], args.out.with_suffix(".gif"), columns=10, metadata=meta)
    save_video_strip(x[:10], args.out.with_suffix(".png"), metadata={k: str(v) for k, v in meta.items()})
    print(f"wrote {args.out.with_suffix('.json')}, .gif and .png; sampling took {seconds:.0f} s")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
