"""An autoencoder checkpoint's reconstructions: PSNR, the feature metrics of the reconstructions
against the originals, and a PNG of both (what `unnoise eval` and the end of autoencoder training report)."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from unnoise import metrics
from unnoise.config import RunConfig
from unnoise.data import eval_split, load_dataset
from unnoise.features import PACKAGED, feature_net_for
from unnoise.files import write_text_atomic
from unnoise.models.autoencoder import Autoencoder, psnr
from unnoise.plots import save_image_grid


@torch.no_grad()
def write_reconstructions(config: RunConfig, weights: dict, out, device="cpu", split: str | None = None,
                          features=None) -> dict:
    """PSNR on `split` (None: the held-out one), the Fréchet distance of the reconstructions to the
    originals in the data set's feature network (where one is packaged, or `features`), and a PNG: rows of
    originals, each above its row of reconstructions. Writes reconstruction.json (the held-out
    split) or reconstruction-<split>.json and the PNG beside it."""
    model = Autoencoder(config.model).to(device)
    model.load_state_dict(weights)
    model.eval()
    split = split or eval_split(config.data.name)
    test = load_dataset(replace(config.data, split=split))
    values, originals, recons = [], [], []
    for i in range(0, len(test), 500):
        x = test.batch(torch.arange(i, min(i + 500, len(test))))[0].to(device)
        x_hat = model.decode(model.encode(x).mean).clamp(-1, 1)
        values.append(psnr(x, x_hat).cpu())
        originals.append(x.cpu())
        recons.append(x_hat.cpu())
    result = {"split": split, "images": len(test), "psnr dB": torch.cat(values).mean().item()}
    if config.data.name in PACKAGED or features:
        feats = feature_net_for(config.data, features, device)
        f_real, _ = feats.embed(torch.cat(originals))
        f_rec, logits = feats.embed(torch.cat(recons))
        result[f"FD[{feats.name}] of reconstructions"] = metrics.frechet_distance(
            *metrics.gaussian_stats(f_rec), *metrics.gaussian_stats(f_real))
        result[f"accuracy[{feats.name}] of reconstructions"] = (logits.argmax(1) == test.labels).double().mean().item()
    suffix = "" if split == eval_split(config.data.name) else f"-{split}"
    write_text_atomic(out / f"reconstruction{suffix}.json", json.dumps(result, indent=1) + "\n")
    rows = [part for i in range(0, 16, 8) for part in (torch.cat(originals)[i:i + 8], torch.cat(recons)[i:i + 8])]
    save_image_grid(torch.cat(rows), out / f"reconstructions{suffix}.png", columns=8)
    return result
