"""`unnoise eval`: sample-quality metrics, likelihoods and quality-vs-NFE sweeps of a checkpoint.

    checkpoint --generate n samples--> images --feature net--> features, logits
    test split --feature net (cached beside the checkpoint)--> reference features
    metrics: FD, KID, precision/recall (features), accuracy (logits), nearest training neighbour
    (pixels); NLL by the probability-flow ODE and the VLB on test images.

Every feature metric is named after its network, e.g. `FD[fashion-mnist-cnn]`: unnoise trains its
own feature networks (unnoise.features), so these are not FID numbers and are not comparable to them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from unnoise import metrics
from unnoise.config import RunConfig
from unnoise.convergence import CountingDenoiser
from unnoise.data import eval_split
from unnoise.data.image_set import to_signed_unit
from unnoise.features import LoadedFeatures
from unnoise.files import write_atomic, write_text_atomic

SAMPLE_METRICS = ("fd", "kid", "pr", "acc", "nn")
LIKELIHOOD_METRICS = ("nll", "vlb")
METRICS = SAMPLE_METRICS + LIKELIHOOD_METRICS
SWEEP_NFE = (1, 2, 3, 4, 6, 8, 10, 15, 20, 30, 50, 100)
REFERENCE_SPLITS = ("test", "train", "all")
ADAPTIVE_TOLERANCES = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4)  # ode_adaptive's NFE is its tolerance's


@dataclass(frozen=True)
class EvalOptions:
    metrics: tuple[str, ...] = ("fd", "kid", "pr", "acc", "nn")  # any of METRICS
    n: int = 10000  # generated samples for the sample metrics
    sampler: str | None = None  # None: the run's [sample] settings
    steps: int | None = None
    spacing: str | None = None
    guidance: float | None = None
    seed: int = 0
    batch_size: int = 500  # samples generated at once
    nll_n: int = 256  # test images for nll and vlb
    trace: str = "rademacher"  # exact | rademacher | gaussian (nll)
    rtol: float = 1e-5  # ODE tolerances (nll)
    atol: float = 1e-5
    vlb_steps: int | None = None  # T of the bound; None: the schedule's own, else 1000
    features: str | None = None  # a feature network file; None: the packaged one for the run's data
    classifier: str | None = None  # a noise-aware classifier run for classifier guidance
    classifier_scale: float = 1.0  # its guidance scale
    reference: str | None = None  # the split the sample metrics compare with; None: the held-out one

    @property
    def suffix(self) -> str:
        """What result file names carry for a reference other than the default."""
        return f"-{self.reference}" if self.reference else ""

    def __post_init__(self) -> None:
        if self.reference not in (None, *REFERENCE_SPLITS):
            raise ValueError(f"reference must be one of {', '.join(REFERENCE_SPLITS)}, got {self.reference!r}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"unknown metrics {unknown or '(none given)'}; choose from {', '.join(METRICS)}")
        for name in ("n", "batch_size", "nll_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if any(m in self.metrics for m in ("pr",)) and self.n <= 3:
            raise ValueError(f"precision/recall (k = 3) needs n > 3, got {self.n}")


# ---- reference statistics of the test split, cached beside the checkpoint ---------------------


@dataclass
class Reference:
    features: Tensor  # (N, D) float64, of the reference split
    labels: Tensor  # (N,) its labels (-1: none)
    prompts: list[str] | None  # its images' first captions, where the data set has captions
    train_images: Tensor  # (M, C, H, W) uint8, for the nearest-neighbour check and the floor
    train_labels: Tensor  # (M,)
    test_images: Tensor  # (K, C, H, W) uint8, held out: the nearest-neighbour check's baseline
    test_labels: Tensor
    mu: np.ndarray
    cov: np.ndarray
    split: str  # the split the features come from


def reference(config: RunConfig, feats: LoadedFeatures, cache_dir: Path, split: str | None = None) -> Reference:
    """Features of `split` (None: the held-out split, or the whole set where there is none), cached in
    `cache_dir/reference-<key>.safetensors`, the key hashing the images and the feature network."""
    from unnoise.data import load_dataset

    held_out = eval_split(config.data.name)
    split = split or held_out
    if split != "all" and held_out == "all":
        raise ValueError(f"{config.data.name} has no train/test split; the reference can only be 'all'")
    sets = {s: load_dataset(replace(config.data, split=s)) for s in {split, held_out, "train"}}
    ref_set, test, train = sets[split], sets[held_out], sets["train"]
    if not hasattr(ref_set, "images"):
        raise ValueError(f"sample-quality metrics need an image data set, got {config.data.name!r}")
    key = hashlib.sha256(feats.sha256.encode() + split.encode() + (f"crop{feats.crop}".encode() if feats.crop else b"")
                         + ref_set.images.numpy().tobytes()).hexdigest()[:16]
    path = cache_dir / f"reference-{key}.safetensors"
    if path.is_file():
        features = load_file(str(path))["features"]
    else:
        features, _ = feats.embed(to_signed_unit(ref_set.images))
        write_atomic(path, lambda tmp: save_file({"features": features.contiguous()}, str(tmp)))
    mu, cov = metrics.gaussian_stats(features)
    captions = getattr(ref_set, "captions", None)
    prompts = [captions.texts[i] for i in captions.ids[:, 0].tolist()] if captions is not None else None
    return Reference(features, ref_set.labels, prompts, train.images, train.labels, test.images, test.labels,
                     mu, cov, split)


# ---- generation and the sample metrics -------------------------------------------------------


def draw(config: RunConfig, weights: dict, n: int, *, sampler: str | None, steps: int | None,
         spacing: str | None, guidance: float | None, seed: int, batch_size: int, device, options=None,
         progress: bool = True, desc: str = "sampling", classifier=None,
         classifier_scale: float = 0.0, prompts=None) -> tuple[Tensor, Tensor | None, int, float]:
    """n samples in batches: images (n, C, H, W) float32 in [-1, 1] (clamped), the labels asked for
    (class-conditional models, or classifier guidance: i mod classes), the NFE per sample (averaged
    over batches: an adaptive solver's varies; with guidance one call is a doubled batch, with a
    classifier one call includes its forward and backward pass) and the seconds per sample. With
    `prompts` (a text model) sample i uses prompt i mod len(prompts) and the labels are None: the
    caller knows what each prompt asks for."""
    from unnoise.train import generate, load_denoiser

    counters: list[CountingDenoiser] = []

    def count(denoise):
        counters.append(CountingDenoiser(denoise))
        return counters[-1]

    built = load_denoiser(config, weights, device)
    out = []
    start = time.perf_counter()
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for first in range(0, n, batch_size):
            b = min(batch_size, n - first)
            out.append(generate(config, weights, b, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                device=device, guidance=guidance, first=first, wrap=count, options=options,
                                built=built, classifier=classifier, classifier_scale=classifier_scale,
                                prompts=prompts)  # sample first + j: prompt (first + j) mod P
                       .float().clamp(-1, 1).cpu())
            bar.update(b)
    seconds = (time.perf_counter() - start) / n
    classes = classifier.net.config.out_channels if classifier else getattr(config.model, "num_classes", 0)
    labels = torch.arange(n) % classes if classes and not prompts else None
    calls = sum(c.calls * len(x) for c, x in zip(counters, out, strict=True)) / n
    return torch.cat(out), labels, round(calls, 2) if calls != int(calls) else int(calls), seconds


def reference_prompts(config: RunConfig, ref: Reference, n: int, seed: int) -> tuple[list[str] | None, Tensor | None]:
    """A text model's prompts and what they ask for: the reference images' captions in a seeded order
    (sample i gets prompt i mod N, so n < N still spans the whole reference, not its first n images,
    which are often sorted), and for each of the n samples its image's label (-1: none). As COCO
    evaluations prompt with the reference's captions: samples and reference describe the same things.
    (None, None) for a model without text conditioning."""
    if not getattr(config.model, "context_dim", 0):
        return None, None
    if ref.prompts is None:
        raise ValueError(f"{config.data.name} has no captions to prompt a text model with")
    order = torch.randperm(len(ref.prompts), generator=torch.Generator().manual_seed(seed))
    return [ref.prompts[i] for i in order.tolist()], ref.labels[order][torch.arange(n) % len(order)]


def sample_metrics(images: Tensor, labels: Tensor | None, ref: Reference, feats: LoadedFeatures,
                   which: tuple[str, ...]) -> dict:
    """The sample metrics of `which` for generated images against the reference."""
    name = feats.name
    out: dict = {}
    f, logits = feats.embed(images)
    if "fd" in which:
        mu, cov = metrics.gaussian_stats(f)
        out[f"FD[{name}]"] = metrics.frechet_distance(mu, cov, ref.mu, ref.cov)
    if "kid" in which:
        kid, se = metrics.kernel_inception_distance(ref.features, f)
        out[f"KID[{name}]"], out[f"KID[{name}] se"] = kid, se
    if "pr" in which:
        m = min(len(f), len(ref.features))
        p, r = metrics.precision_recall(ref.features[:m], f[:m], k=3)
        out[f"precision[{name}]"], out[f"recall[{name}]"] = p, r
    if "acc" in which and labels is not None and bool((labels >= 0).any()):  # -1: no label to score against
        known = labels >= 0
        out[f"accuracy[{name}]"] = (logits[known].argmax(1) == labels[known]).double().mean().item()
    if "nn" in which:
        # Memorisation check (pixels): distance from each sample to its nearest training image, beside
        # the same for held-out test images. Samples much closer than test images are copies.
        m = min(1000, len(images), len(ref.test_images))
        pool = to_signed_unit(ref.train_images)
        d_gen = metrics.nearest_distances(images[:m], pool)
        d_test = metrics.nearest_distances(to_signed_unit(ref.test_images[:m]), pool)
        out["nn_train median"], out["nn_train median (test images)"] = d_gen.median().item(), d_test.median().item()
        out["nn_train closer than 1% of test"] = (d_gen < d_test.quantile(0.01)).double().mean().item()
    return out


def floor_metrics(ref: Reference, feats: LoadedFeatures, n: int, labels: Tensor | None = None, seed: int = 0) -> dict:
    """FD and KID of n training images against the reference: what a perfect model scores at this n
    (FD is biased upwards at finite n; the floor says how far). Given the samples' labels, the real
    images have the same number per class: a class-balanced set scores much lower than a random one
    (on Fashion-MNIST at n = 200: FD 0.33-0.53 against 1.0-2.2), so only that floor is fair."""
    # Real images from the training split, or from the held-out one when the reference is the
    # training split (then the floor may have fewer than n images: it says how many). A reference of
    # "all" contains the training images: that floor is biased low, and its name says so.
    outside = ref.split == "train"
    images, image_labels = (ref.test_images, ref.test_labels) if outside else (ref.train_images, ref.train_labels)
    g = torch.Generator().manual_seed(seed)
    if labels is None:
        pick = torch.randperm(len(images), generator=g)[: min(n, len(images))]
    else:
        parts = []
        for c, count in zip(*torch.unique(labels, return_counts=True), strict=True):
            pool = torch.nonzero(image_labels == c).flatten()
            parts.append(pool[torch.randperm(len(pool), generator=g)[: int(count)]])
        pick = torch.cat(parts)
    f, _ = feats.embed(to_signed_unit(images[pick]))
    mu, cov = metrics.gaussian_stats(f)
    kid, se = metrics.kernel_inception_distance(ref.features, f)
    kind = (f"{'held-out' if outside else 'training'} images{'' if labels is None else ', same classes'}"
            + (", also in the reference" if ref.split == "all" else ""))  # then it is biased low
    return {f"FD[{feats.name}] floor ({len(pick)} {kind})": metrics.frechet_distance(mu, cov, ref.mu, ref.cov),
            f"KID[{feats.name}] floor": kid, f"KID[{feats.name}] floor se": se}


# ---- likelihoods -----------------------------------------------------------------------------


def likelihood_metrics(config: RunConfig, weights: dict, opts: EvalOptions, device, progress=True) -> dict:
    """NLL (probability-flow ODE) and VLB in bits/dim on the first nll_n test images."""
    from unnoise.data import load_dataset
    from unnoise.likelihood import image_nll, vlb
    from unnoise.train import load_denoiser

    if config.latent.autoencoder:
        raise ValueError("nll and vlb are bits/dim of pixels; this model diffuses in an autoencoder's latents, "
                         "where they would measure something else")
    denoise, schedule = load_denoiser(config, weights, device)
    test = load_dataset(replace(config.data, split=eval_split(config.data.name)))
    if not hasattr(test, "images"):
        raise ValueError("nll and vlb are reported in bits/dim of 8-bit images; this run's data are points")
    classes = getattr(config.model, "num_classes", 0)
    out: dict = {}
    generator = torch.Generator().manual_seed(opts.seed)
    n = min(opts.nll_n, len(test))
    for metric in [m for m in LIKELIHOOD_METRICS if m in opts.metrics]:
        values, counter, start, batches = [], CountingDenoiser(denoise), time.perf_counter(), 0
        for first in tqdm(range(0, n, opts.batch_size), desc=metric, disable=not progress, leave=False):
            x = to_signed_unit(test.images[first:min(first + opts.batch_size, n)]).to(device)
            cond = torch.full((len(x),), classes, device=device) if classes else None  # the null label: p(x)
            if metric == "nll":
                r = image_nll(counter, schedule, x, cond=cond, generator=generator, trace=opts.trace,
                              rtol=opts.rtol, atol=opts.atol)
            else:
                r = vlb(counter, schedule, x, cond=cond, num_steps=opts.vlb_steps, generator=generator)
            values.append(r.bits_per_dim)
            batches += 1
        b = torch.cat(values)
        out[f"{metric} bits/dim"] = b.mean().item()
        out[f"{metric} bits/dim se"] = b.std().item() / math.sqrt(len(b)) if len(b) > 1 else float("nan")
        out[f"{metric} images"] = len(b)
        out[f"{metric} network calls per batch"] = counter.calls / batches
        out[f"{metric} seconds per image"] = (time.perf_counter() - start) / len(b)
    return out


# ---- the command's jobs ----------------------------------------------------------------------


@dataclass
class Run:
    """A checkpoint opened for evaluation, with the sampling settings the options resolve to."""

    ckpt: object  # unnoise.checkpoint.Checkpoint
    config: RunConfig
    spacing: str
    guidance: float | None  # None for an unconditional model


def open_run(checkpoint: str | Path, opts: EvalOptions) -> Run:
    from unnoise.checkpoint import load_checkpoint
    from unnoise.config import load_config

    ckpt = load_checkpoint(checkpoint, with_state=False)
    config = load_config(None, tree=ckpt.config["tree"])
    conditional = getattr(config.model, "num_classes", 0) or getattr(config.model, "context_dim", 0)
    guidance = opts.guidance if opts.guidance is not None else (config.sample.guidance if conditional else None)
    return Run(ckpt, config, opts.spacing or config.sample.spacing, guidance)


def evaluate(checkpoint: str | Path, opts: EvalOptions, device=None, progress: bool = True) -> tuple[dict, Path]:
    """Every metric asked for; the result is also written as JSON into the checkpoint folder."""
    from unnoise.classifier import load_classifier
    from unnoise.features import feature_net_for

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = open_run(checkpoint, opts)
    ckpt, config, spacing, guidance = run.ckpt, run.config, run.spacing, run.guidance
    sampler, steps = opts.sampler or config.sample.sampler, opts.steps or config.sample.steps
    classifier = load_classifier(opts.classifier, device) if opts.classifier else None
    samples = any(m in SAMPLE_METRICS for m in opts.metrics)
    result: dict = {"checkpoint": str(ckpt.path), "step": ckpt.step, "data": config.data.name, "seed": opts.seed}
    if samples:  # what the sample metrics drew with
        result.update({"sampler": sampler, "steps": steps, "spacing": spacing, "guidance": guidance, "n": opts.n})
    if classifier:
        result.update({"classifier": opts.classifier, "classifier scale": opts.classifier_scale})
    if any(m in SAMPLE_METRICS for m in opts.metrics):
        feats = feature_net_for(config.data, opts.features, device)
        ref = reference(config, feats, ckpt.path, opts.reference)
        prompts, prompt_labels = reference_prompts(config, ref, opts.n, opts.seed)
        if prompts and classifier:
            raise ValueError("classifier guidance needs class labels; this is a text model")
        images, labels, nfe, seconds = draw(config, ckpt.ema, opts.n, sampler=sampler, steps=steps, spacing=spacing,
                                            guidance=guidance, seed=opts.seed, batch_size=opts.batch_size,
                                            device=device, progress=progress, classifier=classifier,
                                            classifier_scale=opts.classifier_scale, prompts=prompts)
        labels = prompt_labels if prompts else labels
        result.update({"features": feats.name, "feature test accuracy": feats.info.get("test_accuracy"),
                       "reference": f"{config.data.name} {ref.split} ({len(ref.features)} images)",
                       **({"prompts": f"the reference images' captions ({len(prompts)})"} if prompts else {}),
                       "nfe": nfe, "seconds per sample": seconds})
        result.update(sample_metrics(images, labels, ref, feats, opts.metrics))
        if "fd" in opts.metrics:
            result.update(floor_metrics(ref, feats, opts.n, labels, opts.seed))
    if any(m in LIKELIHOOD_METRICS for m in opts.metrics):
        result.update({"nll": {"trace": opts.trace, "rtol": opts.rtol, "atol": opts.atol},
                       "vlb steps": opts.vlb_steps})
        result.update(likelihood_metrics(config, ckpt.ema, opts, device, progress))
    scale = f"-c{opts.classifier_scale:g}" if classifier else ""
    name = (f"eval-{sampler}-{steps}-g{guidance}{scale}-n{opts.n}{opts.suffix}.json" if samples
            else f"eval-{'-'.join(opts.metrics)}-n{opts.nll_n}.json")
    path = ckpt.path / name
    write_text_atomic(path, json.dumps({**result, "options": asdict(opts)}, indent=1) + "\n")
    return result, path


def format_table(result: dict) -> str:
    """A two-column text table of a result."""
    rows = [(k, v) for k, v in result.items() if not isinstance(v, dict)]
    width = max(len(k) for k, _ in rows)

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
        return str(v)

    return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in rows)


def steps_for_nfe(sampler: str, budget: int, cache: dict, schedule_name: str = "edm",
                  spacing: str = "karras") -> tuple[int, int] | None:
    """The largest step count whose NFE fits the budget, and that NFE (counted on a tiny oracle with
    the run's schedule and spacing)."""
    from unnoise.grids import time_grid
    from unnoise.oracle import GaussianMixture
    from unnoise.samplers import get_sampler
    from unnoise.schedules import get_schedule

    schedule = get_schedule(schedule_name)
    oracle = GaussianMixture.random(2, 2, seed=0).denoiser(schedule)
    best = None
    for steps in range(1, budget + 1):
        if (sampler, steps) not in cache:
            counter = CountingDenoiser(oracle)
            try:
                x = torch.randn(2, 2, dtype=torch.float64) * schedule.sigma(1.0).item()
                get_sampler(sampler)(counter, schedule, x, time_grid(schedule, steps, spacing),
                                     generator=torch.Generator().manual_seed(0))
                cache[(sampler, steps)] = counter.calls
            except ValueError:  # e.g. more steps of warm-up than the sampler can take
                cache[(sampler, steps)] = None
        nfe = cache[(sampler, steps)]
        if nfe is not None and nfe <= budget:
            best = (steps, nfe)
        elif nfe is not None and nfe > budget:
            break
    return best


def sweep(checkpoint: str | Path, opts: EvalOptions, samplers: list[str], budgets=SWEEP_NFE, device=None,
          progress: bool = True, out: Path | None = None) -> tuple[list[dict], Path, Path]:
    """Every sampler at every NFE budget: FD and KID of opts.n samples each; JSON, table and Pareto PNG."""
    from unnoise.features import feature_net_for
    from unnoise.plots import plot_sweep
    from unnoise.samplers import get_sampler

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    for s in samplers:
        get_sampler(s)
    run = open_run(checkpoint, opts)
    ckpt, config, spacing, guidance = run.ckpt, run.config, run.spacing, run.guidance
    feats = feature_net_for(config.data, opts.features, device)
    ref = reference(config, feats, ckpt.path, opts.reference)
    prompts, _ = reference_prompts(config, ref, opts.n, opts.seed)
    plan = []
    cache: dict = {}
    for s in samplers:
        if s == "ode_adaptive":
            plan += [(s, 2, {"rtol": tol, "atol": tol}) for tol in ADAPTIVE_TOLERANCES]
            continue
        chosen = {steps_for_nfe(s, b, cache, config.diffusion.schedule, spacing) for b in budgets} - {None}
        plan += [(s, steps, None) for steps, _ in sorted(chosen)]
    rows = []
    for s, steps, options in tqdm(plan, desc="sweep", disable=not progress):
        images, labels, nfe, seconds = draw(config, ckpt.ema, opts.n, sampler=s, steps=steps, spacing=spacing,
                                            guidance=guidance, seed=opts.seed, batch_size=opts.batch_size,
                                            device=device, options=options, progress=progress,
                                            desc=f"{s} {steps} steps", prompts=prompts)
        m = sample_metrics(images, labels, ref, feats, ("fd", "kid"))
        rows.append({"sampler": s, "steps": steps, "nfe": nfe, **({"tolerance": options["rtol"]} if options else {}),
                     "FD": m[f"FD[{feats.name}]"], "KID": m[f"KID[{feats.name}]"], "KID se": m[f"KID[{feats.name}] se"],
                     "seconds per sample": seconds})
    out = out or ckpt.path
    meta = {"checkpoint": str(ckpt.path), "features": feats.name, "reference": ref.split, "n": opts.n,
            "spacing": spacing, "guidance": guidance, "seed": opts.seed}
    suffix = opts.suffix
    json_path = write_text_atomic(out / f"sweep{suffix}.json", json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    png = plot_sweep(rows, out / f"sweep{suffix}.png", f"FD[{feats.name}]",
                     f"{config.data.name}, step {ckpt.step}, n = {opts.n}, {spacing} grid, guidance {guidance}")
    return rows, json_path, png


def at_budget(rows: list[dict], budget: int) -> dict[str, dict]:
    """Each sampler's run with the most NFE within the budget."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["nfe"] <= budget and (r["sampler"] not in out or r["nfe"] > out[r["sampler"]]["nfe"]):
            out[r["sampler"]] = r
    return out


def best_per_budget(rows: list[dict], budgets=SWEEP_NFE) -> dict[int, dict]:
    """For each budget, the sampler whose run at that budget has the lowest FD."""
    return {b: min(runs.values(), key=lambda r: r["FD"]) for b in budgets if (runs := at_budget(rows, b))}


def format_sweep(rows: list[dict], budgets=SWEEP_NFE) -> str:
    """Markdown: FD per sampler (rows) at each NFE budget (columns; the NFE actually spent in
    parentheses where it falls short of the budget); the best sampler per budget in bold."""
    best = best_per_budget(rows, budgets)
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    lines = ["| sampler | " + " | ".join(f"≤{b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for s in samplers:
        cells = []
        for b in budgets:
            r = at_budget(rows, b).get(s)
            if r is None:
                cells.append("")
                continue
            text = f"{r['FD']:.3g}" + (f" ({r['nfe']})" if r["nfe"] != b else "")
            cells.append(f"**{text}**" if best.get(b) is r else text)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- guidance scale against fidelity and diversity --------------------------------------------

GUIDANCE_SCALES = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def guidance_curve(checkpoint: str | Path, opts: EvalOptions, scales=GUIDANCE_SCALES, device=None,
                   progress: bool = True) -> tuple[list[dict], Path, Path]:
    """FD, precision, recall and class accuracy of opts.n class-grid samples at each guidance scale:
    classifier-free guidance, or with opts.classifier classifier guidance of the model's unconditional
    branch (ADM's setting; a class-conditional model samples with classifier-free scale 0). Both
    start from the same unconditional model at scale 0. Writes guidance-<kind>.json and guidance.png
    (every kind found beside it, in one plot)."""
    from unnoise.classifier import load_classifier
    from unnoise.features import feature_net_for
    from unnoise.plots import plot_guidance

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = open_run(checkpoint, opts)
    ckpt, config = run.ckpt, run.config
    classifier = load_classifier(opts.classifier, device) if opts.classifier else None
    conditional = getattr(config.model, "num_classes", 0)
    if not classifier and not conditional:
        raise ValueError("a guidance curve needs a class-conditional model (classifier-free guidance) or "
                         "--classifier (classifier guidance)")
    if any(s < 0 for s in scales):
        raise ValueError(f"guidance scales must be >= 0, got {scales}")
    sampler, steps = opts.sampler or config.sample.sampler, opts.steps or config.sample.steps
    feats = feature_net_for(config.data, opts.features, device)
    ref = reference(config, feats, ckpt.path, opts.reference)
    kind = "classifier" if classifier else "classifier-free"
    rows = []
    for scale in tqdm(scales, desc=f"{kind} guidance", disable=not progress):
        cfg_scale, clf_scale = (0.0 if conditional else None, scale) if classifier else (scale, 0.0)
        images, labels, nfe, seconds = draw(config, ckpt.ema, opts.n, sampler=sampler, steps=steps,
                                            spacing=run.spacing, guidance=cfg_scale, seed=opts.seed,
                                            batch_size=opts.batch_size, device=device, progress=progress,
                                            desc=f"scale {scale:g}", classifier=classifier, classifier_scale=clf_scale)
        m = sample_metrics(images, labels, ref, feats, ("fd", "pr", "acc"))
        rows.append({"scale": scale, "nfe": nfe, "seconds per sample": seconds,
                     **{k.split("[")[0]: v for k, v in m.items()}})
    meta = {"checkpoint": str(ckpt.path), "kind": kind, "classifier": opts.classifier, "features": feats.name,
            "reference": ref.split, "n": opts.n, "sampler": sampler, "steps": steps, "spacing": run.spacing,
            "seed": opts.seed}
    suffix = opts.suffix
    json_path = write_text_atomic(ckpt.path / f"guidance-{kind}{suffix}.json",
                                  json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    curves = {}
    for k in ("classifier-free", "classifier"):
        if (ckpt.path / f"guidance-{k}{suffix}.json").is_file():
            curves[f"{k} guidance"] = json.loads((ckpt.path / f"guidance-{k}{suffix}.json").read_text())["rows"]
    png = plot_guidance(curves, ckpt.path / f"guidance{suffix}.png", feats.name,
                        f"{config.data.name}, step {ckpt.step}, {sampler} {steps} steps, n = {opts.n}")
    return rows, json_path, png


def format_guidance(rows: list[dict]) -> str:
    """Markdown: one row per scale."""
    lines = ["| scale | FD | precision | recall | class accuracy |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scale']:g} | {r['FD']:.3g} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['accuracy']:.3f} |")
    return "\n".join(lines)


# ---- text models: does the sample show what the prompt names? -------------------------------


def prompt_curve(checkpoint: str | Path, opts: EvalOptions, prompts: list[tuple[str, int, str]],
                 scales=GUIDANCE_SCALES, per_prompt: int = 20, device=None,
                 progress: bool = True) -> tuple[list[dict], Path, Path]:
    """For a text model of a labelled data set: at each classifier-free guidance scale, per_prompt
    samples of each (prompt, class, group) and the share the feature network assigns to the
    prompt's class, per group (e.g. "training captions", "held-out paraphrases"), with the
    Fréchet distance of all samples. Writes prompts.json and prompts.png in the checkpoint folder."""
    from unnoise.features import feature_net_for
    from unnoise.plots import plot_prompt_accuracy

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = open_run(checkpoint, opts)
    ckpt, config = run.ckpt, run.config
    if not getattr(config.model, "context_dim", 0):
        raise ValueError(f"{ckpt.path} is not a text-conditioned model ([model] context_dim = 0)")
    if not prompts or per_prompt < 1:
        raise ValueError("need at least one prompt and per_prompt >= 1")
    sampler, steps = opts.sampler or config.sample.sampler, opts.steps or config.sample.steps
    feats = feature_net_for(config.data, opts.features, device)
    ref = reference(config, feats, ckpt.path, opts.reference)
    texts = [p for p, _, _ in prompts]
    classes = torch.tensor([c for _, c, _ in prompts])
    groups = list(dict.fromkeys(g for _, _, g in prompts))
    n = len(prompts) * per_prompt
    which = torch.arange(n) % len(prompts)  # the prompt of sample i
    rows = []
    for scale in tqdm(scales, desc="prompt guidance", disable=not progress):
        images, _, nfe, seconds = draw(config, ckpt.ema, n, sampler=sampler, steps=steps, spacing=run.spacing,
                                       guidance=scale, seed=opts.seed, batch_size=opts.batch_size, device=device,
                                       progress=progress, desc=f"scale {scale:g}", prompts=texts)
        f, logits = feats.embed(images)
        hit = logits.argmax(1) == classes[which]
        row = {"scale": scale, "nfe": nfe, "seconds per sample": seconds,
               "FD": metrics.frechet_distance(*metrics.gaussian_stats(f), ref.mu, ref.cov)}
        for g in groups:
            members = torch.tensor([i for i, (_, _, gi) in enumerate(prompts) if gi == g])
            row[f"accuracy: {g}"] = hit[torch.isin(which, members)].double().mean().item()
        row["per prompt"] = {t: hit[which == i].double().mean().item() for i, t in enumerate(texts)}
        rows.append(row)
    meta = {"checkpoint": str(ckpt.path), "features": feats.name, "reference": ref.split, "per prompt": per_prompt,
            "sampler": sampler, "steps": steps, "spacing": run.spacing, "seed": opts.seed,
            "prompts": [{"prompt": p, "class": c, "group": g} for p, c, g in prompts]}
    suffix = opts.suffix
    json_path = write_text_atomic(ckpt.path / f"prompts{suffix}.json",
                                  json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    png = plot_prompt_accuracy(rows, groups, ckpt.path / f"prompts{suffix}.png", feats.name,
                               f"{config.data.name}, step {ckpt.step}, {sampler} {steps} steps, "
                               f"{per_prompt} samples per prompt")
    return rows, json_path, png


def fashion_prompts() -> list[tuple[str, int, str]]:
    """Two training captions per class and the three held-out paraphrases per class."""
    from unnoise.data.captions import with_article
    from unnoise.data.fashion import FASHION_HELDOUT_PROMPTS, FASHION_NAMES, FASHION_TEMPLATES

    seen = [(t.format(with_article(name)), c, "training captions")
            for c, name in enumerate(FASHION_NAMES) for t in FASHION_TEMPLATES[:2]]
    return seen + [(p, c, "held-out paraphrases") for p, c in FASHION_HELDOUT_PROMPTS]


def format_prompts(rows: list[dict]) -> str:
    """Markdown: per scale, the share of samples of the prompted class per prompt group, and FD."""
    groups = [k for k in rows[0] if k.startswith("accuracy: ")]
    lines = ["| scale | " + " | ".join(g.removeprefix("accuracy: ") for g in groups) + " | FD |",
             "|---|" + "---|" * (len(groups) + 1)]
    for r in rows:
        lines.append(f"| {r['scale']:g} | " + " | ".join(f"{r[g]:.3f}" for g in groups) + f" | {r['FD']:.3g} |")
    return "\n".join(lines)
