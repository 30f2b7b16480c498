"""Train the feature network that unnoise's sample-quality metrics use for one data set.

    python scripts/train_features.py --data fashion-mnist          # -> src/unnoise/weights/features-<data>.safetensors
    python scripts/train_features.py --data mnist
    python scripts/train_features.py --data emoji                  # 8 classes: the Unicode emoji groups
    python scripts/train_features.py --data fashion-mnist --check  # re-create; compare bit for bit with the file
    python scripts/train_features.py --data folder --path DIR --out feats.safetensors

Trains on the training split only and prints the test accuracy. Deterministic: the same seed,
torch build and --threads give the same bytes (the shipped files were made with --threads 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from unnoise.features import FeatureConfig, packaged_path, save_feature_net, train_feature_net

EPOCHS = {"mnist": 12,  # the small set needs more passes: 4 gave 95.0% test accuracy, 6 gave 97.0%
          "emoji": 100}  # 1,225 images in 8 Unicode groups: 40 epochs gave 56.6%, 100 gave 64.0%


def main(argv: list[str] | None = None) -> int:
    defaults = FeatureConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=defaults.data, help="mnist, fashion-mnist, emoji or folder")
    p.add_argument("--path", default=None, help="folder: the image folder, one subfolder per class")
    p.add_argument("--image-size", type=int, default=None, help="None: the data set's own")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"None: {EPOCHS['mnist']} for mnist's 4,500 images, {EPOCHS['emoji']} for the 1,225 "
                   f"emoji, {defaults.epochs} otherwise")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=2, help="torch threads (part of what makes the bits)")
    p.add_argument("--out", type=Path, default=None,
                   help="None: the packaged file src/unnoise/weights/features-<data>.safetensors")
    p.add_argument("--check", action="store_true", help="train again and compare with --out bit for bit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(defaults, data=args.data, path=args.path, image_size=args.image_size,
                                 epochs=args.epochs or EPOCHS.get(args.data, defaults.epochs),
                                 batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    out = args.out or packaged_path(args.data)
    start = time.perf_counter()
    net, info = train_feature_net(config, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = save_feature_net(net, info, Path(tmp) / "fresh.safetensors")
            same = fresh.read_bytes() == out.read_bytes()
        print(f"re-created in {seconds:.0f} s: {'identical to' if same else 'DIFFERENT from'} {out}")
        return 0 if same else 1
    save_feature_net(net, info, out)
    accuracy = "n/a (no test split)"
    if "test_accuracy" in info:
        accuracy = f"{100 * info['test_accuracy']:.2f}% on {info['test_images']} test images"
    print(f"trained on {info['train_images']} images in {seconds:.0f} s; accuracy {accuracy}; "
          f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
