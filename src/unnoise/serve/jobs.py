"""Jobs and the one queue that runs them, in order, on one worker thread.

A job moves queued -> running -> done | cancelled | failed. Everything that happens to it is an
event appended to its list (queued, started, step, done, cancelled, failed); readers follow the list
from an index (`JobQueue.events`), so a client that connects late, or reconnects, misses nothing.
The queue is bounded: `submit` refuses past `max_queued` waiting jobs (a server answers 429).
Cancelling a queued job takes it out of the queue at once; a running job is stopped by its own step
callback, which checks `Job.cancel_requested` after every sampler step (`check_cancel`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FINISHED = ("done", "cancelled", "failed")
log = logging.getLogger("unnoise.serve")


class QueueFull(Exception):
    """The queue holds its maximum of waiting jobs."""


class Cancelled(Exception):
    """Raised inside a running job (from its step callback) when it was asked to stop."""


@dataclass
class Job:
    request: Any  # what was asked (a checked request; the runner reads it), dropped once finished
    summary: dict = field(default_factory=dict)  # what was asked, as status answers show it (no uploads)
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "queued"  # queued, running, done, cancelled or failed
    progress: int = 0  # sampler steps done
    total: int = 0  # sampler steps in all
    error: str = ""  # why it failed
    result: Any = None  # what the runner returned
    created: float = field(default_factory=time.time)
    events: list[dict] = field(default_factory=list)
    cancel_requested: bool = False
    shown: int | None = None  # the index of the event that holds the current preview

    def check_cancel(self) -> None:
        if self.cancel_requested:
            raise Cancelled


class JobQueue:
    """Jobs run one at a time by `run(job, emit)` on a worker thread; emit(event) publishes an event
    of the running job (e.g. a step with its preview). Finished jobs are kept, the oldest forgotten
    past `keep` (on_forget(job) is called for each, e.g. to delete its files)."""

    def __init__(self, run: Callable[[Job, Callable[[dict], None]], Any], max_queued: int = 16, keep: int = 256,
                 on_forget: Callable[[Job], None] | None = None):
        self._run, self.max_queued, self.keep, self._on_forget = run, max_queued, keep, on_forget
        self.on_event: Callable[[Job], None] | None = None  # told of every new event (e.g. to wake its readers)
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # every known job, oldest first
        self._waiting: deque[Job] = deque()
        self._changed = threading.Condition()
        self._stopping = False  # set by close: the worker takes no further job
        self._worker = threading.Thread(target=self._work, name="unnoise-jobs", daemon=True)
        self._worker.start()

    # ---- what clients do ------------------------------------------------------------------------

    def submit(self, request: Any, total: int, summary: dict | None = None) -> Job:
        """A new queued job for `request` of `total` steps; QueueFull when max_queued are waiting."""
        with self._changed:
            if len(self._waiting) >= self.max_queued:
                raise QueueFull(f"the queue is full ({self.max_queued} jobs waiting); try again later")
            job = Job(request, summary or {}, total=total)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._append(job, {"type": "queued", "position": len(self._waiting)})
            return job

    def get(self, job_id: str) -> Job | None:
        with self._changed:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, ...; None once it is not waiting."""
        with self._changed:
            return next((i + 1 for i, j in enumerate(self._waiting) if j is job), None)

    def cancel(self, job: Job) -> None:
        """Stop a job: a waiting one at once, a running one within one step; a finished one stays."""
        with self._changed:
            if job.state == "queued":
                self._waiting.remove(job)
                self._finish(job, "cancelled", {})
                self._forget_old()  # a flood of submit-and-cancel is bounded by keep too
            elif job.state == "running":
                job.cancel_requested = True

    def all(self) -> list[Job]:
        """The jobs kept (waiting, running and finished), oldest first."""
        with self._changed:
            return list(self._jobs.values())

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the worker (the running job stops within one step)."""
        with self._changed:
            self._stopping = True
            for job in list(self._waiting):
                self._waiting.remove(job)
                self._finish(job, "cancelled", {})
            for job in self._jobs.values():
                job.cancel_requested = True
            self._changed.notify_all()
        self._worker.join(timeout)

    # ---- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._stopping)
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.state = "running"
                self._append(job, {"type": "started"})
            self._execute(job)

    def _execute(self, job: Job) -> None:
        def emit(event: dict) -> None:
            with self._changed:
                if event.get("type") == "step":
                    job.progress = event["step"]
                if "preview" in event:  # a job holds its newest preview only: previews of large images add up
                    if job.shown is not None:
                        job.events[job.shown].pop("preview", None)
                    job.shown = len(job.events)
                self._append(job, event)

        try:
            result = self._run(job, emit)
        except Cancelled:
            self._end(job, "cancelled", {})
        except Exception as err:  # noqa: BLE001 - a failed job must not stop the worker; it says why
            self._end(job, "failed", {"error": " ".join(str(err).split()) or type(err).__name__})
        else:
            job.result = result
            self._end(job, "done", {})

    def _end(self, job: Job, state: str, event: dict) -> None:
        with self._changed:
            self._finish(job, state, event)
            self._forget_old()

    def _finish(self, job: Job, state: str, event: dict) -> None:
        job.state, job.error, job.request = state, event.get("error", ""), None  # the uploads go with the request
        self._append(job, {"type": state, **event})

    def _append(self, job: Job, event: dict) -> None:
        job.events.append(event)
        self._changed.notify_all()
        if self.on_event:
            self.on_event(job)

    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if j.state in FINISHED]
        for job in done[: max(0, len(done) - self.keep)]:
            del self._jobs[job.id]
            if self._on_forget:
                try:
                    self._on_forget(job)
                except OSError as err:  # a file that cannot go must not stop the worker
                    log.warning("could not forget job %s: %s", job.id, err)
