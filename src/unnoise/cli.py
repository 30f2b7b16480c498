"""The `unnoise` command line: `unnoise train | distill | sample | edit | invert | interpolate | eval | serve | ...`.

Every option is listed with its default by `unnoise <command> --help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import torch
from tqdm import tqdm

from unnoise.cascade import cascade, hint_condition, hint_level, hint_picture
from unnoise.checkpoint import export_model, list_checkpoints, load_checkpoint, run_config
from unnoise.cli_args import SEED_HELP, finite, floats, int_list, interval, option, positive_int, schedule_name
from unnoise.cli_edit import (
    add_edit,
    add_interpolate,
    add_invert,
    cmd_edit,
    cmd_interpolate,
    cmd_invert,
)
from unnoise.cli_serve import add_serve, cmd_serve
from unnoise.config import load_config
from unnoise.convergence import Report, format_report, measure, report_ok
from unnoise.data import DATASET_NAMES, modality_of
from unnoise.distill import distill
from unnoise.eval import (
    KINDS,
    SWEEP_NFE,
    EvalOptions,
    evaluate,
    evaluate_kind,
    fashion_prompts,
    format_guidance,
    format_measured,
    format_prompts,
    format_sweep,
    format_table,
    guidance_curve,
    kinds_help,
    prompt_curve,
    sweep,
    write_reconstructions,
)
from unnoise.features import (
    PACKAGED,
    FeatureConfig,
    packaged_path,
    save_feature_net,
    train_feature_net,
)
from unnoise.files import check_writable
from unnoise.grids import SPACINGS, time_grid
from unnoise.modality import SINGLES
from unnoise.models import MODEL_PRESETS
from unnoise.oracle import GaussianMixture
from unnoise.outputs import sample_record, write_individual, write_samples
from unnoise.pipeline import Pipeline
from unnoise.plots import plot_convergence, plot_samples
from unnoise.samplers import SAMPLERS, get_sampler
from unnoise.schedules import PRESETS, get_schedule
from unnoise.training.loop import TrainingStopped, train


def _oracle_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim", type=positive_int, default=2, help="dimension of the Gaussian-mixture oracle")
    p.add_argument("--components", type=positive_int, default=8, help="number of mixture components")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixture, the initial noise and the samplers")
    p.add_argument("--schedule", type=schedule_name, default="ddpm",
                   help=f"noise schedule: {', '.join(PRESETS)}, optionally with the suffix -ztsnr")
    p.add_argument("--spacing", choices=SPACINGS, default="logsnr", help="time-grid spacing")
    p.add_argument("--n", type=positive_int, default=2000, help="samples per run")
    p.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNG figures")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="unnoise", formatter_class=fmt,
                                     description="Diffusion models on one mathematical core.")
    parser.add_argument("--version", action="version", version=f"unnoise {version('unnoise')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_samplers, _add_train, _add_distill, _add_sample, add_edit, add_invert, add_interpolate,
                _add_demo, _add_eval, _add_export, _add_train_features, _add_list, add_serve):
        add(sub, fmt)
    return parser


LISTS = ("samplers", "configs", "presets", "datasets", "schedules")


def _add_list(sub, fmt) -> None:
    """unnoise list"""
    p = sub.add_parser("list", formatter_class=fmt, help="what there is to choose from, one name a line",
                       description="Print the names one can give: samplers (sample.sampler, --sampler), shipped "
                       "configs (unnoise train NAME), model presets ([model] preset), data sets ([data] name) "
                       "or schedules ([diffusion] schedule).")
    p.add_argument("what", choices=LISTS, help="which names")


def cmd_list(args) -> int:
    names = {"samplers": lambda: list(SAMPLERS),
             "configs": lambda: sorted(p.stem for p in Path(str(files("unnoise") / "configs")).glob("*.toml")),
             "presets": lambda: sorted(MODEL_PRESETS), "datasets": lambda: list(DATASET_NAMES),
             "schedules": lambda: list(PRESETS)}[args.what]()
    print("\n".join(names))
    return 0


def _add_samplers(sub, fmt) -> None:
    """unnoise samplers"""
    p = sub.add_parser("samplers", formatter_class=fmt,
                       help="measure every sampler against the exact Gaussian-mixture denoiser",
                       description="Measure every sampler on the exact Gaussian-mixture oracle: NFE, endpoint "
                       "error against a tight reference solve of the same ODE from the same noise, fitted "
                       "convergence order, and sliced-Wasserstein distance to true samples beside its "
                       "noise floor. Writes a log-log error-vs-NFE plot.")
    _oracle_options(p)
    p.add_argument("--steps", type=int_list, default=[16, 32, 64, 128, 256, 512],
                   help="comma-separated step counts for the deterministic samplers")
    p.add_argument("--stochastic-steps", type=positive_int, default=1024,
                   help="step count at which stochastic samplers are compared with true samples")
    p.add_argument("--margin", type=finite, default=1.5,
                   help="a stochastic sampler passes if its distance <= margin x the noise floor")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 if any sampler misses its theoretical order by more than 0.2 "
                   "or its distribution error exceeds margin x noise floor")
    p.add_argument("--demo-steps", type=positive_int, default=10,
                   help="steps for the side-by-side scatter of samples from four samplers")


def _add_train(sub, fmt) -> None:
    """unnoise train (and its old name, train-autoencoder)"""
    for name, what, description in [
        ("train", "a diffusion model (or a noise-aware classifier)",
         "Writes log.jsonl, loss.png, sample grids and checkpoints to the run folder."),
        ("train-autoencoder", "the autoencoder of latent diffusion (the same as train: the network decides)",
         "Reconstruction, KL, perceptual and (from autoencoder.disc_start on) adversarial losses; writes "
         "log.jsonl, loss.png, reconstructions.png, reconstruction.json (PSNR on held-out images) and "
         "checkpoints carrying the measured latent scale."),
    ]:
        p = sub.add_parser(name, formatter_class=fmt, help=f"train {what} from a TOML config",
                           description=f"Train {what}. Runs unchanged under torchrun (DDP: gloo on CPU, nccl on "
                           f"GPU). {description}")
        p.add_argument("config", type=Path,
                       help="a TOML config file, or the name of a shipped one (src/unnoise/configs)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.lr=2e-4 (repeatable)")
        p.add_argument("--resume", default=None,
                       help="'latest' (newest complete checkpoint of the run) or a checkpoint path")
        p.add_argument("--out", default=None, help="run folder (overrides the config's out)")
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; None: cuda when present, else cpu")


def _add_distill(sub, fmt) -> None:
    """unnoise distill"""
    p = sub.add_parser("distill", formatter_class=fmt, help="a few-step student of a trained run",
                       description="Distil a trained run into a model that samples in a few network calls. "
                       "cd: a consistency model (Song et al. 2023, Alg. 2), one step of the teacher's ODE per "
                       "target, sampled in 1 call by the consistency sampler. progressive: progressive "
                       "distillation (Salimans & Ho 2022), each round halving the teacher's DDIM steps, one run per "
                       "round in OUT/steps_<N>. reflow: a 2-rectified flow (Liu et al. 2022) trained on (noise, "
                       "sample) pairs drawn by the teacher's ODE (a flow run, e.g. unnoise train fashion-flow). "
                       "Every student is a normal run: unnoise sample and unnoise eval read it with no extra "
                       "flags. Consistency training and 1-rectified flows need no teacher: unnoise train "
                       "fashion-ct, fashion-flow. Runs unchanged under torchrun.")
    p.add_argument("teacher", type=Path, help="the teacher: a run, checkpoint or model folder")
    p.add_argument("--method", required=True, choices=["cd", "progressive", "reflow"], help="the method")
    p.add_argument("--out", default=None, help="the student's run folder; None: TEACHER-METHOD")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="progressive: rounds, each halving the steps (the first teacher takes distill.teacher_steps, "
                   "64 unless set)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the student's config, e.g. --set train.steps=2000, --set "
                   "distill.solver=dpmpp_2s, --set distill.pairs=20000, --set distill.one_step=true (repeatable; "
                   "the [distill] keys are listed in the README)")
    p.add_argument("--resume", action="store_true", help="continue the student run(s) from their newest checkpoints")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; None: cuda when present, else cpu")


def cmd_distill(args) -> int:
    result = distill(args.teacher, args.method, args.overrides, out=args.out, rounds=args.rounds,
                     resume=args.resume, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        for run, summary in zip(result.runs, result.summaries, strict=True):
            print(f"{run}: trained {summary.trained} steps ({summary.step} in all) in {summary.seconds:.0f} s "
                  f"({summary.stopped})")
            _print_report(summary.report)
        print(f"sample it: unnoise sample {result.runs[-1]} --out samples.png")
    return 0


def _add_sample(sub, fmt) -> None:
    """unnoise sample"""
    p = sub.add_parser("sample", formatter_class=fmt, help="sample a trained checkpoint into a PNG grid or .npz",
                       description="Sample a checkpoint (EMA weights, loaded through safetensors only).")
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--sampler", default=None, help="sampler name; None: the run's [sample] sampler")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps; None: the run's")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="time-grid spacing; None: the run's")
    p.add_argument("--n", type=positive_int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--option", dest="options", type=option, action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the sampler, e.g. --option eta=0.5 (ddim), --option s_churn=10 (heun), "
                   "--option rtol=1e-4 --option max_nfe=500 (ode_adaptive: its tolerances and cap on network "
                   "calls); repeatable; `unnoise sample RUN --option x=0` lists the sampler's options")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="samples drawn at once; None: about 131,072 sample values per batch (bounded memory)")
    p.add_argument("--label", type=int, default=None,
                   help="class label to sample; None on a class-conditional model: sample i shows class i mod classes")
    p.add_argument("--guidance", type=finite, default=None,
                   help="classifier-free guidance scale (1 = plain conditional); None: the run's [sample] guidance")
    p.add_argument("--guidance-rescale", type=finite, default=None,
                   help="classifier-free guidance rescale phi in [0, 1] (Lin et al. 2024); None: the run's")
    p.add_argument("--guidance-interval", type=interval, default=None,
                   help="lo,hi: guide only for times t in (lo, hi] (Kynkaanniemi et al. 2024); None: the run's")
    p.add_argument("--classifier", type=Path, default=None,
                   help="a noise-aware classifier run for classifier guidance (unnoise train fashion-classifier)")
    p.add_argument("--classifier-scale", type=finite, default=1.0, help="classifier guidance scale")
    p.add_argument("--prompt", action="append", default=None,
                   help="text models: a prompt (repeat the option for several: sample i uses prompt i mod count; "
                   "\"\" is unconditional); None: the run's [sample] prompts")
    p.add_argument("--hint", type=Path, default=None,
                   help="a ControlNet's hint image (e.g. an edge map: white edges on black), or a super-resolution "
                   "model's low-resolution image; given to every sample")
    p.add_argument("--low", type=Path, default=None,
                   help="a super-resolution model: the base run whose samples it enlarges (a cascade; same "
                   "--label, --prompt and --seed; its own [sample] settings)")
    p.add_argument("--hint-noise", type=finite, default=None,
                   help="a super-resolution model: the level s in [0, 1] its input is noised to (conditioning "
                   "augmentation, Ho et al. 2022); None: the run's [sample] hint_noise")
    p.add_argument("--out", type=Path, default=Path("samples.png"),
                   help="output .png (an image grid, a scatter of points or line plots of signals, by the data's "
                   "kind; the settings in its text chunks) or .npz (samples (n, *sample shape), index, seed, "
                   "labels, prompts, and the settings as JSON)")
    p.add_argument("--columns", type=positive_int, default=None,
                   help="panels per row of the grid; None: one column per class for a class grid (sample i "
                   "shows class i mod classes), else about square")
    p.add_argument("--individual", type=Path, default=None, metavar="DIR",
                   help="also write each sample as DIR/<index>.png (images, or a plot per signal), each with "
                   "its own settings, label and prompt; DIR must be new or empty")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; None: cuda when present, else cpu")


def _add_export(sub, fmt) -> None:
    """unnoise export"""
    p = sub.add_parser("export", formatter_class=fmt, help="write a model folder to share: EMA weights and config",
                       description="Copy what sampling needs from a checkpoint, its EMA weights (ema.safetensors) and "
                       "config.json with the step, into a new folder (with a latent model's autoencoder in "
                       "DIR/autoencoder). unnoise sample, eval and Pipeline.load take the folder as they take a "
                       "run; resuming training needs the full checkpoint.")
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("folder", type=Path, help="the model folder to write (must not exist)")


def cmd_export(args) -> int:
    folder = export_model(args.checkpoint, args.folder)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"wrote {folder} ({size / 1e6:.1f} MB): unnoise sample {folder} --out samples.png")
    return 0


FEATURE_EPOCHS = {"mnist": 12,  # the small set needs more passes: 4 gave 95.0% test accuracy, 6 gave 97.0%
                  "emoji": 100}  # 1,225 images in 8 Unicode groups: 40 epochs gave 56.6%, 100 gave 64.0%


def _add_train_features(sub, fmt) -> None:
    """unnoise train-features"""
    defaults = FeatureConfig()
    p = sub.add_parser("train-features", formatter_class=fmt,
                       help="train the feature network unnoise eval's sample metrics use for a data set",
                       description="Train a small classifier on a data set's training split; its penultimate "
                       "layer is the feature space of FD, KID, precision/recall and the nearest-neighbour check "
                       "(unnoise eval --features FILE). Prints the test accuracy. Deterministic: the same seed, "
                       "torch build and --threads give the same bytes (the packaged files: --threads 2).")
    p.add_argument("--data", default=defaults.data, help="mnist, fashion-mnist, emoji or folder")
    p.add_argument("--path", default=None, help="folder: the image folder, one subfolder per class")
    p.add_argument("--image-size", type=positive_int, default=None, help="None: the data set's own")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"None: {FEATURE_EPOCHS['mnist']} for mnist's 4,500 images, {FEATURE_EPOCHS['emoji']} for "
                   f"the 1,225 emoji, {defaults.epochs} otherwise")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="images per step")
    p.add_argument("--lr", type=finite, default=defaults.lr, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the initialisation and the batches")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (part of what makes the bits)")
    p.add_argument("--out", type=Path, default=None,
                   help="the .safetensors to write; None: the packaged file of a built-in data set (for re-creating it)")
    p.add_argument("--check", action="store_true", help="train again and compare with --out bit for bit")


def cmd_train_features(args) -> int:
    if args.out is None and args.data not in PACKAGED:
        raise ValueError(f"--out is needed for {args.data!r}: only {', '.join(PACKAGED)} have a packaged file")
    torch.set_num_threads(args.threads)
    defaults = FeatureConfig()
    config = dataclasses.replace(defaults, data=args.data, path=args.path, image_size=args.image_size,
                                 epochs=args.epochs or FEATURE_EPOCHS.get(args.data, defaults.epochs),
                                 batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    out = args.out or packaged_path(args.data)
    start = time.perf_counter()
    net, info = train_feature_net(config, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            same = save_feature_net(net, info, Path(tmp) / "fresh.safetensors").read_bytes() == out.read_bytes()
        print(f"re-created in {seconds:.0f} s: {'identical to' if same else 'DIFFERENT from'} {out}")
        return 0 if same else 1
    save_feature_net(net, info, out)
    accuracy = "n/a (no test split)"
    if "test_accuracy" in info:
        accuracy = f"{100 * info['test_accuracy']:.2f}% on {info['test_images']} test images"
    print(f"trained on {info['train_images']} images in {seconds:.0f} s; accuracy {accuracy}; "
          f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


def _add_demo(sub, fmt) -> None:
    """unnoise demo"""
    p = sub.add_parser("demo", formatter_class=fmt,
                       help="train the demo U-Net on the embedded MNIST digits for a few minutes, then sample",
                       description="The main job: train the packaged mnist-demo config (a 1.2M-parameter U-Net, "
                       "EDM recipe) on the 4,500 training digits of MNIST-5k, which installs with unnoise, then "
                       "sample a grid with Heun's method and print where the files are.")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--minutes", type=finite, default=None, help="training time; None: the config's (about 4)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; None: cuda when present, else cpu")


def _add_eval(sub, fmt) -> None:
    """unnoise eval"""
    p = sub.add_parser("eval", formatter_class=fmt, help="sample-quality metrics, bits/dim and NFE sweeps",
                       description="Evaluate a checkpoint: Fréchet distance, KID, precision/recall, class "
                       "accuracy and a nearest-training-neighbour check in the features of unnoise's own "
                       "classifier for the data set (named in every metric: these are not FID numbers), "
                       "and NLL (probability-flow ODE) and VLB in bits/dim on test images; of an autoencoder "
                       "checkpoint: PSNR and the feature metrics of its reconstructions. Prints a table "
                       "and writes it as JSON into the checkpoint folder. --sweep runs every sampler at "
                       "NFE budgets 1..100 and writes a table, sweep.json and a Pareto plot sweep.png. "
                       + kinds_help())
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--metrics", default="fd,kid,pr,acc,nn",
                   help="image runs, comma-separated: fd, kid, pr (precision/recall, k = 3), acc (class accuracy of "
                   "conditional samples), nn (nearest training image), nll (ODE), vlb (variational bound), "
                   "straightness (S of the probability-flow paths, Liu et al. 2022: 0 for straight lines)")
    p.add_argument("--n", type=positive_int, default=None,
                   help=f"generated samples for the sample metrics; None: {EvalOptions.n} for images, "
                   + ", ".join(f"{k.n} for {name}" for name, k in KINDS.items()))
    p.add_argument("--sampler", default=None, help="sampler name; None: the run's [sample] sampler")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps; None: the run's")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="time-grid spacing; None: the run's")
    p.add_argument("--guidance", type=finite, default=None,
                   help="classifier-free guidance scale; None: the run's [sample] guidance")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--classifier", type=Path, default=None,
                   help="a noise-aware classifier run (unnoise train fashion-classifier) for classifier guidance "
                   "of the samples (not used by --sweep or on text models)")
    p.add_argument("--classifier-scale", type=finite, default=1.0,
                   help="classifier guidance scale (with --classifier; --guidance-scales sets it per point)")
    p.add_argument("--guidance-scales", type=floats, default=None,
                   help="comma-separated scales: FD, precision/recall and class accuracy at each, for "
                   "classifier-free guidance, or classifier guidance with --classifier; writes "
                   "guidance-<kind>.json and guidance.png (both kinds in one plot once both ran). On a "
                   "Fashion-MNIST text model: the share of samples of the prompted class, for training "
                   "captions and held-out paraphrases (prompts.json, prompts.png)")
    p.add_argument("--per-prompt", type=positive_int, default=20,
                   help="--guidance-scales on a text model: samples per prompt (50 prompts)")
    p.add_argument("--batch-size", type=positive_int, default=500,
                   help="samples (or test images) per batch; audio, video and molecule runs: the pipeline's bounded "
                   "batches unless given")
    _add_eval_likelihood(p)
    p.add_argument("--reference", choices=["test", "train", "all"], default=None,
                   help="the split the sample metrics compare with; None: the held-out split (test), or the "
                   "whole set where there is none. A text model is prompted with these images' captions (in a "
                   "seeded order) and scored against their classes; result files get -<split> in their names")
    p.add_argument("--features", default=None,
                   help="a feature network .safetensors (unnoise train-features; for an audio run one of "
                   "unnoise.audio_features); None: the packaged one for the run's data set")
    p.add_argument("--sweep", action="store_true",
                   help="every sampler at each NFE budget (FD and KID of --n samples each)")
    p.add_argument("--samplers", default=None, help="--sweep: comma-separated sampler names; None: all")
    p.add_argument("--budgets", type=int_list, default=None,
                   help="--sweep: comma-separated NFE budgets; None: 1,2,3,4,6,8,10,15,20,30,50,100")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; None: cuda when present, else cpu")


def _add_eval_likelihood(p) -> None:
    """unnoise eval: the options of the nll, vlb and straightness metrics."""
    p.add_argument("--nll-n", type=positive_int, default=256, help="test images for nll and vlb")
    p.add_argument("--path-n", type=positive_int, default=256, help="straightness: trajectories from noise")
    p.add_argument("--path-steps", type=positive_int, default=100,
                   help="straightness: DDIM steps of each trajectory, uniform in t (>= 2)")
    p.add_argument("--trace", choices=["exact", "rademacher", "gaussian"], default="rademacher",
                   help="nll: the divergence exactly (D backward passes) or by Hutchinson's estimator")
    p.add_argument("--rtol", type=finite, default=1e-5, help="nll: relative tolerance of the dopri5 solve")
    p.add_argument("--atol", type=finite, default=1e-5, help="nll: absolute tolerance of the dopri5 solve")
    p.add_argument("--vlb-steps", type=positive_int, default=None,
                   help="vlb: T; None: the schedule's own (1000 for DDPM), else 1000")


def _measure(args, steps: list[int], stochastic_steps: int, margin: float) -> tuple[GaussianMixture, Report]:
    mixture = GaussianMixture.random(args.dim, args.components, args.seed)
    schedule = get_schedule(args.schedule)
    bar = tqdm(total=None, desc="samplers", disable=None, leave=False)

    def progress(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update()

    report = measure(mixture, schedule, steps=steps, stochastic_steps=stochastic_steps, n=args.n,
                     spacing=args.spacing, seed=args.seed, margin=margin, progress=progress)
    bar.close()
    return mixture, report


def cmd_samplers(args) -> int:
    mixture, report = _measure(args, args.steps, args.stochastic_steps, args.margin)
    print(f"Gaussian mixture: dim {args.dim}, {args.components} components, seed {args.seed}; "
          f"schedule {args.schedule}, spacing {args.spacing}, {args.n} samples")
    print(format_report(report))
    curve = plot_convergence(report, args.out / "samplers_convergence.png")
    schedule = get_schedule(args.schedule)
    g = torch.Generator().manual_seed(args.seed)
    x_T, _ = mixture.marginal(schedule, 1.0).sample(args.n, g)
    times = time_grid(schedule, args.demo_steps, args.spacing)
    sets = {"true samples": mixture.sample(args.n, g)[0]}
    for name in ("ddim", "dpmpp_2m", "unipc", "ddpm"):
        sets[f"{name}, {args.demo_steps} steps"] = get_sampler(name)(
            mixture.denoiser(schedule), schedule, x_T, times, generator=torch.Generator().manual_seed(args.seed))
    scatter = plot_samples(sets, args.out / "samplers_samples.png")
    print(f"wrote {curve} (error against NFE) and {scatter} (samples side by side)")
    if args.check and not report_ok(report):
        failed = ", ".join(r.case.label for r in report.rows if not r.passed)
        print(f"check failed: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    overrides = [f"out={json.dumps(args.out)}"]
    if args.minutes is not None:
        if not (math.isfinite(args.minutes) and args.minutes > 0):
            raise ValueError(f"--minutes must be a finite number > 0, got {args.minutes}")
        overrides.append(f"train.max_seconds={60 * args.minutes}")
    config = load_config(packaged_config("mnist-demo"), overrides)
    if list_checkpoints(Path(config.out) / "checkpoints"):
        raise ValueError(f"{config.out} holds a demo run already: sample it (unnoise sample {config.out} --out more.png), "
                         "or give --out for a new one")
    print(f"training a U-Net on 4,500 MNIST digits for {config.train.max_seconds / 60:.1f} minutes "
          f"({'CUDA' if torch.cuda.is_available() else 'CPU'}); progress below, log in {config.out}/log.jsonl")
    summary = train(config, device=args.device)
    print(f"trained {summary.step} steps in {summary.seconds:.0f} s. Wrote:\n"
          f"  {summary.report['samples']}  ({config.sample.n} samples, {config.sample.sampler} "
          f"{config.sample.steps} steps)\n  {config.out}/loss.png  (loss curve)\n"
          f"  {summary.checkpoints[-1]}  (checkpoint: unnoise sample {config.out} --out more.png)")
    return 0


def packaged_config(name: str) -> Path:
    """A config shipped inside the package (src/unnoise/configs/NAME.toml)."""
    path = Path(str(files("unnoise") / "configs" / f"{name}.toml"))
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise ValueError(f"no config file {name!r} and no shipped config of that name; shipped: {', '.join(shipped)}")
    return path


def _run_config(args):
    overrides = list(args.overrides) + ([f"out={json.dumps(args.out)}"] if args.out else [])  # a TOML string
    is_file = args.config.suffix == ".toml" or args.config.is_file()
    return load_config(args.config if is_file else packaged_config(str(args.config)), overrides)


def cmd_train(args) -> int:
    """Any run: a diffusion model, a noise-aware classifier or an autoencoder (the network says which)."""
    summary = train(_run_config(args), resume=args.resume, device=args.device)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {summary.trained} steps ({summary.step} in all) in {summary.seconds:.0f} s ({summary.stopped}), "
              f"{summary.skipped} skipped; wrote {summary.out}/log.jsonl, loss.png and checkpoints "
              f"{', '.join(Path(p).name for p in summary.checkpoints)}")
        _print_report(summary.report)
    return 0


def _print_report(report: dict) -> None:
    """A run's final report (sample grid, accuracy, straightness, ...), a line an entry."""
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in value.items())
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


MAX_SAMPLES = 1_000_000  # per command: the samples are held in memory until written


def cmd_sample(args) -> int:
    if args.out.suffix not in (".png", ".npz") or args.out.is_dir():
        raise ValueError(f"--out must be a file name ending in .png or .npz, got {args.out}")
    if args.n > MAX_SAMPLES:
        raise ValueError(f"--n {args.n} is more than the {MAX_SAMPLES:,} samples one command holds in memory: "
                         "sample in parts (sample i depends only on --seed and i)")
    if args.individual is not None and args.individual.exists() and any(args.individual.iterdir()):
        raise ValueError(f"--individual {args.individual} holds files already: give a new or empty folder")
    check_writable(args.out)  # before the work, not after it
    if args.individual is not None:
        check_writable(args.individual / "000000.png")
    pipe = Pipeline.load(args.checkpoint, args.device, classifier=args.classifier)
    if args.individual is not None and pipe.modality not in SINGLES:
        raise ValueError(f"--individual writes one file per image, signal, clip, video or molecule; these samples "
                         f"are {pipe.modality}")
    chosen = dict(sampler=args.sampler, steps=args.steps, spacing=args.spacing, guidance=args.guidance,
                  guidance_rescale=args.guidance_rescale, guidance_interval=args.guidance_interval, seed=args.seed,
                  classifier_scale=args.classifier_scale if args.classifier else None,
                  options=dict(args.options) or None)
    settings = pipe.settings(**chosen)  # checked before any work
    labels, prompts = pipe.per_sample(args.n, label=args.label, prompts=args.prompt)
    x = _draw(pipe, args, dict(label=args.label, prompts=args.prompt, batch_size=args.batch_size, **chosen))
    bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
    if bad:
        raise ValueError(f"{bad} of {args.n} samples from {pipe.source} are not finite (NaN or Inf); nothing written")
    given = {k: str(v) for k, v in (("hint", args.hint), ("low", args.low)) if v is not None}
    lowres = hint_picture(pipe)[0] == "lowres"
    record = sample_record(pipe, settings, classifier=str(args.classifier) if args.classifier else None, **given,
                           **({"hint_noise": hint_level(pipe, args.hint_noise)} if lowres else {}))
    write_samples(pipe.modality, x, args.out, record, labels, prompts, columns=args.columns, classes=pipe.classes,
                  rendering=pipe.rendering)
    if args.individual is not None:
        write_individual(pipe.modality, x, args.individual, record, labels, prompts, rendering=pipe.rendering)
    also = f" and {args.n} files in {args.individual}" if args.individual is not None else ""
    print(f"wrote {args.out}{also} ({args.n} samples of shape {tuple(x.shape[1:])} from {pipe.source}, "
          f"step {pipe.step})")
    return 0


def _draw(pipe, args, options: dict) -> torch.Tensor:
    """The samples `unnoise sample` asks for: plain; a ControlNet's given its hint; a super-resolution
    model's given low-resolution images (--hint) or a base model's samples (--low, a cascade)."""
    channels, seed = pipe.interface.hint_channels, options.pop("seed")
    lowres = channels and pipe.config is not None and pipe.config.data.hint == "lowres"
    if args.low is not None:
        if args.hint is not None:
            raise ValueError("give --low (a base run to sample) or --hint (low-resolution images), not both")
        condition = {k: options.pop(k) for k in ("label", "prompts")}
        base = Pipeline.load(args.low, args.device)
        return cascade(base, pipe, args.n, hint_noise=args.hint_noise, seed=seed, sr_options=options,
                       **condition)[1]
    if channels and args.hint is None:
        raise ValueError("this model reads a hint image (a ControlNet or super-resolution model): give --hint"
                         + (" or --low" if lowres else ""))
    if args.hint is not None and not channels:
        raise ValueError("--hint given, but this model reads no hint image")
    cond = hint_condition(pipe, args.hint, args.n, hint_noise=args.hint_noise, seed=seed) if channels else None
    return pipe.sample(args.n, cond=cond, seed=seed, **options)


def _checkpoint_config(checkpoint):
    """A checkpoint's RunConfig, read from its config.json alone (not its weights)."""
    return run_config(checkpoint)


def _eval_given(args) -> dict:
    """The `unnoise eval` options given other than their defaults (by argument name), besides the
    checkpoint and the device: what a kind of run that takes only some of them checks."""
    defaults = vars(build_parser().parse_args(["eval", str(args.checkpoint)]))
    return {k: v for k, v in vars(args).items() if v != defaults[k] and k not in ("command", "checkpoint", "device")}


def _eval_autoencoder(args, config) -> int:
    """PSNR and the feature metrics of an autoencoder's reconstructions of the --reference split."""
    given = [f"--{k.replace('_', '-')}" for k in _eval_given(args) if k not in ("reference", "features")]
    if given:
        raise ValueError(f"{args.checkpoint} is an autoencoder: eval measures its reconstructions and takes only "
                         f"--reference, --features and --device, not {', '.join(given)}")
    ckpt = load_checkpoint(args.checkpoint, with_state=False)
    result = write_reconstructions(config, ckpt.ema, ckpt.path, args.device or "cpu", args.reference, args.features)
    print(format_table({"checkpoint": str(ckpt.path), "step": ckpt.step, **result}))
    return 0


def _text_model(config) -> bool:
    """Whether a run config is a text model's (whose prompt accuracy needs fashion-mnist's classes)."""
    text = config.model.interface.text
    if text and config.data.name != "fashion-mnist":
        raise ValueError(f"prompt accuracy needs a labelled data set with prompts per class (fashion-mnist); "
                         f"this text model was trained on {config.data.name}")
    return text


def cmd_eval(args) -> int:
    config = _checkpoint_config(args.checkpoint)
    kind = modality_of(config.data)
    if kind in KINDS:  # audio, video, molecules: their own measures, and only the options that apply
        report, written = evaluate_kind(args.checkpoint, kind, _eval_given(args), device=args.device)
        print(format_measured(report))
        print(f"\nwrote {written[0]} and {', '.join(p.name for p in written[1:])}")
        return 0
    for name in ("rtol", "atol"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(args, name)}")
    n = args.n or EvalOptions.n
    opts = EvalOptions(metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()), n=n,
                       sampler=args.sampler, steps=args.steps, spacing=args.spacing, guidance=args.guidance,
                       seed=args.seed, batch_size=args.batch_size, nll_n=args.nll_n, path_n=args.path_n,
                       path_steps=args.path_steps, trace=args.trace,
                       rtol=args.rtol, atol=args.atol, vlb_steps=args.vlb_steps, features=args.features,
                       classifier=str(args.classifier) if args.classifier else None,
                       classifier_scale=args.classifier_scale, reference=args.reference)
    if args.sweep and args.guidance_scales:
        raise ValueError("--sweep and --guidance-scales are separate jobs: give one")
    if config.model.interface.output == "autoencoder":
        return _eval_autoencoder(args, config)
    if args.guidance_scales and _text_model(config):
        prompts = fashion_prompts()
        rows, json_path, png = prompt_curve(args.checkpoint, opts, prompts, args.guidance_scales, args.per_prompt,
                                            device=args.device)
        print(format_prompts(rows))
        print(f"\n{args.per_prompt} samples for each of {len(prompts)} prompts per scale. wrote {json_path} and {png}")
        return 0
    if args.guidance_scales:
        rows, json_path, png = guidance_curve(args.checkpoint, opts, args.guidance_scales, device=args.device)
        print(format_guidance(rows))
        print(f"\n{n} samples per scale. wrote {json_path} and {png}")
        return 0
    if args.sweep:
        samplers = [s.strip() for s in args.samplers.split(",")] if args.samplers else list(SAMPLERS)
        budgets = tuple(args.budgets or SWEEP_NFE)
        rows, json_path, png = sweep(args.checkpoint, opts, samplers, budgets, device=args.device)
        print(format_sweep(rows, budgets))
        print(f"\nFD of {n} samples per cell; bold: the best sampler per budget. wrote {json_path} and {png}")
        return 0
    result, path = evaluate(args.checkpoint, opts, device=args.device)
    print(format_table(result))
    print(f"\nwrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"samplers": cmd_samplers, "demo": cmd_demo, "train": cmd_train, "distill": cmd_distill,
                "sample": cmd_sample, "edit": cmd_edit, "invert": cmd_invert, "interpolate": cmd_interpolate,
                "eval": cmd_eval, "train-autoencoder": cmd_train, "export": cmd_export,
                "train-features": cmd_train_features, "list": cmd_list, "serve": cmd_serve}
    try:
        return commands[args.command](args)
    except ValueError as err:  # bad values found past argument parsing: one line, no traceback
        return _fail(args, str(err), 2)
    except OSError as err:  # the disk is full, a folder read-only, a file missing: say which and why
        where = f": {err.filename}" if err.filename else ""
        return _fail(args, f"{err.strerror or err}{where}", 1)
    except TrainingStopped as err:
        return _fail(args, str(err), 1)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)
    except Exception as err:  # noqa: BLE001 - a defect of ours: still one line, the traceback on request
        if os.environ.get("UNNOISE_TRACEBACK"):
            raise
        return _fail(args, f"internal error {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                     "(set UNNOISE_TRACEBACK=1 for the traceback, and please report it)", 1)


def _fail(args, message: str, code: int) -> int:
    print(f"unnoise {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
