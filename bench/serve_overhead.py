"""What `unnoise serve` costs over a bare `Pipeline.sample` for the same job (target: at most 5 %).

    python bench/serve_overhead.py runs/fashion-unet          # a trained run
    python bench/serve_overhead.py --tiny                     # a tiny MNIST run trained on the spot (smoke test)
    python bench/serve_overhead.py runs/fashion-unet --explain   # also the rows that say where the overhead goes

Ours: the job through the real server (uvicorn on a free 127.0.0.1 port, in a thread of this process):
POST /api/jobs, follow it to its done event (server-sent events, or --follow poll), GET result.png;
timed from the POST to the last byte of the PNG. Theirs: `pipe.sample(...)` of the same settings on
the same loaded model, and the same PNG written by `unnoise.outputs.write_samples` (and read back).
Warm-up first; then rounds in which ours and theirs alternate (their order reverses every round);
the ratio ours / theirs of each round, reported as its median (min–max), for wall time (the figure
the 5 % target is about) and for the CPU time of the whole process (client, event loop and worker
alike: steadier than wall time on a loaded machine). The PNGs must be the same bytes (else the two
do not do the same job).

--explain adds, in the same rounds: the server with previews off (preview_every past the last step:
one preview, at the end), the runner `serve.work.run_plan` called directly in the main thread (the
step callback, previews, the PNG and the .npz; no HTTP, no queue), and theirs in a long-lived
non-main thread (the queue's worker is one: does torch run as fast there?).

Preloads tcmalloc (re-executing itself) where it is installed, as the other benchmarks do. Traffic
stays on loopback.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import check_load, machine, preload_tcmalloc, publish, spread  # noqa: E402  bench/common.py

if __name__ == "__main__":
    preload_tcmalloc()

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Self  # noqa: E402

import httpx  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402

from unnoise.outputs import sample_record, write_samples  # noqa: E402
from unnoise.serve import JobRequest, Limits, create_app, load_models  # noqa: E402
from unnoise.serve.jobs import Job  # noqa: E402
from unnoise.serve.requests import check  # noqa: E402
from unnoise.serve.work import run_plan  # noqa: E402

TINY = {
    "data": {"name": "mnist"},
    "model": {"preset": "unet_tiny", "image_size": 28, "in_channels": 1, "out_channels": 1, "num_classes": 10},
    "train": {"steps": 5, "batch_size": 8, "log_every": 5, "checkpoint_every": 5, "label_dropout": 0.1},
    "sample": {"sampler": "heun", "steps": 3, "n": 4, "guidance": 1.0},
}
FOLLOW_SECONDS = 600.0  # one job is given up after this


class Server:
    """uvicorn over the app in a thread of this process, on a free loopback port."""

    def __init__(self, app):
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (as those of
        # uvicorn.run(host=, port=) do); without it Nagle and delayed ACKs add ~40 ms to each request
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def through_server(client: httpx.Client, job: dict, follow: str) -> bytes:
    """POST the job, wait for its end (events or polling), and return its result.png."""
    r = client.post("/api/jobs", json=job)
    r.raise_for_status()
    job_id = r.json()["id"]
    state, deadline = None, time.monotonic() + FOLLOW_SECONDS
    if follow == "events":
        with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: ") and (kind := json.loads(line[6:])["type"]) in ("done", "cancelled",
                                                                                              "failed"):
                    state = kind
                    break
                if time.monotonic() > deadline:
                    break
    else:
        while time.monotonic() < deadline:
            state = client.get(f"/api/jobs/{job_id}").json()["state"]
            if state in ("done", "cancelled", "failed"):
                break
            time.sleep(0.02)
    if state != "done":
        raise RuntimeError(f"job {job_id} ended {state}")
    png = client.get(f"/api/jobs/{job_id}/result.png")
    png.raise_for_status()
    return png.content


def bare(pipe, job: dict, path: Path) -> bytes:
    """The same job without the server: Pipeline.sample, then the PNG the server writes."""
    options = {k: job[k] for k in ("sampler", "steps", "guidance", "seed", "label") if job.get(k) is not None}
    x = pipe.sample(job["n"], batch_size=job["n"], progress=False, **options)
    settings = pipe.settings(**{k: job.get(k) for k in ("sampler", "steps", "guidance", "seed")})
    labels, prompts = pipe.per_sample(job["n"], label=job.get("label"), prompts=None)
    record = sample_record(pipe, settings, mode="sample", n=job["n"])
    write_samples(pipe.modality, x, path, record, labels, prompts, classes=pipe.classes)
    return path.read_bytes()


def runner(models, limits: Limits, job: dict, out: Path) -> bytes:
    """serve.work.run_plan called directly: the checked plan, the step callback and both result files."""
    plan = check(JobRequest(**job), models, limits)
    done = Job(plan, total=plan.calls)
    events: list[dict] = []
    result = run_plan(done, events.append, out, limits.max_seconds)
    return Path(result["png"]).read_bytes()


def alternate(contenders: dict[str, Callable[[], bytes]], rounds: int) -> tuple[dict, dict, dict]:
    """Wall and CPU seconds (the whole process's) of each contender, one a round; the order reverses
    every round. Also their PNGs."""
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    pngs: dict[str, bytes] = {}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start, start_cpu = time.perf_counter(), time.process_time()
            pngs[name] = contenders[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {wall[n][-1]:.3f} s" for n in names),
              file=sys.stderr, flush=True)
    return wall, cpu, pngs


def thread_count_in(executor: ThreadPoolExecutor) -> int:
    return executor.submit(torch.get_num_threads).result()


def report(args, load_at_start, job: dict, wall: dict[str, list[float]], cpu: dict[str, list[float]],
           same: dict[str, bool], threads: dict[str, int], gflop: float) -> str:
    command = "python bench/serve_overhead.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"Command: `{command.strip()}`  ",
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
             f"Machine: {machine(load_at_start)}  ",
             f"torch threads: main {threads['main']}, a new thread {threads['thread']}  ",
             (f"Job: {json.dumps(job)} on `{args.run}` ({gflop:.3g} GFLOP a sample and network call); "
              f"{args.rounds} alternating rounds after a warm-up, following the job by {args.follow}"), "",
             ("| contender | wall s: median (min–max) | wall / theirs, per round | CPU s (process) | "
              "CPU / theirs, per round | same PNG |"),
             "|---|---|---|---|---|---|"]
    for name, values in wall.items():
        ratios = [a / b for a, b in zip(values, wall["theirs"], strict=True)]
        cpu_ratios = [a / b for a, b in zip(cpu[name], cpu["theirs"], strict=True)]
        lines.append(f"| {name} | {spread(values, '.3f')} | {spread(ratios, '.3f')} | "
                     f"{spread(cpu[name], '.3f')} | {spread(cpu_ratios, '.3f')} | "
                     f"{'—' if name == 'theirs' else 'yes' if same[name] else 'NO'} |")
    ratios = [a / b for a, b in zip(wall["ours"], wall["theirs"], strict=True)]
    overhead = statistics.median(ratios) - 1
    fastest = min(wall["ours"]) / min(wall["theirs"]) - 1
    by_cpu = statistics.median([a / b for a, b in zip(cpu["ours"], cpu["theirs"], strict=True)]) - 1
    lines += ["", (f"Serving overhead: {100 * overhead:+.1f} % (median of the per-round wall-time ratios; target "
                   f"<= 5 %: {'met' if overhead <= 0.05 else 'NOT met'}); fastest run against fastest run "
                   f"{100 * fastest:+.1f} %; CPU time {100 * by_cpu:+.1f} %.")]
    if load_at_start[0] > 0.5:
        lines.append(f"Measured on a loaded machine (load average {load_at_start[0]:.2f} at the start): the wall "
                     "times are noisy, re-measure on an idle one.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default=None, help="a trained run or checkpoint folder")
    p.add_argument("--tiny", action="store_true", help="train a tiny MNIST run on the spot and use it")
    p.add_argument("--n", type=int, default=8, help="samples in the job")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--label", type=int, default=None, help="None: sample i shows class i mod classes")
    p.add_argument("--guidance", type=float, default=None, help="None: the run's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=15, help="alternating timing rounds (>= 7 recommended)")
    p.add_argument("--follow", choices=("events", "poll"), default="events",
                   help="how the client waits for the job: server-sent events, or polling its status every 20 ms")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (None: torch's default)")
    p.add_argument("--explain", action="store_true", help="also the rows that locate the overhead")
    p.add_argument("--doc", type=Path, default=None, help="markdown file whose generated block is replaced")
    p.add_argument("--no-preload", action="store_true", help="do not re-execute with tcmalloc preloaded")
    args = p.parse_args(argv)
    if (args.run is None) == (not args.tiny):
        p.error("give a run folder or --tiny, not both")
    if min(args.n, args.steps, args.rounds) < 1:
        p.error("--n, --steps and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_at_start = check_load()
    start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # before any thread of ours runs torch: new threads take it up
    with tempfile.TemporaryDirectory(prefix="serve-overhead-") as tmp:
        tmp = Path(tmp)
        if args.tiny:
            from unnoise.config import load_config
            from unnoise.training.loop import train

            args.run = str(tmp / "tiny")
            train(load_config(None, tree={**TINY, "out": args.run}), quiet=True)
        models = load_models([args.run], "cpu")
        served = next(iter(models.values()))
        pipe = served.pipe
        limits = Limits(max_n=max(16, args.n), max_steps=max(1000, args.steps), max_gflop=1e12, keep=8)
        job = {"n": args.n, "steps": args.steps, "sampler": args.sampler, "seed": args.seed, "label": args.label,
               "guidance": args.guidance}
        job = {k: v for k, v in job.items() if v is not None}
        with Server(create_app(models, tmp / "served", limits)) as server, \
                httpx.Client(base_url=server.url, timeout=httpx.Timeout(FOLLOW_SECONDS, connect=10.0)) as client, \
                ThreadPoolExecutor(1, thread_name_prefix="theirs") as elsewhere:
            contenders = {"theirs": lambda: bare(pipe, job, tmp / "theirs.png"),
                          "ours": lambda: through_server(client, job, args.follow)}
            if args.explain:
                quiet = {**job, "preview_every": args.steps * 1000}
                (tmp / "runner").mkdir()
                contenders |= {
                    "ours, previews off": lambda: through_server(client, quiet, args.follow),
                    "run_plan in the main thread (no HTTP, no queue)": lambda: runner(models, limits, job,
                                                                                       tmp / "runner"),
                    "theirs in a non-main thread": lambda: elsewhere.submit(bare, pipe, job,
                                                                            tmp / "elsewhere.png").result(),
                }
            threads = {"main": torch.get_num_threads(), "thread": thread_count_in(elsewhere)}
            for run in contenders.values():  # warm-up
                run()
            wall, cpu, pngs = alternate(contenders, args.rounds)
    same = {name: png == pngs["theirs"] for name, png in pngs.items()}
    publish(report(args, load_at_start, job, wall, cpu, same, threads, served.gflop), args.doc, "serve_overhead.py",
            time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
