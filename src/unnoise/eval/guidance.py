"""Guidance scale against fidelity and diversity: FD, precision, recall and class accuracy per scale
(classifier-free or classifier guidance), and for a text model of a labelled data set the share of
samples showing the prompted class per scale."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from unnoise import metrics
from unnoise.data.captions import with_article
from unnoise.data.fashion import FASHION_HELDOUT_PROMPTS, FASHION_NAMES, FASHION_TEMPLATES
from unnoise.eval.options import EvalOptions, Job, open_job
from unnoise.eval.samples import draw, sample_metrics
from unnoise.files import write_text_atomic
from unnoise.pipeline import Pipeline
from unnoise.plots import plot_guidance, plot_prompt_accuracy

GUIDANCE_SCALES = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass(frozen=True)
class GuidanceRow:
    """The class-grid samples at one guidance scale."""

    scale: float
    nfe: int | float
    seconds: float  # per sample
    fd: float
    precision: float
    recall: float
    accuracy: float | None  # None: no labels to score against

    def to_json(self) -> dict:
        """The row as guidance-<kind>.json holds it."""
        return {"scale": self.scale, "nfe": self.nfe, "seconds per sample": self.seconds, "FD": self.fd,
                "precision": self.precision, "recall": self.recall,
                **({"accuracy": self.accuracy} if self.accuracy is not None else {})}


@dataclass(frozen=True)
class PromptRow:
    """A text model's samples at one guidance scale."""

    scale: float
    nfe: int | float
    seconds: float  # per sample
    fd: float  # of all the samples
    accuracy: dict[str, float]  # prompt group -> share of its samples the feature network puts in the prompt's class
    per_prompt: dict[str, float]  # prompt -> the same share

    def to_json(self) -> dict:
        """The row as prompts.json holds it."""
        return {"scale": self.scale, "nfe": self.nfe, "seconds per sample": self.seconds, "FD": self.fd,
                **{f"accuracy: {g}": v for g, v in self.accuracy.items()}, "per prompt": self.per_prompt}


def _write_rows(job: Job, name: str, meta: dict, rows) -> Path:
    """{meta, "rows": [...]} as JSON into the checkpoint folder."""
    doc = {**meta, "rows": [r.to_json() for r in rows]}
    return write_text_atomic(job.path / name, json.dumps(doc, indent=1) + "\n")


def _check_guidance(scales, classifier: bool):
    """What a guidance curve needs of the model, checked before the reference statistics."""

    def check(pipe: Pipeline) -> None:
        if not classifier and not pipe.interface.num_classes:
            raise ValueError("a guidance curve needs a class-conditional model (classifier-free guidance) or "
                             "--classifier (classifier guidance)")
        if any(s < 0 for s in scales):
            raise ValueError(f"guidance scales must be >= 0, got {scales}")

    return check


def guidance_curve(checkpoint: str | Path, opts: EvalOptions, scales=GUIDANCE_SCALES, device=None,
                   progress: bool = True) -> tuple[list[GuidanceRow], Path, Path]:
    """FD, precision, recall and class accuracy of opts.n class-grid samples at each guidance scale:
    classifier-free guidance, or with opts.classifier classifier guidance of the model's unconditional
    branch (ADM's setting; a class-conditional model samples with classifier-free scale 0). Both
    start from the same unconditional model at scale 0. Writes guidance-<kind>.json and guidance.png
    (every kind found beside it, in one plot)."""
    classifier = bool(opts.classifier)
    job = open_job(checkpoint, opts, device, classifier=True, check=_check_guidance(scales, classifier))
    conditional = job.pipe.interface.num_classes
    kind = "classifier" if classifier else "classifier-free"
    rows = []
    for scale in tqdm(scales, desc=f"{kind} guidance", disable=not progress):
        cfg, clf = (0.0 if conditional else None, scale) if classifier else (scale, 0.0)
        images, labels, nfe, seconds = draw(job.pipe, opts.n, **job.sampling(guidance=cfg), classifier_scale=clf,
                                            progress=progress, desc=f"scale {scale:g}")
        m = sample_metrics(images, labels, job.ref, job.feats, ("fd", "pr", "acc"))
        rows.append(GuidanceRow(scale, nfe, seconds, m.fd, m.precision, m.recall, m.accuracy))
    meta = {"checkpoint": str(job.path), "kind": kind, "classifier": opts.classifier, "features": job.feats.name,
            "reference": job.ref.split, "n": opts.n, "sampler": job.sampler, "steps": job.steps,
            "spacing": job.spacing, "seed": opts.seed}
    json_path = _write_rows(job, f"guidance-{kind}{opts.suffix}.json", meta, rows)
    curves = {}
    for k in ("classifier-free", "classifier"):
        if (job.path / f"guidance-{k}{opts.suffix}.json").is_file():
            curves[f"{k} guidance"] = json.loads((job.path / f"guidance-{k}{opts.suffix}.json").read_text())["rows"]
    png = plot_guidance(curves, job.path / f"guidance{opts.suffix}.png", job.feats.name,
                        f"{job.config.data.name}, step {job.pipe.step}, {job.sampler} {job.steps} steps, n = {opts.n}")
    return rows, json_path, png


def format_guidance(rows: list[GuidanceRow]) -> str:
    """Markdown: one row per scale."""
    lines = ["| scale | FD | precision | recall | class accuracy |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.scale:g} | {r.fd:.3g} | {r.precision:.3f} | {r.recall:.3f} | {r.accuracy:.3f} |")
    return "\n".join(lines)


# ---- text models: does the sample show what the prompt names? -------------------------------


def _check_prompts(pipe: Pipeline) -> None:
    """A prompt curve needs a text model."""
    if not pipe.interface.text:
        raise ValueError(f"{pipe.source} is not a text-conditioned model ([model] context_dim = 0)")


def prompt_curve(checkpoint: str | Path, opts: EvalOptions, prompts: list[tuple[str, int, str]],
                 scales=GUIDANCE_SCALES, per_prompt: int = 20, device=None,
                 progress: bool = True) -> tuple[list[PromptRow], Path, Path]:
    """For a text model of a labelled data set: at each classifier-free guidance scale, per_prompt
    samples of each (prompt, class, group) and the share the feature network assigns to the
    prompt's class, per group (e.g. "training captions", "held-out paraphrases"), with the
    Fréchet distance of all samples. Writes prompts.json and prompts.png in the checkpoint folder."""
    if not prompts or per_prompt < 1:
        raise ValueError("need at least one prompt and per_prompt >= 1")
    job = open_job(checkpoint, opts, device, check=_check_prompts)
    groups = list(dict.fromkeys(g for _, _, g in prompts))
    rows = [_prompt_row(job, prompts, groups, scale, per_prompt, progress)
            for scale in tqdm(scales, desc="prompt guidance", disable=not progress)]
    meta = {"checkpoint": str(job.path), "features": job.feats.name, "reference": job.ref.split,
            "per prompt": per_prompt, "sampler": job.sampler, "steps": job.steps, "spacing": job.spacing,
            "seed": opts.seed, "prompts": [{"prompt": p, "class": c, "group": g} for p, c, g in prompts]}
    json_path = _write_rows(job, f"prompts{opts.suffix}.json", meta, rows)
    png = plot_prompt_accuracy([r.to_json() for r in rows], groups, job.path / f"prompts{opts.suffix}.png",
                               job.feats.name, f"{job.config.data.name}, step {job.pipe.step}, {job.sampler} "
                               f"{job.steps} steps, {per_prompt} samples per prompt")
    return rows, json_path, png


def _prompt_row(job: Job, prompts: list[tuple[str, int, str]], groups: list[str], scale: float, per_prompt: int,
                progress: bool) -> PromptRow:
    """per_prompt samples of each prompt at one scale, scored by the feature network."""
    texts = [p for p, _, _ in prompts]
    classes = torch.tensor([c for _, c, _ in prompts])
    n = len(prompts) * per_prompt
    which = torch.arange(n) % len(prompts)  # the prompt of sample i
    images, _, nfe, seconds = draw(job.pipe, n, **job.sampling(guidance=scale), progress=progress,
                                   desc=f"scale {scale:g}", prompts=texts)
    f, logits = job.feats.embed(images)
    hit = logits.argmax(1) == classes[which]
    accuracy = {}
    for g in groups:
        members = torch.tensor([i for i, (_, _, gi) in enumerate(prompts) if gi == g])
        accuracy[g] = hit[torch.isin(which, members)].double().mean().item()
    per = {t: hit[which == i].double().mean().item() for i, t in enumerate(texts)}
    fd = metrics.frechet_distance(*metrics.gaussian_stats(f), job.ref.mu, job.ref.cov)
    return PromptRow(scale, nfe, seconds, fd, accuracy, per)


def fashion_prompts() -> list[tuple[str, int, str]]:
    """Two training captions per class and the three held-out paraphrases per class."""
    seen = [(t.format(with_article(name)), c, "training captions")
            for c, name in enumerate(FASHION_NAMES) for t in FASHION_TEMPLATES[:2]]
    return seen + [(p, c, "held-out paraphrases") for p, c in FASHION_HELDOUT_PROMPTS]


def format_prompts(rows: list[PromptRow]) -> str:
    """Markdown: per scale, the share of samples of the prompted class per prompt group, and FD."""
    groups = list(rows[0].accuracy)
    lines = ["| scale | " + " | ".join(groups) + " | FD |", "|---|" + "---|" * (len(groups) + 1)]
    for r in rows:
        lines.append(f"| {r.scale:g} | " + " | ".join(f"{r.accuracy[g]:.3f}" for g in groups) + f" | {r.fd:.3g} |")
    return "\n".join(lines)
