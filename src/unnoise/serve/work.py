"""Running one checked job: the pipeline (or an editor over it) with a step callback that reports
progress and sends a preview of the current estimate of x0 every few steps, a wrapper around the
network that stops the job at its next call once it is cancelled or past its time or its calls, and
the result written as the CLI writes samples (PNG with the settings in text chunks, and .npz)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from unnoise.cascade import hint_level
from unnoise.edit import inpaint, sdedit
from unnoise.outputs import sample_record, write_samples
from unnoise.pipeline import BatchStep
from unnoise.plots import image_grid
from unnoise.serve.jobs import Job
from unnoise.serve.requests import CALLS_PER_STEP, Plan


class OverLimit(Exception):
    """A running job went past its time or its network calls."""


def run_plan(job: Job, emit: Callable[[dict], None], out_dir: Path, max_seconds: float) -> dict:
    """Run job.request (a Plan) in one batch; returns the paths of its .png and .npz and its settings."""
    plan: Plan = job.request
    pipe, req = plan.model.pipe, plan.request
    options = {k: v for k, v in plan.options.items() if v is not None} | {"batch_size": req.n}
    options["wrap"] = _guard(job, plan.calls * CALLS_PER_STEP, time.monotonic() + max_seconds, max_seconds)
    callback = _observer(job, plan, emit)
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
    labels, prompts = pipe.per_sample(req.n, label=req.label, prompts=options.get("prompts"))
    if plan.cond is not None:
        level = {"hint_noise": hint_level(pipe, req.hint_noise)} if plan.model.hint == "lowres" else {}
        extra |= {"hint": plan.model.hint} | level
    record = sample_record(pipe, plan.settings, **extra)
    paths = {suffix: write_samples(pipe.modality, x, out_dir / f"{job.id}.{suffix}", record, labels, prompts,
                                   classes=pipe.classes, rendering=pipe.rendering) for suffix in ("png", "npz")}
    return {**paths, "settings": record}


def _rows(image: Tensor, n: int) -> Tensor:
    return image.expand(n, *image.shape[1:]).clone()


def _guard(job: Job, max_calls: int, deadline: float, seconds: float) -> Callable:
    """The denoiser wrapper that stops a job at its next network call once it is cancelled, past its
    time or past max_calls calls (a sampler's steps may hide many calls: an adaptive solver's)."""
    calls = [0]

    def wrap(denoise: Callable) -> Callable:
        def guarded(*args, **kwargs):
            job.check_cancel()
            if time.monotonic() > deadline:
                raise OverLimit(f"the job ran past the server's limit of {seconds:g} s")
            calls[0] += 1
            if calls[0] > max_calls:
                raise OverLimit(f"the job made more than {max_calls} network calls, {CALLS_PER_STEP} per priced step: "
                                "the server's work limit (an adaptive solver needs fewer steps or a looser rtol)")
            return denoise(*args, **kwargs)

        return guarded

    return wrap


def _observer(job: Job, plan: Plan, emit: Callable[[dict], None]):
    """The step callback: progress and previews."""
    pipe, done = plan.model.pipe, [0]
    total = job.total

    def observe(b: BatchStep) -> None:
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

