"""Sample text models side by side, a row per prompt: the README's grids of held-out emoji prompts.

    python scripts/prompt_grid.py runs/emoji-text runs/emoji-latent-text --per-prompt 4 \
        --prompt "green apple" --prompt "tomato" --out docs/figures/emoji_heldout.png

Sample i (prompt i mod P) draws its noise from (seed, i) in every model: the same noise where the
shapes agree.
Prints the seconds each model took per sample.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from unnoise.plots import plot_prompt_grid
from unnoise.pipeline import Pipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="text-model run or checkpoint folders")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    p.add_argument("--per-prompt", type=int, default=4, help="samples per prompt")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free scale; None: each run's")
    p.add_argument("--sampler", default=None, help="None: each run's [sample] sampler")
    p.add_argument("--steps", type=int, default=None, help="None: each run's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", default=None, help="comma-separated panel titles; None: the run folders' names")
    p.add_argument("--out", type=Path, default=Path("prompts.png"))
    args = p.parse_args(argv)
    if args.per_prompt < 1:
        p.error(f"--per-prompt must be >= 1, got {args.per_prompt}")
    names = args.names.split(",") if args.names else [r.name for r in args.runs]
    if len(names) != len(args.runs):
        p.error(f"--names gives {len(names)} titles for {len(args.runs)} runs")
    panels = {}
    for name, run in zip(names, args.runs, strict=True):
        start = time.perf_counter()
        n = len(args.prompt) * args.per_prompt
        pipe = Pipeline.load(run)
        images = pipe.sample(n, prompts=args.prompt, guidance=args.guidance, sampler=args.sampler, steps=args.steps,
                             seed=args.seed)
        panels[f"{name} (step {pipe.step})"] = images
        print(f"{name}: {n} samples in {time.perf_counter() - start:.1f} s")
    print(f"wrote {plot_prompt_grid(panels, args.prompt, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
