"""Every mistake in a config is one line: configs fuzzed from the shipped ones either load into a
config that holds its invariants, or are refused with a ValueError of one line naming the key or the
file; never another exception, never a traceback, never a long wait or a large allocation.

    python -m pytest tests/test_config_faults.py -q -s     # prints the counts (accepted / refused by kind)
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import resource
import subprocess
import sys
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest

import unnoise
import unnoise.cli
from unnoise.config import SECTIONS, RunConfig, load_config

CONFIGS = sorted((Path(unnoise.__file__).parent / "configs").glob("*.toml"))
TREES = {p.stem: tomllib.loads(p.read_text()) for p in CONFIGS}

# What a number or a list may be replaced by: out of range, not finite, not whole, not a number.
BAD_NUMBERS = [0, -1, -(10**30), 10**30, 10**9, 1e9, 2.5, 1.0, float("nan"), float("inf"), float("-inf"), True,
               "x", "", [], {}, [[1]]]
BAD_STRINGS = ["", " ", "x", "no such thing", 5, 1.5, False, [], {}, ["a"], "a\nb", "\0"]
BAD_LISTS = [[], [0], [-1], [1.5], [True], ["x"], [[1]], [{}], 5, "1,2", [10**9] * 3, list(range(100))]
BAD_BOOLS = [0, 1, "true", [], 2.5]
BAD_SECTIONS = [5, "text", [], [{}], [{}, {}], [1, 2], True, 1.5]

TABLES = ("data", "model", "diffusion", "loss", "train", "sample", "text", "latent", "autoencoder", "distill")
# A message names a config key, a section, an override or the file.
NAMES_SOMETHING = re.compile(r"\[\[?\w+\]\]?|\b(" + "|".join(TABLES) + r")\."
                             r"[\w'\"-]|\bout\b|--set|config file|\.toml|section")


# ---- writing a tree back as TOML (the fuzzer's own, small writer) -----------------------------

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else "inf" if value == math.inf else "-inf" if value == -math.inf \
            else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are TOML's basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_text(tree: dict) -> str:
    """Scalars and non-table sections first, then [tables] and [[arrays of tables]]."""
    top, tables = [], []
    for key, value in tree.items():
        name = json.dumps(key) if not re.fullmatch(r"[A-Za-z0-9_-]+", key) else key
        if isinstance(value, dict):
            tables.append(f"[{name}]\n" + "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in value.items()))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables += [f"[[{name}]]\n" + "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in t.items())
                       for t in value]
        else:
            top.append(f"{name} = {toml_value(value)}\n")
    return "".join(top) + "\n".join(tables)


# ---- the cases ------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    kind: str  # what was broken: number, string, list, bool, section, text, deep, file
    what: str  # for the failure message
    channel: str = "file"  # file: written as TOML and read; tree: load_config(tree=...); set: --set KEY=VALUE
    tree: dict | None = None
    text: str | bytes | None = None
    overrides: tuple[str, ...] = ()
    key: str = ""  # the key broken, which the message should name
    path: str = ""  # a file case: the path to give (relative to the case folder)


def _fields(tree: dict) -> list[tuple[str, str, str]]:
    """(section, key, kind) for every field of every section of a config, present in its tree or not."""
    config = load_config(None, tree=tree)
    out = []
    for section in TABLES:
        for f in dataclasses.fields(getattr(config, section)):
            t = str(f.type)
            kind = ("list" if t.startswith("tuple") else "bool" if t == "bool" else
                    "number" if re.search(r"\b(int|float)\b", t) else "string")
            out.append((section, f.name, kind))
    return [*out, ("", "out", "string"), ("model", "preset", "string")]


def _with(tree: dict, section: str, key: str, value) -> dict:
    tree = json.loads(json.dumps(tree))
    if section:
        tree.setdefault(section, {})[key] = value
    else:
        tree[key] = value
    return tree


def value_cases() -> list[Case]:
    cases = []
    for name, tree in TREES.items():
        for section, key, kind in _fields(tree):
            bad = {"number": BAD_NUMBERS, "string": BAD_STRINGS, "list": BAD_LISTS, "bool": BAD_BOOLS}[kind]
            dotted = f"{section}.{key}" if section else key
            for i, value in enumerate(bad):
                channel = ("file", "tree", "set")[(i + len(key)) % 3]
                if channel == "set" and isinstance(value, str) and "\n" in value:
                    channel = "tree"  # a --set value is one line
                case = Case(kind, f"{name}: {dotted} = {toml_value(value)}", channel, key=dotted)
                if channel == "set":
                    case.tree, case.overrides = tree, (f"{dotted}={toml_value(value)}",)
                else:
                    case.tree = _with(tree, section, key, value)
                cases.append(case)
    return cases


def section_cases() -> list[Case]:
    cases = []
    for name, tree in TREES.items():
        for section in SECTIONS:
            for i, value in enumerate(BAD_SECTIONS):
                cases.append(Case("section", f"{name}: {section} = {toml_value(value)}", ("file", "tree")[i % 2],
                                  tree={**tree, section: value}, key=section))
            if section in tree:
                rest = {k: v for k, v in tree.items() if k != section}
                cases.append(Case("section", f"{name}: no [{section}]", tree=rest, key=section))
        text = CONFIGS[0].parent.joinpath(f"{name}.toml").read_text()
        for header in re.findall(r"^\[(\w+)\]$", text, re.M):  # [train] -> [[train]]: an array of tables
            cases.append(Case("section", f"{name}: [[{header}]]", text=text.replace(f"[{header}]", f"[[{header}]]"),
                              key=header))
        cases.append(Case("section", f"{name}: [trian]", text=text + "\n[trian]\nsteps = 3\n", key="trian"))
        cases.append(Case("section", f"{name}: --set trian.steps", "set", tree=tree, overrides=("trian.steps=3",)))
        cases.append(Case("section", f"{name}: --set train", "set", tree=tree, overrides=("train=3",), key="train"))
        cases.append(Case("section", f"{name}: --set no =", "set", tree=tree, overrides=("train.steps",)))
        cases.append(Case("section", f"{name}: --set train.steps.x", "set", tree=tree, overrides=("train.steps.x=1",)))
    return cases


def text_cases(rng: random.Random, per_config: int) -> list[Case]:
    """Random damage to the TOML text: bytes or lines deleted, duplicated or inserted, truncation."""
    cases = []
    for path in CONFIGS:
        text = path.read_bytes()
        lines = text.split(b"\n")
        for j in range(per_config):
            how = j % 6
            if how == 0:  # delete a few bytes
                damaged = bytearray(text)
                for _ in range(rng.randint(1, 4)):
                    at = rng.randrange(len(damaged))
                    del damaged[at:at + rng.randint(1, 8)]
                damaged = bytes(damaged)
            elif how == 1:  # delete a line
                k = rng.randrange(len(lines))
                damaged = b"\n".join(lines[:k] + lines[k + 1:])
            elif how == 2:  # duplicate a line (a key twice, a table twice)
                k = rng.randrange(len(lines))
                damaged = b"\n".join(lines[:k + 1] + lines[k:])
            elif how == 3:  # truncate
                damaged = text[:rng.randrange(len(text))]
            elif how == 4:  # insert bytes, some not UTF-8
                at = rng.randrange(len(text))
                noise = bytes(rng.choice(b"=[]{}\"'#.\n\x00\xff\xfe,x1") for _ in range(rng.randint(1, 5)))
                damaged = text[:at] + noise + text[at:]
            else:  # swap two characters
                damaged = bytearray(text)
                a, b = rng.randrange(len(text)), rng.randrange(len(text))
                damaged[a], damaged[b] = damaged[b], damaged[a]
                damaged = bytes(damaged)
            cases.append(Case("text", f"{path.stem}: damage {how} #{j}", text=damaged))
    return cases


def deep_cases() -> list[Case]:
    text = CONFIGS[0].read_text()
    deep = 3000
    return [
        Case("deep", "nested arrays in a file",
             text=text.replace("[train]", f"[train]\nlr = {'[' * deep}{']' * deep}")),
        Case("deep", "nested inline tables", text=text.replace("[train]", "[train]\nlr = " + "{a = " * 500 + "1"
                                                                + "}" * 500)),
        Case("deep", "a deep dotted table", text=text + "\n[train." + ".".join(["a"] * deep) + "]\nx = 1\n"),
        Case("deep", "a deep dotted section", text=text + "\n[" + ".".join(["a"] * deep) + "]\nx = 1\n"),
        Case("deep", "--set a nested array", "set", tree=TREES[CONFIGS[0].stem],
             overrides=(f"train.lr={'[' * deep}{']' * deep}",)),
        Case("deep", "a deep tree", "tree", tree=_with(TREES[CONFIGS[0].stem], "train", "lr", _nested(deep))),
        Case("deep", "a deep dict in a tree", "tree", tree=_with(TREES[CONFIGS[0].stem], "train", "lr",
                                                                 _nested(deep, dict))),
        Case("deep", "a long list", text=text.replace("[train]", "[train]\nlr = [" + "1, " * 50_000 + "]")),
        Case("deep", "a long key", text=text.replace("[train]", "[train]\n" + "k" * 100_000 + " = 1")),
        Case("deep", "a long string", text=text.replace("[train]", "[train]\nobjective = \"" + "x" * 100_000 + "\"")),
    ]


def _nested(depth: int, kind=list):
    value = 1
    for _ in range(depth):
        value = [value] if kind is list else {"a": value}
    return value


def file_cases(rng: random.Random) -> list[Case]:
    return [
        Case("file", "no such file", path="missing.toml"),
        Case("file", "no such file, no suffix", path="missing"),
        Case("file", "a folder", path="folder"),
        Case("file", "a folder named .toml", path="folder.toml"),
        Case("file", "empty", text=b""),
        Case("file", "binary", text=bytes(rng.randrange(256) for _ in range(300))),
        Case("file", "UTF-16", text=CONFIGS[0].read_text().encode("utf-16")),
        Case("file", "Latin-1", text="out = \"caf\xe9\"\n".encode("latin-1")),
        Case("file", "a byte-order mark", text=b"\xef\xbb\xbf" + CONFIGS[0].read_bytes()),
        Case("file", "JSON", text=json.dumps(TREES[CONFIGS[0].stem]).encode()),
        Case("file", "NUL bytes", text=b"\x00" * 50),
    ]


def all_cases(seed: int, quick: bool) -> list[Case]:
    """Every deep and file case, and a seeded sample of the value, section and text cases (all the
    section and text cases unless quick: the value cases alone number about 16,000)."""
    rng = random.Random(seed)
    fixed = deep_cases() + file_cases(rng)
    pools = [(value_cases(), 450 if quick else 5000), (section_cases(), 120 if quick else None),
             (text_cases(rng, 8 if quick else 40), None)]
    return fixed + [c for pool, k in pools for c in (pool if k is None or k >= len(pool) else rng.sample(pool, k))]


# ---- running a case -------------------------------------------------------------------------

def run_case(case: Case, folder: Path):
    """load_config on the case: its config, or the exception it raised."""
    path = None
    if case.path:
        path = folder / case.path
        if case.path.startswith("folder"):
            path.mkdir(exist_ok=True)
    elif case.text is not None or case.channel == "file":
        text = case.text if case.text is not None else toml_text(case.tree)
        path = folder / "case.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        if path is not None:
            return load_config(path, list(case.overrides)), path
        return load_config(None, list(case.overrides), tree=case.tree), path
    except Exception as err:  # noqa: BLE001 - the test classifies every exception
        return err, path


def check_invariants(config: RunConfig) -> None:
    """What a loaded config promises, checked without the ranges table: whole numbers are ints, floats
    finite, counts positive, the run folder named."""
    for section in TABLES:
        for f in dataclasses.fields(part := getattr(config, section)):
            value = getattr(part, f.name)
            if str(f.type).startswith("int") and value is not None:
                assert isinstance(value, int) and not isinstance(value, bool), (section, f.name, value)
            if isinstance(value, float):
                assert math.isfinite(value), (section, f.name, value)
    t, s = config.train, config.sample
    assert t.steps >= 1 and t.batch_size >= 1 and t.log_every >= 1 and t.keep_checkpoints >= 1
    assert t.checkpoint_every >= 0 and t.sample_every >= 0 and t.max_seconds >= 0 and 0 <= t.ema_decay < 1
    assert 1 <= s.steps <= 10_000 and 1 <= s.n <= 10_000
    assert config.out.strip() and config.diffusion.sigma_data > 0
    assert config.data.image_size is None or 1 <= config.data.image_size <= 4096
    m = config.model
    for name in ("image_size", "in_channels", "base_channels", "hidden_size", "hidden", "depth", "dim"):
        assert getattr(m, name, 1) >= 1, (name, m)


def fuzz(tmp_path: Path, seed: int, quick: bool) -> dict:
    cases = all_cases(seed, quick)
    counts: Counter = Counter()
    slowest, started = (0.0, ""), time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    failures = []
    for case in cases:
        t0 = time.perf_counter()
        result, path = run_case(case, tmp_path)
        slowest = max(slowest, (time.perf_counter() - t0, case.what))
        if isinstance(result, RunConfig):
            counts[case.kind, "accepted"] += 1
            try:
                check_invariants(result)
            except AssertionError as err:
                failures.append(f"{case.what}: accepted, but {err}")
            continue
        message = str(result)
        if type(result) is not ValueError:
            failures.append(f"{case.what}: {type(result).__name__}: {message[:200]}")
        elif "\n" in message or "\r" in message or len(message) > 600:
            failures.append(f"{case.what}: not one short line: {message[:300]!r}")
        elif not (NAMES_SOMETHING.search(message) or (path and path.name in message)):
            failures.append(f"{case.what}: names no key or file: {message}")
        else:
            counts[case.kind, "refused"] += 1
            counts[case.kind, "names the key"] += bool(case.key) and case.key.split(".")[-1] in message
    elapsed = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024  # KiB -> MiB (Linux)
    kinds = sorted({k for k, _ in counts})
    print(f"\n{len(cases)} fuzzed configs in {elapsed:.1f} s (slowest {slowest[0] * 1000:.0f} ms: {slowest[1]}); "
          f"peak memory grew {grown:.0f} MiB")
    for kind in kinds:
        print(f"  {kind:8} accepted {counts[kind, 'accepted']:5}  refused {counts[kind, 'refused']:5}  "
              f"(naming the broken key {counts[kind, 'names the key']})")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:30])
    assert slowest[0] < 2.0, slowest
    assert grown < 500, f"peak memory grew by {grown:.0f} MiB"
    return {"elapsed": elapsed, "counts": counts, "cases": len(cases)}


def test_fuzzed_configs_load_or_fail_in_one_line(tmp_path):
    result = fuzz(tmp_path, seed=0, quick=True)
    assert result["elapsed"] < 15


@pytest.mark.slow
def test_every_fuzzed_config_loads_or_fails_in_one_line(tmp_path):
    result = fuzz(tmp_path, seed=1, quick=False)
    assert result["elapsed"] < 30
    assert result["cases"] > 5000


# ---- the fuzzing report's cases, each by name -------------------------------------------------

DEMO = TREES["mnist-demo"]


@pytest.mark.parametrize("name, overrides, message", [
    ("mnist-demo", ["train.batch_size=0"], r"train.batch_size must be a whole number in 1..65536, got 0"),
    ("mnist-demo", ["train.log_every=0"], r"train.log_every must be a whole number >= 1, got 0"),
    ("mnist-demo", ["sample.steps=1e9"], r"sample.steps must be a whole number in 1..10000, got 1000000000.0 "
                                         r"\(a float"),
    ("mnist-demo", ["sample.steps=1000000000"], r"sample.steps must be a whole number in 1..10000, got 1000000000 \("),
    ("mnist-demo", ["sample.n=0"], r"sample.n must be a whole number in 1..10000, got 0"),
    ("mnist-demo", ["data=5"], r"\[data\] must be a section of key = value lines, got 5"),
    ("mnist-demo", ["train.steps=0"], r"train.steps must be a whole number in 1..1000000000, got 0"),
    ("mnist-demo", ["train.steps=-5"], r"train.steps must be .*, got -5"),
    ("mnist-demo", ["train.steps=2.5"], r"train.steps must be a whole number .*, got 2.5"),
    ("mnist-demo", ["train.steps=true"], r"train.steps must be a whole number .*, got true"),
    ("mnist-demo", ['out=""'], r"out must name a run folder \(no control characters\), got ''"),
    ("mnist-demo", ["data.image_size=0"], r"data.image_size must be a whole number in 1..4096, got 0"),
    ("mnist-demo", ["train.keep_checkpoints=0"], r"train.keep_checkpoints must be a whole number >= 1, got 0"),
    ("mnist-demo", ["train.checkpoint_every=-1"], r"train.checkpoint_every must be a whole number >= 0, got -1"),
    ("mnist-demo", ["train.max_seconds=nan"], r"train.max_seconds must be a finite number >= 0, got nan"),
    ("toy-2d", ["model.hidden=0"], r"model.hidden must be a whole number in 1..4096, got 0"),
    ("mnist-demo", ["diffusion.sigma_data=0"], r"diffusion.sigma_data must be a finite number in \(0, 10000\], got 0"),
    ("mnist-demo", ["diffusion.sigma_data=-0.5"],
     r"diffusion.sigma_data must be a finite number in \(0, 10000\], got -0.5"),
    ("mnist-demo", ["loss.sigma_data=nan"], r"loss.sigma_data must be a finite number in \(0, 10000\], got nan"),
    ("mnist-demo", ["train.ema_decay=nan"], r"train.ema_decay must be a finite number in \[0, 1\), got nan"),
    ("mnist-demo", ["train.lr=inf"], r"train.lr must be a finite number in \(0, 1\], got inf"),
    ("mnist-demo", ["model.base_channels=1000000"], r"model.base_channels must be a whole number in 1..4096"),
    ("mnist-demo", ["model.channel_mult=[1, 2, 256]"], r"model.base_channels x max\(model.channel_mult\) = 8192"),
    ("mnist-demo", ["data.num_points=1000000000"], r"data.num_points must be a whole number in 1..10000000"),
    ("mnist-demo", ["train.seed=-1"], r"train.seed must be a whole number in 0..2\^63 - 1, got -1"),
    ("mnist-demo", ['diffusion.schedule="edn"'], r"diffusion.schedule must be one of .*, got 'edn'"),
    ("mnist-demo", ['train.objective="difusion"'], r"train.objective must be .* got 'difusion'"),
    ("mnist-demo", ['model.preset=["unet_small"]'], r"\[model\] preset must be one of .*, got \['unet_small'\]"),
    ("signals-1d", ["data.num_points=1000000", "data.length=4096"], r"data.num_points x data.length = 4096000000"),
    ("fashion-dit", ["model.patch_size=1", "model.image_size=256", "data.image_size=256"],
     r"model.image_size and model.patch_size: self-attention over the patches spans 65536 positions"),
])
def test_the_reported_cases_are_refused_by_name(name, overrides, message):
    with pytest.raises(ValueError, match=message) as caught:
        load_config(None, overrides, tree=TREES[name])
    assert type(caught.value) is ValueError and "\n" not in str(caught.value)


def test_overrides_and_files_are_checked_alike(tmp_path):
    """The same bad value, given in the file, in a tree or by --set, is refused with the same message."""
    path = tmp_path / "bad.toml"
    for section, key, value in [("train", "batch_size", 0), ("sample", "steps", 1e9), ("model", "base_channels", -4),
                                ("loss", "p_std", math.nan), ("data", "image_size", 2.5)]:
        tree = _with(DEMO, section, key, value)
        path.write_text(toml_text(tree))
        messages = set()
        for args in ((path, []), (None, [], tree), (None, [f"{section}.{key}={toml_value(value)}"], DEMO)):
            with pytest.raises(ValueError) as caught:
                load_config(*args)
            messages.add(str(caught.value))
        assert len(messages) == 1 and f"{section}.{key} must be" in messages.pop()


def test_structural_and_file_errors_are_one_line(tmp_path):
    text = CONFIGS[0].read_text()
    cases = [
        (text.replace("[train]", "[[train]]"),
         r"\[train\] must be one section .* an array of 1 tables \(\[\[train\]\]\)"),
        ("out = \"x\"\n[data]\nname = \"mnist\"\n", r"a config needs a \[data\] and a \[model\] section"),
        (text + "\n[train]\n", r"case.toml: not valid TOML: .*\(at line \d+, column \d+\)"),
        (text.replace("[train]", "[train]\nlr = " + "[" * 5000 + "]" * 5000),
         "case.toml: arrays or inline tables nested"),
        (text + "\n[" + ".".join(["a"] * 5000) + "]\n", r"a\.a\.a.*: nested more than 8 levels deep"),
        (text.replace("[train]", "[train]\n\"a\\nb\" = 1"), r"unknown key train.'a\\nb'"),
    ]
    path = tmp_path / "case.toml"
    for body, message in cases:
        path.write_text(body)
        with pytest.raises(ValueError, match=message) as caught:
            load_config(path)
        assert type(caught.value) is ValueError and "\n" not in str(caught.value)
    path.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    with pytest.raises(ValueError, match=r"case.toml is not UTF-8 text \(byte 0\): not a TOML file"):
        load_config(path)
    with pytest.raises(ValueError, match=r"config file .*nowhere.toml does not exist"):
        load_config(tmp_path / "nowhere.toml")
    with pytest.raises(ValueError, match=r"config file .* is a folder, not a TOML file"):
        load_config(tmp_path)
    with pytest.raises(ValueError, match=r"train.lr\[0\]\[0\].*: nested more than 8 levels deep"):
        load_config(None, tree=_with(DEMO, "train", "lr", _nested(100_000)))


# ---- the command line: exit 2, one line on stderr, no training --------------------------------

CLI_CASES = [  # (what, file text or None for the shipped config, --set overrides, what stderr says)
    ("batch_size = 0", None, ["train.batch_size=0"], "train.batch_size must be a whole number in 1..65536, got 0"),
    ("log_every = 0", None, ["train.log_every=0"], "train.log_every must be a whole number >= 1, got 0"),
    ("sample.steps = 1e9", None, ["sample.steps=1e9"], "sample.steps must be a whole number in 1..10000"),
    ("steps = -1", None, ["train.steps=-1"], "train.steps must be a whole number in 1..1000000000, got -1"),
    ("ema_decay = nan", None, ["train.ema_decay=nan"], "train.ema_decay must be a finite number in [0, 1), got nan"),
    ("data = 5", "data = 5\n[model]\npreset = \"unet_small\"\n", [], "[data] must be a section"),
    ("[[train]]", "[[train]]\n", [], "[train] must be one section of key = value lines"),
    ("syntax", "[data\nname = 1\n", [], "not valid TOML: Expected ']' at the end of a table declaration (at line 1"),
    ("binary", b"\x00\xff\xfe\x80", [], "is not UTF-8 text (byte 1): not a TOML file"),
    ("deep", "x = " + "[" * 5000 + "]" * 5000 + "\n", [], "arrays or inline tables nested too deeply"),
    ("--set out=", None, ["out="], "out must name a run folder (no control characters), got ''"),
]


@pytest.mark.parametrize("what, text, overrides, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_command_line_refuses_bad_configs_in_one_line(what, text, overrides, message, tmp_path, capsys,
                                                          monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a bad config reached training")

    monkeypatch.setattr(unnoise.cli, "train", no_training)
    config = CONFIGS[0]
    if text is not None:
        config = tmp_path / "bad.toml"
        config.write_bytes(text if isinstance(text, bytes) else text.encode())
    sets = [a for o in overrides for a in ("--set", o)]
    out = [] if any(o.startswith("out=") for o in overrides) else ["--out", str(tmp_path / "run")]  # --out would win
    assert unnoise.cli.main(["train", str(config), *sets, *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unnoise train: error: ") and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, overrides, message", [
    ("[train]\nbatch_size = 0\n", [], "train.batch_size must be a whole number in 1..65536, got 0"),
    (None, ["sample.n=0"], "sample.n must be a whole number in 1..10000, got 0"),
])
def test_a_bad_config_exits_2_in_a_fresh_process(text, overrides, message, tmp_path):
    """The real command: exit status 2, one line on stderr, no traceback, no run folder."""
    config = tmp_path / "bad.toml"
    shipped = CONFIGS[0].read_text()
    config.write_text(re.sub(r"^batch_size = \d+", "batch_size = 0", shipped, flags=re.M) if text else shipped)
    sets = [a for o in overrides for a in ("--set", o)]
    run = subprocess.run([sys.executable, "-m", "unnoise.cli", "train", str(config), *sets,
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr and message in run.stderr, run.stderr
    assert not (tmp_path / "run").exists()
