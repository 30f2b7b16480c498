"""A class-conditional waveform model measured in the project's own audio feature space (a log-mel
CNN trained on the same set's training clips, unnoise.audio_features): the Fréchet distance of
samples to the held-out clips, and how many samples its classifier names as the class asked for,
beside the floor (the training clips against the held-out ones, and their accuracy) and white noise
at the data's loudness. Writes the first 20 samples as a WAV (with gaps), a waveform-and-spectrogram
picture, and one clip of each class as a WAV of its own, with a JSON table. The measures live in
unnoise.eval.modalities (what `unnoise eval` runs on an audio run).

    python scripts/audio_eval.py runs/spoken-digits --n 500 --out docs/figures/spoken_digits
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unnoise.eval.modalities import Sampling, evaluate_audio, write_measured


def main() -> None:
    from unnoise.pipeline import Pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a waveform model's run folder")
    p.add_argument("--n", type=int, default=500, help="samples to draw (500)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (None: the run's)")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed (0)")
    p.add_argument("--out", type=Path, required=True, help="path stem of the .json, .wav and .png written")
    args = p.parse_args()
    pipe = Pipeline.load(args.run)
    measured = evaluate_audio(pipe, Sampling(args.n, seed=args.seed, guidance=args.guidance), args.run)
    for row in measured.report["rows"]:
        print(json.dumps(row), flush=True)
    written = write_measured(measured, pipe, args.out)
    print(f"wrote {written[0]}, .wav, .png and {len(written) - 3} clips; "
          f"sampling took {measured.report['sampling_seconds']:.0f} s")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
