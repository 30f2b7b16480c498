"""Running one checked job: the pipeline (or an editor over it) with a step callback that reports
progress, sends a preview of the current estimate of x0 every few steps, stops the job when it is
cancelled or past its time, and the result written as the CLI writes samples (PNG with the settings
in text chunks, and .npz)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from unnoise.edit import inpaint, sdedit
from unnoise.outputs import sample_record, write_samples
from unnoise.pipeline import BatchStep
from unnoise.plots import image_grid
from unnoise.serve.jobs import Job
from unnoise.serve.requests import Plan


class TooLong(Exception):
    """A running job went past its time."""


def run_plan(job: Job, emit: Callable[[dict], None], out_dir: Path, max_seconds: float) -> dict:
    """Run job.request (a Plan) in one batch; returns the paths of its .png and .npz and its settings."""
    plan: Plan = job.request
    pipe, req = plan.model.pipe, plan.request
    callback = _observer(job, plan, emit, time.monotonic() + max_seconds, max_seconds)
    options = {k: v for k, v in plan.options.items() if v is not None} | {"batch_size": req.n}
    if plan.cond is not None:
        options["cond"] = plan.cond
    extra: dict = {"mode": req.mode, "n": req.n}
    if req.mode == "sample":
        x = pipe.sample(req.n, callback=callback, progress=False, **options)
    elif req.mode == "sdedit":
        x = sdedit(pipe, _rows(plan.image, req.n), req.strength, callback=callback, progress=False, **options)
        extra["strength"] = req.strength
    else:
        x = inpaint(pipe, _rows(plan.image, req.n), plan.keep, resample=req.resample, jump=req.jump,
                    callback=callback, progress=False, **options)
        extra |= {"resample": req.resample, "jump": req.jump}
    job.check_cancel()  # a cancel that came during the last step
    settings = pipe.settings(**{k: plan.options[k] for k in ("sampler", "steps", "guidance", "seed")})
    labels, prompts = pipe.per_sample(req.n, label=req.label, prompts=options.get("prompts"))
    if plan.cond is not None:
        extra |= {"hint": plan.model.hint} | ({"hint_noise": req.hint_noise} if plan.model.hint == "lowres" else {})
    record = sample_record(pipe, settings, **extra)
    paths = {suffix: write_samples(pipe.modality, x, out_dir / f"{job.id}.{suffix}", record, labels, prompts,
                                   classes=pipe.classes) for suffix in ("png", "npz")}
    return {**paths, "settings": record}


def _rows(image: Tensor, n: int) -> Tensor:
    return image.expand(n, *image.shape[1:]).clone()


def _observer(job: Job, plan: Plan, emit: Callable[[dict], None], deadline: float, seconds: float):
    """The step callback: progress, previews, cancellation and the time limit."""
    pipe, done = plan.model.pipe, [0]
    total = job.total

    def observe(b: BatchStep) -> None:
        job.check_cancel()
        if time.monotonic() > deadline:
            raise TooLong(f"the job ran past the server's limit of {seconds:g} s")
        done[0] += 1
        event = {"type": "step", "step": done[0], "total": total, "t": b.step.t_next}
        if b.step.x0_hat is not None and pipe.modality == "image" and \
                (done[0] % plan.preview_every == 0 or done[0] == total):
            event["preview"] = preview_url(pipe.decode(b.step.x0_hat))
        emit(event)

    return observe


def preview_url(images: Tensor) -> str:
    """Images (n, C, H, W) in [-1, 1] as a PNG grid in a data: URL."""
    buffer = io.BytesIO()
    image_grid(images).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

