"""`unnoise distill TEACHER_RUN --method cd|progressive|reflow`: a few-step student from a trained
run. Each student is a normal run (checkpoints, log, sample grid; `unnoise sample` and `unnoise
eval` read it unchanged), whose config is the teacher's with:

    cd           parameterization "consistency", the cd objective (unnoise.objectives.consistency),
                 sampled by the consistency sampler in 1 step
    progressive  rounds of the progressive objective: N teacher steps -> N / 2, each round's student
                 the next one's teacher and its own run <out>/steps_<N/2>, sampled by DDIM in N / 2 steps
    reflow       the reflow objective on (noise, sample) pairs the teacher's ODE draws first into
                 <out>/pairs.safetensors, sampled by Euler (DDIM on the flow path) in 4 steps, or 1
                 with distill.one_step

then the method's training defaults (METHOD_DEFAULTS) and the caller's overrides. Consistency
training (ct) and 1-rectified flows are trained from configs (`unnoise train fashion-ct`,
`unnoise train fashion-flow`): they need no teacher.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from unnoise.checkpoint import checkpoint_tree, list_checkpoints, run_config
from unnoise.config import RunConfig, load_config
from unnoise.objectives import ReflowObjective
from unnoise.objectives.reflow import PAIRS_FILE, draw_pairs, read_pairs, write_pairs
from unnoise.pipeline import Pipeline
from unnoise.schedules import get_schedule
from unnoise.training.loop import TrainSummary, train

METHODS = ("cd", "progressive", "reflow")
_TRAIN = {"max_seconds": 0.0, "sample_every": 0, "checkpoint_every": 500, "warmup_steps": 100, "log_every": 50}
METHOD_DEFAULTS = {  # a CPU-sized budget each; every value can be overridden (--set)
    "cd": {"train": {**_TRAIN, "steps": 4000, "lr": 1e-4, "ema_decay": 0.999},
           "distill": {"solver": "heun", "levels": 18, "target_ema": 0.95, "distance": "pseudo-huber"}},
    "progressive": {"train": {**_TRAIN, "steps": 1000, "lr": 1e-4, "ema_decay": 0.99},
                    "loss": {"weighting": "truncated-snr"}},
    "reflow": {"train": {**_TRAIN, "steps": 4000, "lr": 1e-4, "ema_decay": 0.999, "label_dropout": 0.0},
               "distill": {"pairs": 10_000}},
}
FIRST_TEACHER_STEPS = 64  # progressive: the teacher's steps in the first round, unless distill.teacher_steps


@dataclass
class Distilled:
    runs: list[str]  # the student run folders, in order (progressive: one per round)
    summaries: list[TrainSummary]


def student_config(teacher: str | Path, method: str, overrides: list[str] = (), out: str | None = None) -> RunConfig:
    """The student's config: the teacher's, changed for `method`, with the method's defaults and
    `overrides` (key=value, as --set) applied on top; checked whole before any work."""
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    tree = copy.deepcopy(checkpoint_tree(teacher))
    teacher_config = run_config(teacher)
    for section, values in METHOD_DEFAULTS[method].items():
        tree[section] = {**tree.get(section, {}), **values}
    tree["train"]["objective"] = method
    tree["distill"] = {**tree.get("distill", {}), "teacher": str(teacher)}
    tree["out"] = out or f"{str(teacher).rstrip('/')}-{method}"
    schedule = get_schedule(teacher_config.diffusion.schedule)
    if method == "reflow" and teacher_config.diffusion.schedule != "flow":
        raise ValueError(f"reflow trains a rectified flow from a flow's pairs: the teacher {teacher} is on schedule "
                         f"{teacher_config.diffusion.schedule!r} (train one with unnoise train fashion-flow)")
    spacing = "karras-trailing" if schedule.alpha(1.0).item() > 0 else "trailing"
    if method == "cd":
        tree["diffusion"] = {**tree.get("diffusion", {}), "parameterization": "consistency"}
        tree["sample"] = {**tree.get("sample", {}), "sampler": "consistency", "steps": 1, "spacing": spacing}
    config = load_config(None, list(overrides), tree=tree)
    if config.distill.guidance != 1 or method == "reflow":
        # guidance distilled into the student (or reflow's pairs, drawn with labels only) leaves it no
        # unconditional branch to guide with: the student samples with guidance 1
        tree["sample"] = {**tree.get("sample", {}), "guidance": 1.0}
        config = load_config(None, list(overrides), tree=tree)
    if method == "progressive":
        steps = config.distill.teacher_steps or FIRST_TEACHER_STEPS
        if steps < 2 or steps % 2:
            raise ValueError(f"progressive distillation halves the teacher's steps: distill.teacher_steps must be an "
                             f"even number >= 2, got {steps}")
        sample = {**tree.get("sample", {}), "sampler": "ddim", "steps": steps // 2, "spacing": spacing}
        config = load_config(None, list(overrides), tree={**tree, "sample": sample,
                                                          "distill": {**tree["distill"], "teacher_steps": steps}})
    if method == "reflow":
        one = config.distill.one_step
        sample = {**tree.get("sample", {}), "sampler": "ddim", "steps": 1 if one else 4, "spacing": "trailing"}
        config = load_config(None, list(overrides), tree={**tree, "sample": sample})
    return config


def distill(teacher: str | Path, method: str, overrides: list[str] = (), *, out: str | None = None,
            rounds: int = 1, resume: bool = False, device: str | None = None, quiet: bool = False) -> Distilled:
    """Train the student(s) of `teacher`; progressive runs `rounds` rounds. resume: continue the
    runs where they stopped (finished rounds are kept)."""
    config = student_config(teacher, method, overrides, out)
    first = Path(config.out) / ("steps_%03d" % (config.distill.teacher_steps // 2) if method == "progressive" else "")
    if not resume and list_checkpoints(first / "checkpoints"):  # before any pairs are drawn
        raise ValueError(f"{first} holds checkpoints already: continue it with --resume, or distil into another "
                         "folder (--out)")
    if method != "progressive":
        if rounds != 1:
            raise ValueError(f"--rounds is for progressive distillation; {method} trains one student")
        make = _reflow_objective(config, device, quiet) if method == "reflow" else None
        summary = train(config, **({"make_objective": make} if make else {}), resume=_latest(config, resume),
                        device=device, quiet=quiet)
        return Distilled([config.out], [summary])
    steps = config.distill.teacher_steps
    if not isinstance(rounds, int) or not 1 <= rounds or steps >> rounds < 1 or steps % (1 << rounds):
        raise ValueError(f"--rounds {rounds} must halve the teacher's {steps} steps that many times (at most "
                         f"{(steps & -steps).bit_length() - 1} rounds)")
    runs, summaries, root = [], [], Path(config.out)
    for k in range(rounds):
        n = steps >> (k + 1)
        later = [f"distill.teacher_steps={2 * n}"] + (["distill.guidance=1"] if k else [])  # guided once: round 1
        round_config = student_config(teacher, method, [*overrides, *later], str(root / f"steps_{n:03d}"))
        summaries.append(train(round_config, resume=_latest(round_config, resume), device=device, quiet=quiet))
        runs.append(round_config.out)
        teacher = round_config.out  # the student becomes the teacher
    return Distilled(runs, summaries)


def _latest(config: RunConfig, resume: bool) -> str | None:
    """'latest' when resuming a run that has checkpoints, else None (a fresh run)."""
    return "latest" if resume and list_checkpoints(Path(config.out) / "checkpoints") else None


def _reflow_objective(config: RunConfig, device: str | None, quiet: bool):
    """Draw the teacher's pairs once into <out>/pairs.safetensors (kept and reused when drawn with
    the same settings), and train on them."""
    dc, path = config.distill, Path(config.out) / PAIRS_FILE
    teacher = Pipeline.load(dc.teacher, device)
    settings = {"teacher": dc.teacher, "teacher step": teacher.step, "pairs": dc.pairs, "guidance": dc.guidance,
                "sampler": dc.sampler or teacher.defaults.sampler, "steps": dc.teacher_steps or teacher.defaults.steps,
                "seed": config.train.seed}
    pairs = None
    if path.is_file():
        pairs, drawn = read_pairs(path)
        if drawn != settings:
            raise ValueError(f"{path} holds pairs drawn with {json.dumps(drawn)}, not {json.dumps(settings)}: delete "
                             "it, or distil into another folder (--out)")
    if pairs is None:
        pairs = draw_pairs(teacher, dc.pairs, sampler=settings["sampler"], steps=settings["steps"],
                           guidance=dc.guidance, seed=config.train.seed, progress=None if not quiet else False)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pairs(pairs, path, settings)
    return lambda c, run: ReflowObjective(c, run, pairs=pairs)
