"""The HTTP API and the page (FastAPI; OpenAPI docs at /docs).

    POST /api/jobs                   a JobRequest -> 202 {id, position, total}; 422 naming the field; 429 queue full
    GET  /api/jobs                   the jobs kept, newest first (?state=done: the gallery)
    GET  /api/jobs/{id}              state, position in the queue, progress, settings, error; done: the
                                     result's URLs (result: the picture; files: each file by suffix)
    GET  /api/jobs/{id}/events       server-sent events: queued, started, step (progress; a preview PNG
                                     every few steps), then done (with the URLs), cancelled or failed
    POST /api/jobs/{id}/cancel       stops it: a queued job at once, a running one within one step
    GET  /api/jobs/{id}/result.png   the samples with their settings in PNG text chunks (also .npz, and the
                                     file beside the picture of audio, video, molecules: .wav, .gif, .xyz)
    GET  /api/models                 what is loaded: conditioning, defaults, shape, price, samplers
    GET  /                           the page

With a token every /api call needs `Authorization: Bearer <token>`, or `?token=<token>` where a
browser cannot set headers (EventSource, <img src>, <audio src>).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from unnoise.modality import COMPANIONS
from unnoise.samplers import SAMPLERS
from unnoise.serve.jobs import FINISHED, Job, JobQueue, QueueFull
from unnoise.serve.models import ServedModel
from unnoise.serve.requests import JobRequest, Limits, RequestError, check
from unnoise.serve.work import run_plan

PAGE = files("unnoise.serve") / "page"
KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream
Readers = dict[str, set[asyncio.Event]]  # job id -> the wake-up events of the streams that follow it
RECHECK_SECONDS = 1.0  # a stream looks for new events this often even unwoken (before the app's start-up ran)
# the suffixes of the files a job may write: the picture, the raw samples, and what audio, video and molecules
# put beside the picture (unnoise.modality.COMPANIONS); a job serves those it wrote, as these media types
RESULT_SUFFIXES = ("png", "npz", *(suffix[1:] for suffix, _ in COMPANIONS.values()))
MEDIA_TYPES = {"png": "image/png", "wav": "audio/wav", "gif": "image/gif", "xyz": "chemical/x-xyz"}  # else bytes


def create_app(models: dict[str, ServedModel], out_dir: Path, limits: Limits = Limits(), token: str | None = None,
               hosts: list[str] | None = None) -> FastAPI:
    """The app over loaded models; results are written to out_dir. token: required of every API call.
    hosts: the Host headers answered (None: any); a server with no token answers its loopback names
    only, so that a web page elsewhere cannot reach it by DNS rebinding."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def forget(job: Job) -> None:
        for suffix in RESULT_SUFFIXES:
            (out_dir / f"{job.id}.{suffix}").unlink(missing_ok=True)

    queue = JobQueue(lambda job, emit: run_plan(job, emit, out_dir, limits.max_seconds), limits.max_queued,
                     limits.keep, forget)
    readers: Readers = {}  # touched on the event loop only

    app = FastAPI(title="unnoise", summary="Sample and edit with diffusion models, and watch them denoise.",
                  lifespan=_lifespan(queue, readers),
                  max_body_size=3 * limits.max_image_bytes + 2**16)  # image, mask, hint
    if hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_exception_handler(RequestError, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    auth = [Depends(_bearer(token))]
    _job_routes(app, queue, models, limits, auth, readers)

    @app.get("/api/models", dependencies=auth)
    def list_models() -> dict:
        return {"models": [m.describe() for m in models.values()], "samplers": list(SAMPLERS),
                "limits": {k: getattr(limits, k) for k in ("max_n", "max_steps", "max_gflop", "max_prompt_chars")},
                "token_required": token is not None}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.joinpath("index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(PAGE)), name="static")
    return app


def _lifespan(queue: JobQueue, readers: Readers):
    """Start-up: the worker's events wake the streams that follow the job, on the app's event loop;
    shut-down: every job cancelled, the worker stopped."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()

        def notify(job: Job) -> None:
            try:
                loop.call_soon_threadsafe(_wake, readers, job)
            except RuntimeError:  # the loop has closed: the server is stopping
                pass

        queue.on_event = notify
        yield
        queue.on_event = None
        queue.close()

    return lifespan


async def _refused(request: Request, err: RequestError) -> JSONResponse:
    loc = ["body", err.field] if err.field else ["body"]
    return JSONResponse({"detail": [{"loc": loc, "msg": str(err), "type": "value_error"}]}, status_code=422)


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    # FastAPI's own answer echoes the input, which may be NaN (not JSON) or a whole uploaded image
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in err.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _bearer(token: str | None):
    """The dependency that checks the token (constant-time), from the header or the query."""

    def check_token(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    return check_token


def _job_routes(app: FastAPI, queue: JobQueue, models: dict[str, ServedModel], limits: Limits, auth: list,
                readers: Readers) -> None:
    def found(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, or forgotten after {limits.keep} newer ones)")
        return job

    @app.post("/api/jobs", status_code=202, dependencies=auth)
    def submit(request: JobRequest) -> dict:
        plan = check(request, models, limits)
        try:
            job = queue.submit(plan, plan.calls, _summary(plan))
        except QueueFull as err:
            raise HTTPException(429, str(err), headers={"Retry-After": "5"}) from None
        return {"id": job.id, "position": queue.position(job), "total": job.total}

    @app.get("/api/jobs", dependencies=auth)
    def jobs(state: str | None = None) -> dict:
        return {"jobs": [_status(queue, j) for j in reversed(queue.all()) if state is None or j.state == state]}

    @app.get("/api/jobs/{job_id}", dependencies=auth)
    def status(job_id: str) -> dict:
        return _status(queue, found(job_id))

    @app.post("/api/jobs/{job_id}/cancel", dependencies=auth)
    def cancel(job_id: str) -> dict:
        job = found(job_id)
        queue.cancel(job)
        return _status(queue, job)

    @app.get("/api/jobs/{job_id}/events", dependencies=auth)
    async def events(job_id: str, request: Request) -> StreamingResponse:
        job = found(job_id)
        last = request.headers.get("last-event-id", "")
        start = int(last) + 1 if last.isascii() and last.isdigit() and len(last) < 10 else 0
        return StreamingResponse(_stream(job, start, readers), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/result.{suffix}", dependencies=auth)
    def result(job_id: str, suffix: str) -> FileResponse:
        job = found(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}: it has no result")
        files = job.result["files"]  # what the job wrote, by suffix: no path comes from the request
        if suffix not in files:
            raise HTTPException(404, f"job {job_id}'s results are {', '.join('result.' + s for s in files)}, "
                                f"not result.{suffix}")
        if not Path(files[suffix]).is_file():
            raise HTTPException(410, f"job {job_id}'s {suffix} file is gone from the results folder")
        return FileResponse(files[suffix], media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
                            filename=f"unnoise-{job_id}.{suffix}")


def _summary(plan) -> dict:
    """What a job asked, as its status shows it: the uploads left out."""
    return plan.request.model_dump(exclude={"image", "mask", "hint"}) | {"model": plan.model.name}


def _status(queue: JobQueue, job: Job) -> dict:
    out = {"id": job.id, "state": job.state, "position": queue.position(job), "progress": job.progress,
           "total": job.total, "created": job.created, "request": job.summary}
    if job.state == "done":
        out |= {"settings": job.result["settings"]} | _results(job)
    if job.error:
        out["error"] = job.error
    return out


def _results(job: Job) -> dict:
    """A done job's result URLs: the picture's, and every file's by suffix (png, npz, and wav, gif or xyz)."""
    files = {suffix: f"/api/jobs/{job.id}/result.{suffix}" for suffix in job.result["files"]}
    return {"result": files["png"], "files": files}


def _wake(readers: Readers, job: Job) -> None:
    for ready in readers.get(job.id, ()):
        ready.set()


async def _stream(job: Job, start: int, readers: Readers):
    """The job's events from index `start`, as server-sent events with their index as id, ending
    after the job's last event; woken by the worker (JobQueue.on_event), and unwoken once every
    RECHECK_SECONDS; a comment line keeps a quiet stream open. (Starlette ends it when the client goes.)"""
    sent, ready = min(max(0, start), len(job.events)), asyncio.Event()
    readers.setdefault(job.id, set()).add(ready)
    try:
        quiet = 0.0
        while True:
            ready.clear()
            new = job.events[sent:]  # appended under the queue's lock; a slice of a list is read whole
            for event in new:
                shown = event | _results(job) if event["type"] == "done" else event  # done: where its files are
                yield f"id: {sent}\ndata: {json.dumps(shown)}\n\n"
                sent += 1
                if event["type"] in FINISHED:
                    return
            if not new and job.events[-1]["type"] in FINISHED:  # a reader that asked to start past the end
                return
            quiet = 0.0 if new else quiet
            if quiet >= KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                quiet = 0.0
            try:
                await asyncio.wait_for(ready.wait(), RECHECK_SECONDS)
            except TimeoutError:
                quiet += RECHECK_SECONDS
    finally:
        readers[job.id].discard(ready)
        if not readers[job.id]:
            del readers[job.id]
