"""`unnoise serve`: trained runs behind the HTTP API and the page (unnoise.serve)."""

from __future__ import annotations

import ipaddress
import shutil
import sys
import tempfile
from pathlib import Path

from unnoise.cli_args import positive_int

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")  # the host names a tokenless server answers


def add_serve(sub, fmt) -> None:
    """unnoise serve"""
    from unnoise.serve.requests import Limits

    d = Limits()
    p = sub.add_parser("serve", formatter_class=fmt, help="an HTTP API and a web page over trained runs",
                       description="Load each run once and serve it: a JSON API (OpenAPI docs at /docs) whose jobs "
                       "run one at a time, with live previews as server-sent events, and a page at / to sample, "
                       "edit (image to image, inpainting), watch the denoising and cancel. Binds to 127.0.0.1; "
                       "any other address needs --token.")
    p.add_argument("runs", nargs="+", type=Path, help="run or checkpoint folders (each served under its folder name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; not a loopback one without --token")
    p.add_argument("--port", type=int, default=8000, help="port to bind")
    p.add_argument("--token", default=None, help="bearer token every API call must carry (required off loopback)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the results (PNG and .npz per job, and the .wav, .gif or .xyz of audio, video "
                   "and molecule models), kept; None: a temporary folder removed at exit")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; None: cuda when present, else cpu")
    p.add_argument("--max-n", type=positive_int, default=d.max_n, help="samples per job, at most")
    p.add_argument("--max-steps", type=positive_int, default=d.max_steps, help="sampler steps per job, at most")
    p.add_argument("--max-gflop", type=float, default=d.max_gflop,
                   help="work per job, at most: n x network calls x GFLOP per call (x 2 with guidance)")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="a running job is stopped past this time")
    p.add_argument("--max-queued", type=positive_int, default=d.max_queued,
                   help="jobs waiting, at most; more are answered 429")
    p.add_argument("--keep", type=positive_int, default=d.keep, help="finished jobs (and files) kept for the gallery")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    import uvicorn

    from unnoise.serve import Limits, create_app, load_models

    if not is_loopback(args.host) and not args.token:
        raise ValueError(f"--host {args.host} is not a loopback address: give --token, which every API call must "
                         "then carry")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must lie in 1..65535, got {args.port}")
    for name in ("max_gflop", "max_seconds"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    limits = Limits(max_n=args.max_n, max_steps=args.max_steps, max_gflop=args.max_gflop,
                    max_seconds=args.max_seconds, max_queued=args.max_queued, keep=args.keep)
    models = load_models(args.runs, args.device)
    out = args.out or Path(tempfile.mkdtemp(prefix="unnoise-serve-"))
    hosts = None if args.token else [*LOOPBACK, args.host]  # see create_app
    app = create_app(models, out, limits, args.token, hosts)
    print(f"serving {', '.join(models)} on http://{args.host}:{args.port}/ "
          f"({'a token is required of every API call' if args.token else 'no token: loopback only'}); "
          f"results in {out}", file=sys.stderr, flush=True)
    try:
        # open event streams must not hold a stopping server for the jobs ahead of theirs
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0
