"""A molecule model measured as Hoogeboom et al. 2022 measure theirs (§5.2, Table 2): atom stability
and molecule stability (bond orders from distances, valence rules), RDKit validity and uniqueness,
beside the same metrics on real QM9 test molecules (the metric's ceiling: near 99 % / 95 %) and on
noise molecules (atom counts and element frequencies of the data, Gaussian positions: what a model
that learnt nothing scores). Writes the samples as .xyz, a picture of the first 16 and a JSON table.
The measures live in unnoise.eval.modalities (what `unnoise eval` runs on a molecule run).

    python scripts/molecules_eval.py runs/qm9 --n 1000 --out docs/figures/qm9
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unnoise.eval.modalities import Sampling, evaluate_molecules, write_measured
from unnoise.pipeline import Pipeline


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
    sampling = Sampling(args.n, seed=args.seed, sampler=args.sampler, steps=args.steps)
    measured = evaluate_molecules(pipe, sampling, args.run)
    for row in measured.report["rows"]:
        print(json.dumps(row), flush=True)
    written = write_measured(measured, pipe, args.out)
    print(f"wrote {written[0]}, .xyz and .png; sampling took {measured.report['sampling_seconds']:.0f} s")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
