"""`unnoise eval`: sample-quality metrics, likelihoods, quality-vs-NFE sweeps and guidance curves of a
checkpoint, and the reconstructions of an autoencoder's.

    checkpoint --Pipeline.sample, n samples--> images --feature net--> features, logits
    reference split --feature net (cached beside the checkpoint)--> reference features
    metrics: FD, KID, precision/recall (features), accuracy (logits), nearest training neighbour
    (pixels); NLL by the probability-flow ODE and the VLB on test images.

    options         EvalOptions; open_job, the preamble of every job (pipeline, settings, features, reference)
    reference       Reference statistics of a split, cached beside the checkpoint; a text model's prompts
    samples         draw (n samples through the pipeline, with NFE and time), SampleMetrics, floor_metrics
    likelihood      NLL (probability-flow ODE) and VLB in bits/dim
    report          evaluate (every metric asked for, written as JSON) and format_table
    sweeps          every sampler at every NFE budget (SweepRow), the best per budget, the table
    guidance        guidance scale against FD, precision/recall, accuracy; a text model's prompt accuracy
    reconstruction  an autoencoder's reconstructions: PSNR and feature metrics
    modalities      audio, video and molecule runs: each kind's measures beside real data, one report

Every feature metric is named after its network, e.g. `FD[fashion-mnist-cnn]`: unnoise trains its
own feature networks (unnoise.features), so these are not FID numbers and are not comparable to them.
"""

from unnoise.eval.guidance import (GUIDANCE_SCALES, GuidanceRow, PromptRow, fashion_prompts, format_guidance,
                                   format_prompts, guidance_curve, prompt_curve)
from unnoise.eval.likelihood import likelihood_metrics
from unnoise.eval.modalities import KINDS, Sampling, evaluate_kind, format_measured, kinds_help
from unnoise.eval.options import LIKELIHOOD_METRICS, METRICS, SAMPLE_METRICS, EvalOptions, Job, open_job
from unnoise.eval.reconstruction import write_reconstructions
from unnoise.eval.reference import REFERENCE_SPLITS, Reference, reference, reference_prompts
from unnoise.eval.report import evaluate, format_table
from unnoise.eval.samples import SampleMetrics, draw, floor_metrics, sample_metrics
from unnoise.eval.sweeps import (ADAPTIVE_TOLERANCES, SWEEP_NFE, SweepRow, at_budget, best_per_budget, format_sweep,
                                 steps_for_nfe, sweep)

__all__ = [
    "ADAPTIVE_TOLERANCES", "GUIDANCE_SCALES", "KINDS", "LIKELIHOOD_METRICS", "METRICS", "REFERENCE_SPLITS",
    "SAMPLE_METRICS", "SWEEP_NFE", "EvalOptions", "GuidanceRow", "Job", "PromptRow", "Reference", "SampleMetrics",
    "Sampling", "SweepRow", "at_budget", "best_per_budget", "draw", "evaluate", "evaluate_kind", "fashion_prompts",
    "floor_metrics", "format_guidance", "format_measured", "format_prompts", "format_sweep", "format_table",
    "guidance_curve", "kinds_help", "likelihood_metrics", "open_job", "prompt_curve", "reference",
    "reference_prompts", "sample_metrics", "steps_for_nfe", "sweep", "write_reconstructions",
]
