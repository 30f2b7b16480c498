"""`unnoise serve` under load: the real server (uvicorn on a free 127.0.0.1 port, in a thread) over a
tiny MNIST model, and 50 concurrent clients that submit small jobs, follow them (polling or
server-sent events), and some cancel theirs on purpose.

Checked: no 5xx and no unexpected status ever, the queue bound answered with 429, no job lost (every
accepted job ends done or cancelled, none failed or stuck, none cancelled that was not asked to be),
the server still answering afterwards, and one fixed job giving byte-identical PNGs under load and
alone, with the samples of its .npz exactly those of a bare `Pipeline.sample` of the same settings.

Every loop is bounded in count and in time; all traffic stays on loopback.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from unnoise.pipeline import Pipeline
from unnoise.serve import Limits, create_app, load_models

CLIENTS = 50
MAX_QUEUED = 8
JOBS_PER_CLIENT = 2  # accepted jobs a client aims for (at most 100 in all: fewer than Limits.keep, none forgotten)
ATTEMPTS_PER_CLIENT = 40  # submissions a client makes at most (429s included)
LOAD_SECONDS = 25.0  # clients stop submitting after this
FOLLOW_SECONDS = 20.0  # a client gives up following one job after this (then the job counts as stuck)
SETTLE_SECONDS = 20.0  # after the load, the queue must drain within this
SAMPLERS = ("ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "ddpm")
FIXED = {"n": 2, "steps": 12, "sampler": "dpmpp_2m_sde", "label": 7, "guidance": 2.0, "seed": 1234}
FINISHED = ("done", "cancelled", "failed")


@pytest.fixture(scope="module")
def run(tiny_mnist_run):
    return tiny_mnist_run


@pytest.fixture(scope="module")
def server(run, tmp_path_factory, serving):
    """The base URL of a real uvicorn server over the run, on a free loopback port; stopped after the tests."""
    app = create_app(load_models([run], "cpu"), tmp_path_factory.mktemp("serve-results"),
                     Limits(max_queued=MAX_QUEUED))
    with serving(app) as url:
        yield url


@dataclass
class Log:
    """Every response any client saw, and the jobs accepted, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    responses: list[tuple[str, int]] = field(default_factory=list)  # (route, status)
    accepted: dict[str, dict] = field(default_factory=dict)  # id -> {"cancel": asked to cancel, "seen": last state}
    errors: list[str] = field(default_factory=list)  # what a client found wrong (or a transport error)

    def saw(self, route: str, response: httpx.Response) -> httpx.Response:
        with self.lock:
            self.responses.append((route, response.status_code))
        return response

    def wrong(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


# what each route may answer; anything else (a 5xx above all) fails the test
EXPECTED = {"submit": {202, 429}, "status": {200}, "cancel": {200}, "events": {200}, "result": {200},
            "models": {200}, "list": {200}}


def follow_by_polling(client: httpx.Client, log: Log, job_id: str, cancel_after_step: bool) -> str:
    """The job's final state, polling its status (bounded in time); cancels it after its first step if asked."""
    deadline = time.monotonic() + FOLLOW_SECONDS
    cancelled = False
    while time.monotonic() < deadline:
        status = log.saw("status", client.get(f"/api/jobs/{job_id}"))
        if status.status_code != 200:
            return f"status {status.status_code}"
        body = status.json()
        if cancel_after_step and not cancelled and body["progress"] > 0:
            log.saw("cancel", client.post(f"/api/jobs/{job_id}/cancel"))
            cancelled = True
        if body["state"] in FINISHED:
            return body["state"]
        time.sleep(random.uniform(0.03, 0.1))
    return "stuck"


def follow_by_events(client: httpx.Client, log: Log, job_id: str, cancel_after_step: bool) -> str:
    """The job's final state, from its server-sent events (each event index once, in order); cancels it
    after its first step if asked (a second connection while the stream is open)."""
    last, final, cancelled = -1, "stuck", False
    deadline = time.monotonic() + FOLLOW_SECONDS
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        log.saw("events", stream)
        if stream.status_code != 200:
            return f"events {stream.status_code}"
        for line in stream.iter_lines():
            if line.startswith("id: "):
                index = int(line[4:])
                if index != last + 1:
                    log.wrong(f"job {job_id}: event {index} after {last}")
                last = index
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "step" and not 1 <= event["step"] <= event["total"]:
                    log.wrong(f"job {job_id}: step {event['step']} of {event['total']}")
                if event["type"] == "step" and cancel_after_step and not cancelled:
                    log.saw("cancel", client.post(f"/api/jobs/{job_id}/cancel"))
                    cancelled = True
                if event["type"] in FINISHED:
                    final = event["type"]
                    break
            if time.monotonic() > deadline:
                break
    return final


def fetch_results(client: httpx.Client, log: Log, job_id: str) -> tuple[bytes, np.ndarray]:
    png = log.saw("result", client.get(f"/api/jobs/{job_id}/result.png"))
    npz = log.saw("result", client.get(f"/api/jobs/{job_id}/result.npz"))
    assert png.status_code == 200 and npz.status_code == 200
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    with np.load(io.BytesIO(npz.content)) as f:
        return png.content, f["samples"]


def client_work(base: str, log: Log, k: int, start: threading.Barrier, stop_at: float) -> None:
    """Client k: submits small varied jobs until it had JOBS_PER_CLIENT accepted (bounded in attempts
    and time), follows each, cancels some on purpose, and fetches the results of some done ones."""
    rng = random.Random(k)
    mode = ("poll", "events")[k % 2]
    try:
        with httpx.Client(base_url=base, timeout=httpx.Timeout(30.0, connect=10.0)) as client:
            start.wait(30)
            accepted = 0
            for attempt in range(ATTEMPTS_PER_CLIENT):
                if accepted >= JOBS_PER_CLIENT or time.monotonic() > stop_at:
                    break
                job = {"n": rng.randint(1, 2), "steps": rng.randint(5, 20), "sampler": rng.choice(SAMPLERS),
                       "seed": rng.randrange(2**31)}
                if rng.random() < 0.7:
                    job["label"] = rng.randrange(10)
                if rng.random() < 0.5:
                    job["guidance"] = rng.choice([1.0, 1.5, 3.0])
                r = log.saw("submit", client.post("/api/jobs", json=job))
                if r.status_code == 429 and r.headers.get("retry-after") is None:
                    log.wrong("a 429 without Retry-After")
                if r.status_code != 202:
                    time.sleep(rng.uniform(0.1, 0.6))  # 429: back off a little and try again
                    continue
                accepted += 1
                job_id, position = r.json()["id"], r.json()["position"]
                if position is not None and not 1 <= position <= MAX_QUEUED:
                    log.wrong(f"job {job_id} accepted at position {position} of a queue of {MAX_QUEUED}")
                # clients 0, 5, 10, ... cancel their first job: at once (even k, polling) or after its first
                # step (odd k, following its events)
                cancel = k % 5 == 0 and accepted == 1
                with log.lock:
                    log.accepted[job_id] = {"cancel": cancel, "seen": None}
                if cancel and k % 2 == 0:
                    log.saw("cancel", client.post(f"/api/jobs/{job_id}/cancel"))
                follow = follow_by_polling if mode == "poll" else follow_by_events
                state = follow(client, log, job_id, cancel_after_step=cancel and k % 2 == 1)
                with log.lock:
                    log.accepted[job_id]["seen"] = state
                if state == "done" and attempt % 3 == 0:
                    fetch_results(client, log, job_id)
    except Exception as err:  # noqa: BLE001 - a client's failure is a finding, reported by the test
        log.wrong(f"client {k}: {type(err).__name__}: {err}")


def fixed_job(client: httpx.Client, log: Log, stop_at: float) -> tuple[bytes, np.ndarray, int | None] | None:
    """Submit FIXED (retrying on 429, bounded), wait for it, and return its PNG bytes, its samples and
    its position in the queue when it was accepted."""
    while time.monotonic() < stop_at:
        r = log.saw("submit", client.post("/api/jobs", json=FIXED))
        if r.status_code == 202:
            job_id, position = r.json()["id"], r.json()["position"]
            with log.lock:
                log.accepted[job_id] = {"cancel": False, "seen": None}
            state = follow_by_polling(client, log, job_id, cancel_after_step=False)
            with log.lock:
                log.accepted[job_id]["seen"] = state
            return (*fetch_results(client, log, job_id), position) if state == "done" else None
        time.sleep(0.1)
    return None


def wait_idle(client: httpx.Client, seconds: float) -> list[dict]:
    """The jobs still queued or running once the server is idle, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        busy = [j for j in client.get("/api/jobs").json()["jobs"] if j["state"] not in FINISHED]
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.1)


def test_fifty_clients(server, run):
    log = Log()
    began = time.monotonic()
    stop_at = began + LOAD_SECONDS
    start = threading.Barrier(CLIENTS + 1)
    threads = [threading.Thread(target=client_work, args=(server, log, k, start, stop_at), name=f"client-{k}",
                                daemon=True) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=server, timeout=httpx.Timeout(30.0, connect=10.0)) as client:
        start.wait(30)  # everyone submits at once: the queue holds MAX_QUEUED, so most are told 429
        time.sleep(0.5)  # then the fixed job, into a busy queue
        under_load = fixed_job(client, log, stop_at + 10)
        for t in threads:
            t.join(max(0.1, stop_at + FOLLOW_SECONDS + 5 - time.monotonic()))
        load_ended = time.monotonic()
        assert not [t.name for t in threads if t.is_alive()], "clients still running"

        # drained: nothing queued or running, nothing failed
        assert wait_idle(client, SETTLE_SECONDS) == []
        final = {}
        for job_id in list(log.accepted):
            r = log.saw("status", client.get(f"/api/jobs/{job_id}"))
            assert r.status_code == 200, f"job {job_id} lost ({r.status_code})"
            final[job_id] = r.json()["state"]
        alone = fixed_job(client, log, time.monotonic() + 10)  # on the idle server
        final |= {j: s["seen"] for j, s in log.accepted.items() if j not in final}
        models = log.saw("models", client.get("/api/models"))
        assert models.status_code == 200 and models.json()["models"]  # still answering

    codes = Counter(code for _, code in log.responses)
    summary = (f"{len(log.accepted)} jobs accepted in {load_ended - began:.1f} s, "
               f"states {dict(Counter(final.values()))}, responses {dict(sorted(codes.items()))}")
    print(summary)
    assert log.errors == [], log.errors[:5]
    assert not [c for c in codes if c >= 500], summary
    unexpected = [(route, code) for route, code in log.responses if code not in EXPECTED[route]]
    assert unexpected == [], unexpected[:5]
    assert codes[429] > 0, "the queue bound was never reached"
    assert codes[202] == len(log.accepted)

    # no job lost, none failed, none stuck, and none cancelled that was not asked to be
    assert set(final.values()) <= {"done", "cancelled"}, summary
    for job_id, seen in log.accepted.items():
        assert seen["seen"] == final[job_id], (job_id, seen, final[job_id])  # what its client saw last
        if not seen["cancel"]:
            assert final[job_id] == "done", (job_id, final[job_id])
    asked = [j for j, s in log.accepted.items() if s["cancel"]]
    assert asked and any(final[j] == "cancelled" for j in asked)
    assert sum(s == "done" for s in final.values()) >= CLIENTS // 2  # the load was real

    # the same seed and settings: the same bytes under load and alone, and the bare pipeline's samples
    assert under_load is not None and alone is not None
    assert under_load[2] is not None and under_load[2] >= 2  # it waited behind other jobs: it ran under load
    assert under_load[0] == alone[0]
    assert np.array_equal(under_load[1], alone[1])
    options = {k: FIXED[k] for k in ("sampler", "steps", "guidance", "seed", "label")}
    bare = Pipeline.load(run, "cpu").sample(FIXED["n"], batch_size=FIXED["n"], progress=False, **options)
    assert under_load[1].dtype == np.float32 and np.array_equal(under_load[1], bare.float().numpy())
