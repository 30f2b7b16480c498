"""A molecule model measured as Hoogeboom et al. 2022 measure theirs (§5.2, Table 2): atom stability
and molecule stability (bond orders from distances, valence rules), RDKit validity and uniqueness,
beside the same metrics on real QM9 test molecules (the metric's ceiling: near 99 % / 95 %) and on
noise molecules (atom counts and element frequencies of the data, Gaussian positions: what a model
that learnt nothing scores). Writes the samples as .xyz, a picture of the first 16 and a JSON table.

    python scripts/molecules_eval.py runs/qm9 --n 1000 --out docs/figures/qm9
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from unnoise.chemistry import noise_molecules, render_molecules, stability, validity_uniqueness, write_xyz
from unnoise.data import load_dataset
from unnoise.modality import molecules_of
from unnoise.pipeline import Pipeline


def measure(name: str, molecules: list) -> dict:
    row = {"set": name, **stability(molecules), **validity_uniqueness(molecules)}
    row["mean_atoms"] = sum(len(m) for m in molecules) / len(molecules)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a molecule model's run folder")
    p.add_argument("--n", type=int, default=1000, help="samples to draw and real molecules to measure (1000)")
    p.add_argument("--sampler", default=None, help="the sampler (None: the run's [sample] sampler)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (None: the run's)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (0)")
    p.add_argument("--out", type=Path, required=True, help="path stem of the .json, .xyz and .png written")
    args = p.parse_args()
    pipe = Pipeline.load(args.run)
    elements = pipe.rendering["elements"]
    started = time.perf_counter()
    x = pipe.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, progress=True)
    seconds = time.perf_counter() - started
    samples = molecules_of(x, elements)
    test = load_dataset(replace(pipe.config.data, split="test", limit=args.n))
    real = test.molecules()
    rows = [measure("samples", samples), measure("QM9 test", real), measure("noise", noise_molecules(real, args.n))]
    settings = pipe.settings(sampler=args.sampler, steps=args.steps, seed=args.seed)
    report = {"run": args.run, "step": pipe.step, "n": args.n, "sampler": settings.sampler, "steps": settings.steps,
              "seed": args.seed, "sampling_seconds": round(seconds, 1), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_xyz(samples, args.out.with_suffix(".xyz"))
    render_molecules(samples[:16], args.out.with_suffix(".png"), columns=4,
                     metadata={"run": args.run, "step": str(pipe.step), "sampler": settings.sampler})
    print(f"wrote {args.out.with_suffix('.json')}, .xyz and .png; sampling took {seconds:.0f} s")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
