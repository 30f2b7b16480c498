"""What a client may ask of the server, and the checks that bound it.

A request is checked whole when it arrives, before it is queued: its types and static ranges by
the pydantic model (`JobRequest`), everything that depends on the loaded models and the server's
limits by `check` (model, the mode against the model's kind of data, sampler, label, prompt, uploaded
image and mask, and the work). A refused request raises `RequestError`, naming the field; the API
answers 422 with it.

Work is bounded by `Limits.max_gflop`: n x calls x (2 with classifier-free guidance) x the model's
GFLOP per sample and network call (counted once at load), where calls are the sampler steps, RePaint's
resampled descents included. A sampler may call the network more than once a step (heun and pc
twice); a running job that calls it more than CALLS_PER_STEP times per priced step (an adaptive
solver) is stopped, as is a job past `Limits.max_seconds`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from unnoise.cascade import hint_condition
from unnoise.conditioning import Condition
from unnoise.edit import INPAINT_SAMPLER, repaint_schedule
from unnoise.inputs import read_image, read_mask
from unnoise.pipeline import Settings
from unnoise.samplers import SAMPLERS
from unnoise.serve.models import MODE_KINDS, ServedModel

CALLS_PER_STEP = 4  # network calls a running job may make per priced step before it is stopped
MAX_PREVIEWS = 100  # previews a job sends at most, whatever preview_every asks


class RequestError(ValueError):
    """A request refused: `field` names what was wrong (None: the request as a whole)."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Limits:
    """What one request may cost, and how much the server holds."""

    max_n: int = 16  # samples per job
    max_steps: int = 1000  # sampler steps per job
    max_gflop: float = 2000.0  # n x calls x guidance factor x GFLOP per call (see the module's docstring)
    max_seconds: float = 600.0  # a running job is stopped (failed) past this wall time
    max_prompt_chars: int = 300
    max_image_bytes: int = 4 * 2**20  # an uploaded image or mask, as sent (base64 text)
    max_image_side: int = 2048  # pixels, width and height, before resizing to the model's size
    max_queued: int = 16  # jobs waiting; more are answered 429
    keep: int = 256  # finished jobs (and their files) kept for the gallery; the oldest go first


class JobRequest(BaseModel):
    """One job: n samples of a model, from noise (mode sample) or from an uploaded image (sdedit,
    inpaint). Fields left out (None) take the model's own defaults, as `unnoise sample` does."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a loaded model's name (GET /api/models); None: the first")
    mode: Literal["sample", "sdedit", "inpaint"] = Field("sample", description="from noise, image to image, inpaint")
    n: int = Field(1, ge=1, description="samples, each from its own noise")
    label: int | None = Field(None, ge=0, description="class; None: sample i shows class i mod classes")
    prompt: str | None = Field(None, description="a text model's prompt")
    sampler: str | None = Field(None, description="a sampler name; None: the model's (inpaint: ddpm)")
    steps: int | None = Field(None, ge=1, description="sampler steps; None: the model's")
    guidance: float | None = Field(None, allow_inf_nan=False, description="classifier-free guidance scale")
    seed: int = Field(0, ge=0, lt=2**63, description="sample i draws its noise from (seed, i)")
    image: str | None = Field(None, description="sdedit, inpaint: a PNG or JPEG, base64 or a data: URL")
    mask: str | None = Field(None, description="inpaint: white where pixels are generated, black where kept")
    hint: str | None = Field(None, description="a model that reads a hint image: a ControlNet's (e.g. an edge map, "
                             "white edges on black) or a super-resolution model's low-resolution image")
    hint_noise: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                     description="super-resolution: the level its low-resolution image is noised "
                                     "to; None: the model's")
    strength: float = Field(0.5, gt=0, le=1, allow_inf_nan=False, description="sdedit: how far the image is noised")
    resample: int = Field(1, ge=1, le=20, description="inpaint: RePaint's r (1: the replacement method)")
    jump: int = Field(10, ge=1, description="inpaint: RePaint's jump length, in steps")
    preview_every: int | None = Field(None, ge=1, description="a preview every this many steps; None: about 20 a job")


@dataclass(frozen=True)
class Plan:
    """A checked request: what the runner does."""

    model: ServedModel
    request: JobRequest
    options: dict  # label, prompts, sampler, steps, guidance, seed for Pipeline.sample and the editors
    cond: Condition | None  # n rows: the hint's, for a model that reads one
    image: Tensor | None  # (1, C, H, W) in [-1, 1]
    keep: Tensor | None  # (1, 1, H, W) bool: kept pixels
    settings: Settings  # the pipeline's settings of the job
    calls: int  # network-call steps a batch takes (the progress total of one batch)
    preview_every: int


def check(request: JobRequest, models: dict[str, ServedModel], limits: Limits) -> Plan:
    """The plan of a request, or RequestError naming the first field out of bounds."""
    served = _model(request.model, models)
    pipe = served.pipe
    if request.mode not in served.modes:
        kinds = MODE_KINDS[request.mode]
        raise RequestError("mode", f"mode {request.mode} applies to {' and '.join(kinds)} models only; "
                           f"{served.name!r} makes {pipe.modality} samples")
    if request.n > limits.max_n:
        raise RequestError("n", f"n must be at most {limits.max_n}, got {request.n}")
    if request.sampler is not None and request.sampler not in SAMPLERS:
        raise RequestError("sampler", f"unknown sampler {request.sampler!r}; choose from {', '.join(SAMPLERS)}")
    _check_condition(request, served, limits)
    cond = _hint(request, served, limits)
    image, keep = _images(request, served, limits)
    sampler = request.sampler or (INPAINT_SAMPLER if request.mode == "inpaint" else None)
    try:
        settings = pipe.settings(sampler=sampler, steps=request.steps, guidance=request.guidance, seed=request.seed)
    except ValueError as err:
        raise RequestError("guidance" if "guidance" in str(err) else None, str(err)) from None
    if settings.steps > limits.max_steps:  # asked for, or the model's default
        raise RequestError("steps", f"steps must be at most {limits.max_steps}, got {settings.steps}")
    calls = _priced_calls(request, served, settings, limits)
    options = {"sampler": settings.sampler, "steps": settings.steps, "guidance": request.guidance,
               "seed": request.seed, "label": request.label,
               "prompts": [request.prompt] if request.prompt is not None else None}
    every = max(request.preview_every or math.ceil(calls / 20), math.ceil(calls / MAX_PREVIEWS))
    return Plan(served, request, options, cond, image, keep, settings, calls, every)


def _priced_calls(request: JobRequest, served: ServedModel, settings: Settings, limits: Limits) -> int:
    """The network-call steps of a job (RePaint's descents included), checked against the work bound."""
    calls = settings.steps
    if request.mode == "inpaint":
        path = repaint_schedule(settings.steps, request.jump, request.resample)
        calls = sum(1 for a, b in zip(path, path[1:]) if b > a)  # the descents: one network call each
    gflop = request.n * calls * (2 if settings.guidance != 1 else 1) * served.gflop
    if gflop > limits.max_gflop:
        raise RequestError("steps", f"this job would cost {gflop:.4g} GFLOP (n {request.n} x {calls} network calls "
                           f"x {served.gflop:.3g} GFLOP{' x 2 for guidance' if settings.guidance != 1 else ''}); "
                           f"the limit is {limits.max_gflop:g}: ask for fewer samples or steps")
    return calls


def _model(name: str | None, models: dict[str, ServedModel]) -> ServedModel:
    if name is None:
        return next(iter(models.values()))
    if name not in models:
        raise RequestError("model", f"unknown model {name!r}; loaded: {', '.join(models)}")
    return models[name]


def _check_condition(request: JobRequest, served: ServedModel, limits: Limits) -> None:
    pipe = served.pipe
    if request.label is not None and not pipe.classes:
        raise RequestError("label", f"model {served.name!r} takes no class labels")
    if request.label is not None and request.label >= pipe.classes:
        raise RequestError("label", f"label must be a class in 0..{pipe.classes - 1}, got {request.label}")
    if request.prompt is not None:
        if len(request.prompt) > limits.max_prompt_chars:
            raise RequestError("prompt", f"the prompt must be at most {limits.max_prompt_chars} characters, got "
                               f"{len(request.prompt)}")
        if not pipe.interface.text:
            raise RequestError("prompt", f"model {served.name!r} takes no prompts")


def _hint(request: JobRequest, served: ServedModel, limits: Limits) -> Condition | None:
    """The condition a hint model reads, from the uploaded hint."""
    pipe = served.pipe
    if (request.hint is not None) != bool(pipe.interface.hint_channels):
        raise RequestError("hint", f"model {served.name!r} " + ("reads a hint image: give hint" if request.hint is None
                                                               else "reads no hint image"))
    if request.hint_noise is not None and served.hint != "lowres":
        raise RequestError("hint_noise", f"hint_noise is for super-resolution models; {served.name!r} is not one")
    if request.hint is None:
        return None
    return _read("hint", request.hint, lambda f: hint_condition(pipe, f, request.n, hint_noise=request.hint_noise,
                                                                seed=request.seed), limits)


def _images(request: JobRequest, served: ServedModel, limits: Limits) -> tuple[Tensor | None, Tensor | None]:
    """The uploaded image (and mask) at the model's size, as the mode needs them."""
    wanted = {"sample": (), "sdedit": ("image",), "inpaint": ("image", "mask")}[request.mode]
    for name in ("image", "mask"):
        given = getattr(request, name) is not None
        if given != (name in wanted):
            raise RequestError(name, f"mode {request.mode} {'needs' if name in wanted else 'takes no'} {name}")
    if not wanted:
        return None, None
    shape = served.data_shape
    image = _read("image", request.image, lambda f: read_image(f, shape), limits)
    keep = _read("mask", request.mask, lambda f: read_mask(f, shape), limits) if request.mask else None
    if keep is not None and bool(keep.all()):
        raise RequestError("mask", "the mask marks no pixel to generate (white: generate, black: keep)")
    return image, keep


def _read(field: str, text: str, read, limits: Limits):
    """An uploaded picture: base64 (optionally a data: URL), at most max_image_bytes and max_image_side."""
    if len(text) > limits.max_image_bytes:
        raise RequestError(field, f"{field} is {len(text)} bytes; at most {limits.max_image_bytes} are taken")
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, f"{field} must be a base64 PNG or JPEG (or a data: URL of one)") from None
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as im:
            size = im.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
        raise RequestError(field, f"{field} is not a PNG or JPEG Pillow reads within its pixel limit") from None
    if max(size) > limits.max_image_side:
        raise RequestError(field, f"{field} is {size[0]}x{size[1]} pixels; at most {limits.max_image_side} a side")
    try:
        return read(io.BytesIO(data))
    except ValueError as err:
        raise RequestError(field, f"{field}: {str(err).split(': ', 1)[-1]}") from None

