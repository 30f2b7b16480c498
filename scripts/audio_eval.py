"""A class-conditional waveform model measured in the project's own audio feature space (a log-mel
CNN trained on the same set's training clips, unnoise.audio_features): the Fréchet distance of
samples to the held-out clips, and how many samples its classifier names as the class asked for,
beside the floor (the training clips against the held-out ones, and their accuracy) and white noise
at the data's loudness. Writes the first 20 samples as a WAV (with gaps), a waveform-and-spectrogram
picture, and each as a WAV of its own, with a JSON table.

    python scripts/audio_eval.py runs/spoken-digits --n 500 --out docs/figures/spoken_digits
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from unnoise.audio import write_wav
from unnoise.audio_features import load_audio_features
from unnoise.data import load_dataset
from unnoise.metrics import frechet_distance, gaussian_stats
from unnoise.modality import preview


def measure(name: str, feats, clips: torch.Tensor, labels: torch.Tensor, reference: tuple) -> dict:
    features, logits = feats.embed(clips)
    row = {"set": name, "clips": len(clips),
           f"FD[{feats.name}]": frechet_distance(*gaussian_stats(features), *reference),
           f"accuracy[{feats.name}]": (logits.argmax(1) == labels).double().mean().item(),
           "rms": clips.square().mean().sqrt().item()}
    print(json.dumps(row), flush=True)
    return row


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
    data = pipe.config.data
    feats = load_audio_features(data.name)
    if (feats.net.sample_rate, feats.net.length) != (data.sample_rate, data.clip_length):
        raise ValueError(f"the {feats.name} network hears {feats.net.length} samples at {feats.net.sample_rate} Hz; "
                         f"the run's clips are {data.clip_length} at {data.sample_rate} Hz")
    train, test = load_dataset(data), load_dataset(replace(data, split="test"))
    reference = gaussian_stats(feats.embed(test.clips)[0])
    labels = torch.arange(args.n) % len(train.class_names)
    started = time.perf_counter()
    x = pipe.sample(args.n, labels=labels, guidance=args.guidance, seed=args.seed, progress=True)
    seconds = time.perf_counter() - started
    noise = torch.randn(args.n, 1, data.clip_length, generator=torch.Generator().manual_seed(0))
    rows = [measure("samples", feats, x, labels, reference),
            measure("training clips (floor)", feats, train.clips, train.labels, reference),
            measure("white noise at the data's rms", feats, noise * train.clips.square().mean().sqrt(),
                    labels, reference)]
    settings = pipe.settings(guidance=args.guidance, seed=args.seed)
    report = {"run": args.run, "step": pipe.step, "n": args.n, "sampler": settings.sampler, "steps": settings.steps,
              "guidance": settings.guidance, "seed": args.seed, "sampling_seconds": round(seconds, 1),
              "test_clips": len(test), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    meta = {"run": args.run, "step": str(pipe.step), "guidance": str(settings.guidance), "sampler": settings.sampler}
    preview("audio", x[:20], args.out.with_suffix(".png"), 5, meta, sample_rate=data.sample_rate)
    for i in range(10):  # one clip of each class, to listen to
        write_wav(x[i], args.out.parent / f"{args.out.name}_{train.class_names[i % len(train.class_names)]}.wav",
                  data.sample_rate)
    print(f"wrote {args.out.with_suffix('.json')}, .wav, .png and 10 clips; sampling took {seconds:.0f} s")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
