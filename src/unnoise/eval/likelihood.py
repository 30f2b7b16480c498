"""Likelihood metrics of a checkpoint: NLL by the probability-flow ODE and the VLB, in bits/dim on
test images (the math is in unnoise.likelihood)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from tqdm import tqdm

from unnoise.conditioning import Condition, null_labels
from unnoise.convergence import CountingDenoiser
from unnoise.data import eval_split, load_dataset
from unnoise.data.image_set import to_signed_unit
from unnoise.eval.options import LIKELIHOOD_METRICS, EvalOptions
from unnoise.likelihood import image_nll, vlb
from unnoise.pipeline import Pipeline


def likelihood_metrics(pipe: Pipeline, opts: EvalOptions, progress: bool = True) -> dict:
    """NLL (probability-flow ODE) and VLB in bits/dim on the first nll_n test images."""
    config, device = pipe.config, pipe.device
    if config.latent.autoencoder:
        raise ValueError("nll and vlb are bits/dim of pixels; this model diffuses in an autoencoder's latents, "
                         "where they would measure something else")
    test = load_dataset(replace(config.data, split=eval_split(config.data.name)))
    if test.modality != "image":
        raise ValueError("nll and vlb are reported in bits/dim of 8-bit images; this run's data are points")
    classes = pipe.interface.num_classes
    out: dict = {}
    generator = torch.Generator().manual_seed(opts.seed)
    n = min(opts.nll_n, len(test))
    for metric in [m for m in LIKELIHOOD_METRICS if m in opts.metrics]:
        values, counter, start, batches = [], CountingDenoiser(pipe.denoiser), time.perf_counter(), 0
        for first in tqdm(range(0, n, opts.batch_size), desc=metric, disable=not progress, leave=False):
            x = to_signed_unit(test.images[first:min(first + opts.batch_size, n)]).to(device)
            cond = Condition(labels=null_labels(classes, len(x), device)) if classes else None  # the null label: p(x)
            if metric == "nll":
                r = image_nll(counter, pipe.schedule, x, cond=cond, generator=generator, trace=opts.trace,
                              rtol=opts.rtol, atol=opts.atol)
            else:
                r = vlb(counter, pipe.schedule, x, cond=cond, num_steps=opts.vlb_steps, generator=generator)
            values.append(r.bits_per_dim)
            batches += 1
        b = torch.cat(values)
        out[f"{metric} bits/dim"] = b.mean().item()
        out[f"{metric} bits/dim se"] = b.std().item() / math.sqrt(len(b)) if len(b) > 1 else float("nan")
        out[f"{metric} images"] = len(b)
        out[f"{metric} network calls per batch"] = counter.calls / batches
        out[f"{metric} seconds per image"] = (time.perf_counter() - start) / len(b)
    return out
