"""Running one checked job: the pipeline (or an editor over it) with a step callback that reports
progress and sends a preview of the current estimate of x0 every few steps (the picture of its kind
of data: unnoise.modality), a wrapper around the network that stops the job at its next call once it
is cancelled or past its time or its calls, and the result written as the CLI writes samples (PNG
with the settings in text chunks, the sound, animation or coordinates beside it, and .npz)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from unnoise.cascade import hint_level
from unnoise.edit import inpaint, sdedit
from unnoise.modality import COMPANIONS, picture_png
from unnoise.outputs import sample_record, write_samples
from unnoise.pipeline import BatchStep
from unnoise.serve.jobs import Job
from unnoise.serve.requests import CALLS_PER_STEP, Plan

PREVIEW_FREE = 1.0  # seconds of drawing previews any job may spend (an image grid's previews never use them up)
PREVIEW_SHARE = 0.25  # past them, drawing previews takes at most about this share of a job's time


class OverLimit(Exception):
    """A running job went past its time or its network calls."""


def run_plan(job: Job, emit: Callable[[dict], None], out_dir: Path, max_seconds: float) -> dict:
    """Run job.request (a Plan) in one batch; returns its settings and the paths of the files it wrote
    by suffix: png, npz and the companion of its kind (wav, gif or xyz; unnoise.modality.COMPANIONS)."""
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
    files = {suffix: write_samples(pipe.modality, x, out_dir / f"{job.id}.{suffix}", record, labels, prompts,
                                   classes=pipe.classes, rendering=pipe.rendering) for suffix in ("png", "npz")}
    if pipe.modality in COMPANIONS:  # written beside the PNG
        suffix = COMPANIONS[pipe.modality][0]
        files[suffix[1:]] = files["png"].with_suffix(suffix)
    return {"files": files, "settings": record}


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
    """The step callback: progress and previews, every plan.preview_every steps and at the last. Past
    PREVIEW_FREE seconds of drawing, a due preview is skipped while drawing has taken more than
    PREVIEW_SHARE of the job's time (a plotted kind's picture may take longer than a step)."""
    pipe, done, drawing, start = plan.model.pipe, [0], [0.0], time.monotonic()
    total = job.total

    def observe(b: BatchStep) -> None:
        done[0] += 1
        event = {"type": "step", "step": done[0], "total": total, "t": b.step.t_next}
        last = done[0] == total
        due = b.step.x0_hat is not None and (done[0] % plan.preview_every == 0 or last)
        if due and (last or drawing[0] < PREVIEW_FREE or drawing[0] <= PREVIEW_SHARE * (time.monotonic() - start)):
            began = time.monotonic()
            event["preview"] = preview_url(pipe.modality, pipe.decode(b.step.x0_hat), pipe.rendering)
            drawing[0] += time.monotonic() - began
        emit(event)

    return observe


def preview_url(kind: str, x: Tensor, rendering: dict) -> str:
    """A batch x (n, *sample shape) as the picture of its kind (unnoise.modality) in a PNG data: URL."""
    return "data:image/png;base64," + base64.b64encode(picture_png(kind, x, **rendering)).decode("ascii")

