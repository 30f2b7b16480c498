"""Few-step methods side by side on one metric: FD, precision, recall and class accuracy at 1, 2, 4
and 8 network calls for each student, beside the teacher with DPM-Solver++(2M) at the same calls and
at 20 and 35; the training cost of each from its log. Writes a markdown table, JSON and a plot.

    python scripts/few_step_table.py --teacher runs/fashion-unet --cd runs/fashion-unet-cd \\
        --ct runs/fashion-ct --progressive runs/fashion-unet-progressive --flow runs/fashion-flow \\
        --reflow runs/fashion-flow-reflow --n 1000 --out docs/figures/few_step
    python scripts/few_step_table.py --ct runs/fashion-ct --merge part.json ...   # rows added to an earlier part

Every student is read as `unnoise eval` reads it (its own sampler); a progressive run is the folder
of its rounds, each sampled at its own step count. Guidance 1 throughout (the conditional model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from unnoise.checkpoint import run_config  # noqa: E402
from unnoise.eval import EvalOptions, evaluate  # noqa: E402

CALLS = (1, 2, 4, 8)


def train_minutes(run: Path) -> float:
    """Wall-clock minutes of a run's training, from its log (steps between lines / examples per s)."""
    config, seconds, last = run_config(run), 0.0, 0
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "examples_per_s" in record:
            seconds += (record["step"] - last) * config.train.batch_size / record["examples_per_s"]
            last = record["step"]
    return seconds / 60


def jobs(args) -> list[tuple[str, Path, int, dict]]:
    """(method, checkpoint, calls, eval settings) for every cell of the table."""
    out = [("teacher, DPM-Solver++(2M)", args.teacher, k, {"sampler": "dpmpp_2m", "steps": k, "spacing": "karras"})
           for k in (*CALLS, 20, 35)] if args.teacher else []
    if args.flow:
        out += [("1-rectified flow, Euler", args.flow, k, {"sampler": "ddim", "steps": k, "spacing": "trailing"})
                for k in CALLS]
    for name, run in (("CD", args.cd), ("CT", args.ct), ("2-rectified flow, Euler", args.reflow)):
        if run:
            out += [(name, run, k, {"steps": k}) for k in CALLS]
    if args.progressive:
        out += [("progressive", args.progressive / f"steps_{k:03d}", k, {}) for k in CALLS
                if (args.progressive / f"steps_{k:03d}").is_dir()]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("teacher", "cd", "ct", "progressive", "flow", "reflow"):
        p.add_argument(f"--{name}", type=Path, default=None)
    p.add_argument("--n", type=int, default=1000, help="samples per cell")
    p.add_argument("--merge", type=Path, default=None, help="the .json of an earlier run of this script: its rows "
                   "come first (the table measured in parts)")
    p.add_argument("--out", type=Path, required=True, help="path stem of the .md, .json and .png written")
    args = p.parse_args()
    rows = json.loads(args.merge.read_text())["rows"] if args.merge else []
    for method, run, calls, settings in jobs(args):
        result, _ = evaluate(run, EvalOptions(metrics=("fd", "pr", "acc"), n=args.n, guidance=1.0, **settings))
        rows.append({"method": method, "run": str(run), "calls": calls, "nfe": result["nfe"],
                     **{k: v for k, v in result.items() if k.startswith(("FD", "precision", "recall", "accuracy"))}})
        print(rows[-1], flush=True)
    costs = {str(r): train_minutes(Path(r)) for r in {row["run"] for row in rows}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "train minutes": costs}, indent=1) + "\n")
    metrics = [k for k in rows[0] if k not in ("method", "run", "calls", "nfe") and "floor" not in k]
    floor = next((f"{k}: {v:.3g}" for k, v in rows[0].items() if "floor" in k), "")
    lines = ["| method | calls | " + " | ".join(metrics) + " | run's training, wall min |",
             "|---|---|" + "---|" * len(metrics) + "---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['calls']} | " + " | ".join(f"{row[m]:.3g}" for m in metrics)
                     + f" | {costs[row['run']]:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + f"\n\n{floor}\n")
    fd = next(m for m in metrics if m.startswith("FD"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        ax.plot([r["calls"] for r in mine], [r[fd] for r in mine], "o-", label=method)
    ax.set(xscale="log", yscale="log", xlabel="network calls per sample", ylabel=fd)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
