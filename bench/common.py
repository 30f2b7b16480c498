"""What every benchmark here shares: tcmalloc preloading, the machine line, the load warning and
the generated block of docs/benchmarks.md. Imports nothing heavy: `preload_tcmalloc` runs before torch."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
from pathlib import Path

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def preload_tcmalloc() -> None:
    """Re-execute this script with tcmalloc preloaded, unless asked not to or already done.

    glibc malloc makes CPU timings 15-25% slower and noisy (measured here, docs/benchmarks.md); the library must be loaded
    before torch is, hence a restart rather than a late dlopen.
    """
    argv = sys.argv
    if "--no-preload" in argv or "--help" in argv or "-h" in argv:
        return
    if "tcmalloc" in os.environ.get("LD_PRELOAD", "") or not os.path.exists(TCMALLOC):
        return
    env = dict(os.environ, LD_PRELOAD=f"{TCMALLOC} {os.environ.get('LD_PRELOAD', '')}".strip())
    os.execve(sys.executable, [sys.executable, *argv], env)


def check_load() -> tuple[float, float, float]:
    """The load average now; warns when other processes share the cores."""
    load = os.getloadavg()
    if load[0] > 0.5:
        print(f"warning: load average {load[0]:.2f}: other processes share the cores and will "
              "distort the timings (2 threads wait on each other when one is preempted)", file=sys.stderr)
    return load


def machine(load_at_start: tuple[float, float, float]) -> str:
    """One line: CPU, threads, allocator, load at the start and now, library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    maps = Path("/proc/self/maps")
    preloaded = maps.exists() and "tcmalloc" in maps.read_text()
    versions = []
    for name in ("torch", "diffusers", "k-diffusion"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    load = [" / ".join(f"{v:.2f}" for v in avg) for avg in (load_at_start, os.getloadavg())]
    return (f"{os.cpu_count()} cores ({cpu}), CPU only, torch threads {torch.get_num_threads()}, "
            f"{'tcmalloc preloaded' if preloaded else 'glibc malloc (tcmalloc NOT preloaded)'}, "
            f"load average (1/5/15 min) {load[0]} at the start, {load[1]} at the end; "
            f"Python {platform.python_version()}, {', '.join(versions)}")


def spread(values: list[float], fmt: str = ".1f") -> str:
    """median (min–max)"""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def publish(text: str, doc: Path | None, script: str, seconds: float) -> None:
    """Print the report, write it into `doc`'s block for `script` (None: print only), and the time taken."""
    print(text)
    if doc is not None:
        write_block(doc, text, script)
        print(f"\nwrote {doc}", file=sys.stderr)
    print(f"total {seconds:.0f} s", file=sys.stderr)


def write_block(path: Path, text: str, script: str) -> None:
    """Replace `script`'s generated block of `path` (between its markers), keeping the prose around it."""
    start, end = f"<!-- bench/{script}:start -->", f"<!-- bench/{script}:end -->"
    block = f"{start}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)
