"""The `unnoise` command line: `unnoise samplers`, `unnoise demo`.

Every option is listed with its default by `unnoise <command> --help`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from unnoise.convergence import Report, format_report, measure, report_ok
from unnoise.grids import SPACINGS, time_grid
from unnoise.oracle import GaussianMixture
from unnoise.schedules import PRESETS, get_schedule


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if len(values) < 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need at least two step counts >= 1, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _schedule_name(text: str) -> str:
    try:
        get_schedule(text)
    except ValueError as err:  # names the presets
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _oracle_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim", type=_positive_int, default=2, help="dimension of the Gaussian-mixture oracle")
    p.add_argument("--components", type=_positive_int, default=8, help="number of mixture components")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixture, the initial noise and the samplers")
    p.add_argument("--schedule", type=_schedule_name, default="ddpm",
                   help=f"noise schedule: {', '.join(PRESETS)}, optionally with the suffix -ztsnr")
    p.add_argument("--spacing", choices=SPACINGS, default="logsnr", help="time-grid spacing")
    p.add_argument("--n", type=_positive_int, default=2000, help="samples per run")
    p.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNG figures")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="unnoise", formatter_class=fmt,
                                     description="Diffusion models on one mathematical core.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("samplers", formatter_class=fmt,
                       help="measure every sampler against the exact Gaussian-mixture denoiser",
                       description="Measure every sampler on the exact Gaussian-mixture oracle: NFE, endpoint "
                       "error against a tight reference solve of the same ODE from the same noise, fitted "
                       "convergence order, and sliced-Wasserstein distance to true samples beside its "
                       "noise floor. Writes a log-log error-vs-NFE plot.")
    _oracle_options(p)
    p.add_argument("--steps", type=_int_list, default=[16, 32, 64, 128, 256, 512],
                   help="comma-separated step counts for the deterministic samplers")
    p.add_argument("--stochastic-steps", type=_positive_int, default=1024,
                   help="step count at which stochastic samplers are compared with true samples")
    p.add_argument("--margin", type=float, default=1.5,
                   help="a stochastic sampler passes if its distance <= margin x the noise floor")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 if any sampler misses its theoretical order by more than 0.2 "
                   "or its distribution error exceeds margin x noise floor")

    p = sub.add_parser("demo", formatter_class=fmt,
                       help="sample a 2-D Gaussian mixture with several samplers; print a table, write PNGs",
                       description="The main job until training lands: sample the exact denoiser of a 2-D "
                       "Gaussian mixture with several samplers at a small NFE, compare with true samples, "
                       "and measure every sampler's convergence order.")
    _oracle_options(p)
    p.add_argument("--demo-steps", type=_positive_int, default=10, help="steps for the side-by-side samples")
    return parser


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
    from unnoise.plots import plot_convergence

    _, report = _measure(args, args.steps, args.stochastic_steps, args.margin)
    print(f"Gaussian mixture: dim {args.dim}, {args.components} components, seed {args.seed}; "
          f"schedule {args.schedule}, spacing {args.spacing}, {args.n} samples")
    print(format_report(report))
    path = plot_convergence(report, args.out / "samplers_convergence.png")
    print(f"wrote {path}")
    if args.check and not report_ok(report):
        failed = ", ".join(r.case.label for r in report.rows if not r.passed)
        print(f"check failed: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    from unnoise.plots import plot_convergence, plot_samples
    from unnoise.samplers import get_sampler

    mixture, report = _measure(args, [16, 32, 64, 128], 512, 1.5)
    schedule = get_schedule(args.schedule)
    g = torch.Generator().manual_seed(args.seed)
    x_T, _ = mixture.marginal(schedule, 1.0).sample(args.n, g)
    times = time_grid(schedule, args.demo_steps, args.spacing)
    sets = {"true samples": mixture.sample(args.n, g)[0]}
    for name in ("ddim", "dpmpp_2m", "unipc", "ddpm"):
        sets[f"{name}, {args.demo_steps} steps"] = get_sampler(name)(
            mixture.denoiser(schedule), schedule, x_T, times, generator=torch.Generator().manual_seed(args.seed))
    print(format_report(report))
    samples_png = plot_samples(sets, args.out / "demo_samples.png")
    curve_png = plot_convergence(report, args.out / "demo_convergence.png")
    print(f"wrote {samples_png} (samples side by side) and {curve_png} (error against NFE)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"samplers": cmd_samplers, "demo": cmd_demo}[args.command](args)
    except ValueError as err:  # bad values found past argument parsing: one line, no traceback
        print(f"unnoise {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
