"""`unnoise eval` of a checkpoint: every metric asked for in one result, written as JSON into the
checkpoint folder, and the table it prints."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from unnoise.eval.likelihood import likelihood_metrics
from unnoise.eval.options import LIKELIHOOD_METRICS, SAMPLE_METRICS, EvalOptions, Job, open_job
from unnoise.eval.reference import reference_prompts
from unnoise.eval.samples import draw, floor_metrics, sample_metrics
from unnoise.files import write_text_atomic
from unnoise.straightness import straightness


def evaluate(checkpoint: str | Path, opts: EvalOptions, device=None, progress: bool = True) -> tuple[dict, Path]:
    """Every metric asked for; the result is also written as JSON into the checkpoint folder."""
    samples = any(m in SAMPLE_METRICS for m in opts.metrics)
    job = open_job(checkpoint, opts, device, classifier=True, samples=samples)
    classifier = job.pipe.classifier is not None
    result: dict = {"checkpoint": str(job.path), "step": job.pipe.step, "data": job.config.data.name, "seed": opts.seed}
    if samples:  # what the sample metrics drew with
        result.update({"sampler": job.sampler, "steps": job.steps, "spacing": job.spacing, "guidance": job.guidance,
                       "n": opts.n})
    if classifier:
        result.update({"classifier": opts.classifier, "classifier scale": opts.classifier_scale})
    if samples:
        result.update(_sample_results(job, progress))
    if any(m in LIKELIHOOD_METRICS for m in opts.metrics):
        result.update({"nll": {"trace": opts.trace, "rtol": opts.rtol, "atol": opts.atol},
                       "vlb steps": opts.vlb_steps})
        result.update(likelihood_metrics(job.pipe, opts, progress))
    if "straightness" in opts.metrics:  # the run's own conditions: its class grid, its guidance
        result.update({"straightness": straightness(job.pipe, opts.path_n, steps=opts.path_steps, seed=opts.seed,
                                                    batch_size=opts.batch_size, guidance=job.guidance,
                                                    progress=progress),
                       "straightness paths": opts.path_n, "straightness steps": opts.path_steps})
    scale = f"-c{opts.classifier_scale:g}" if classifier else ""
    name = (f"eval-{job.sampler}-{job.steps}-g{job.guidance}{scale}-n{opts.n}{opts.suffix}.json" if samples
            else f"eval-{'-'.join(opts.metrics)}-n{max(opts.nll_n, opts.path_n)}.json")
    path = job.path / name
    write_text_atomic(path, json.dumps({**result, "options": asdict(opts)}, indent=1) + "\n")
    return result, path


def _sample_results(job: Job, progress: bool) -> dict:
    """opts.n samples drawn and scored: what they were drawn with, the sample metrics and the floor."""
    opts, ref, feats = job.opts, job.ref, job.feats
    prompts, prompt_labels = reference_prompts(job.config, ref, opts.n, opts.seed)
    scale = opts.classifier_scale if job.pipe.classifier is not None else None
    images, labels, nfe, seconds = draw(job.pipe, opts.n, **job.sampling(), classifier_scale=scale, prompts=prompts,
                                        progress=progress)
    labels = prompt_labels if prompts else labels
    result = {"features": feats.name, "feature test accuracy": feats.info.get("test_accuracy"),
              "reference": f"{job.config.data.name} {ref.split} ({len(ref.features)} images)",
              **({"prompts": f"the reference images' captions ({len(prompts)})"} if prompts else {}),
              "nfe": nfe, "seconds per sample": seconds}
    result.update(sample_metrics(images, labels, ref, feats, opts.metrics).named())
    if "fd" in opts.metrics:
        result.update(floor_metrics(ref, feats, opts.n, labels, opts.seed))
    return result


def format_table(result: dict) -> str:
    """A two-column text table of a result."""
    rows = [(k, v) for k, v in result.items() if not isinstance(v, dict)]
    width = max(len(k) for k, _ in rows)

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
        return str(v)

    return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in rows)
