"""The command line's value types: each parses one option's text or says in one line what it expects."""

from __future__ import annotations

import argparse
import math
import tomllib

from unnoise.schedules import get_schedule

SEED_HELP = ("sample i draws its noise from a generator seeded by (seed, i): the same seed gives the same sample i "
             "whatever --n and --batch-size")


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need at least two step counts >= 1, got {text!r}")
    return values


def floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"need at least one scale, all >= 0, got {text!r}")
    return values


def interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected lo,hi (two numbers), got {text!r}") from None
    if not 0 <= lo < hi <= 1:
        raise argparse.ArgumentTypeError(f"expected 0 <= lo < hi <= 1, got {text!r}")
    return lo, hi


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as a TOML value (1e-4, 500, true, "x"), else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. rtol=1e-4), got {text!r}")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value


def schedule_name(text: str) -> str:
    try:
        get_schedule(text)
    except ValueError as err:  # names the presets
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
