"""The editing commands: `unnoise edit` (SDEdit, inpainting), `unnoise invert` and `unnoise interpolate`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from unnoise.cli_args import SEED_HELP, finite, positive_int
from unnoise.edit import INPAINT_SAMPLER, INVERSIONS, inpaint, interpolate, invert, reconstruct, sdedit
from unnoise.files import check_writable, write_atomic
from unnoise.grids import SPACINGS
from unnoise.inputs import box_mask, read_image, read_mask
from unnoise.outputs import sample_record, write_samples
from unnoise.pipeline import Pipeline
from unnoise.samplers.inversion import ONE_STEP_DETERMINISTIC


def add_edit(sub, fmt) -> None:
    """unnoise edit"""
    p = sub.add_parser("edit", formatter_class=fmt, help="edit an image: SDEdit (image to image) or inpainting",
                       description="Edit an image with a trained model. sdedit (Meng et al. 2022): noise the image "
                       "--strength of the way along the run's noise levels and sample back from there. inpaint: "
                       "generate the region a mask or box marks and keep the rest, by the replacement method "
                       "(--resample 1) or RePaint (Lugmayr et al. 2022: --resample r > 1 walks every --jump steps "
                       "r times). Writes --n edits as a grid.")
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--image", type=Path, required=True, help="the image (resized to the model's size when it differs)")
    p.add_argument("--mode", choices=["sdedit", "inpaint"], default="sdedit", help="what to do")
    p.add_argument("--strength", type=finite, default=0.5,
                   help="sdedit: how far along the run's noise levels (as its spacing spaces them) the image is "
                   "noised, in (0, 1]: near 0 keeps it, 1 ignores it")
    p.add_argument("--mask", type=Path, default=None, help="inpaint: a mask image, white where pixels are generated")
    p.add_argument("--box", default=None, metavar="L,T,R,B",
                   help="inpaint: the region to generate, in pixels (right and bottom exclusive), instead of --mask")
    p.add_argument("--resample", type=positive_int, default=1, help="inpaint: RePaint's r (1: replacement)")
    p.add_argument("--jump", type=positive_int, default=10, help="inpaint: RePaint's jump length j, in steps")
    p.add_argument("--n", type=positive_int, default=8, help="edits of the image, each from its own noise")
    p.add_argument("--sampler", default=None, help="sampler; None: sdedit the run's, inpaint ddpm (RePaint's)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="sampler steps (sdedit: from t0 down; inpaint: of the whole descent); None: the run's")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="time-grid spacing; None: the run's")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--label", type=int, default=None,
                   help="class label; None on a class-conditional model: edit i is guided to class i mod classes")
    p.add_argument("--prompt", action="append", default=None, help="text models: a prompt (repeatable)")
    p.add_argument("--guidance", type=finite, default=None, help="classifier-free guidance scale; None: the run's")
    p.add_argument("--out", type=Path, default=Path("edits.png"), help="output .png grid or .npz (with the settings)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; None: cuda when present, else cpu")


def cmd_edit(args) -> int:
    if args.out.suffix not in (".png", ".npz") or args.out.is_dir():
        raise ValueError(f"--out must be a file name ending in .png or .npz, got {args.out}")
    if args.mode == "inpaint" and (args.mask is None) == (args.box is None):
        raise ValueError("--mode inpaint needs a --mask or a --box (one of them)")
    if args.mode == "sdedit" and (args.mask is not None or args.box is not None):
        raise ValueError("--mask and --box are for --mode inpaint")
    if args.mode == "sdedit" and not 0 < args.strength <= 1:
        raise ValueError(f"--strength must lie in (0, 1], got {args.strength:g}")
    check_writable(args.out)
    pipe = Pipeline.load(args.checkpoint, args.device)
    shape = data_shape(pipe)
    images = read_image(args.image, shape).expand(args.n, *shape)
    chosen = dict(sampler=args.sampler, steps=args.steps, spacing=args.spacing, guidance=args.guidance, seed=args.seed)
    given = dict(label=args.label, prompts=args.prompt, progress=None, **chosen)
    if args.mode == "sdedit":
        settings = pipe.settings(**chosen)
        x = sdedit(pipe, images, args.strength, **given)
        extra = {"strength": args.strength}
    else:
        keep = read_mask(args.mask, shape) if args.mask is not None else box_mask(args.box, shape)
        settings = pipe.settings(**{**chosen, "sampler": args.sampler or INPAINT_SAMPLER})
        x = inpaint(pipe, images, keep, resample=args.resample, jump=args.jump, **given)
        extra = {"mask": str(args.mask) if args.mask else None, "box": args.box, "resample": args.resample,
                 "jump": args.jump}
    labels, prompts = pipe.per_sample(args.n, label=args.label, prompts=args.prompt)
    record = sample_record(pipe, settings, mode=args.mode, image=str(args.image), **extra)
    write_samples(pipe.modality, x, args.out, record, labels, prompts, classes=pipe.classes,
                  rendering=pipe.rendering)
    print(f"wrote {args.out} ({args.n} {args.mode} edits of {args.image} by {pipe.source}, step {pipe.step})")
    return 0


def _inversion_options(p) -> None:
    """The grid and condition an inversion and its way back share (unnoise invert, interpolate)."""
    p.add_argument("--sampler", choices=list(ONE_STEP_DETERMINISTIC), default="ddim",
                   help="the deterministic sampler that maps the noise back to the image")
    p.add_argument("--steps", type=positive_int, default=50, help="its steps")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="its time-grid spacing; None: the run's")
    p.add_argument("--label", type=int, default=None,
                   help="class label; None on a class-conditional model: its unconditional branch")
    p.add_argument("--prompt", default=None, help="text models: the prompt (\"\" is unconditional)")
    p.add_argument("--guidance", type=finite, default=None, help="classifier-free guidance scale; None: the run's "
                   "(with --label or --prompt), else unconditional")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N; None: cuda when present, else cpu")


def add_invert(sub, fmt) -> None:
    """unnoise invert"""
    p = sub.add_parser("invert", formatter_class=fmt, help="the noise that a deterministic sampler maps to an image",
                       description="Invert an image: find x_T from which --sampler on the grid of --steps returns "
                       "it. exact: every sampler step solved by fixed-point iteration (round trip at the float "
                       "precision); ddim: explicit DDIM inversion (Song et al. 2021), off by O(1/steps). Writes "
                       "x_T and the settings to an .npz that unnoise interpolate reads.")
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--image", type=Path, required=True, help="the image (resized to the model's size when it differs)")
    p.add_argument("--method", choices=list(INVERSIONS), default="exact", help="how to invert")
    p.add_argument("--tol", type=finite, default=1e-5, help="exact: RMS residual of each step's solve")
    p.add_argument("--max-iter", type=positive_int, default=50, help="exact: fixed-point updates per step at most")
    p.add_argument("--out", type=Path, default=Path("inverted.npz"), help="the .npz to write (z, settings)")
    p.add_argument("--reconstruction", type=Path, default=None, help="also write the round trip as this .png")
    _inversion_options(p)


def add_interpolate(sub, fmt) -> None:
    """unnoise interpolate"""
    p = sub.add_parser("interpolate", formatter_class=fmt, help="samples between two images' inverted noises",
                       description="Invert two images exactly (or read two .npz from unnoise invert) and sample "
                       "--frames points on the great circle between their noises (slerp, Song et al. 2021 §5.3); "
                       "the first and last frames return the images.")
    p.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("start", type=Path, help="an image, or an .npz written by unnoise invert (same grid options)")
    p.add_argument("end", type=Path, help="the other image or .npz")
    p.add_argument("--frames", type=positive_int, default=8, help="frames, the two ends included (>= 2)")
    p.add_argument("--out", type=Path, default=Path("interpolation.png"), help="output .png strip or .npz")
    _inversion_options(p)


def _inversion_settings(args) -> dict:
    return dict(sampler=args.sampler, steps=args.steps, spacing=args.spacing, label=args.label,
                prompts=None if args.prompt is None else [args.prompt], guidance=args.guidance)


def _inverted(pipe, path: Path, args, shape) -> torch.Tensor:
    """x_T of an image file (inverted exactly), or the z an .npz of unnoise invert holds."""
    if path.suffix != ".npz":
        return invert(pipe, read_image(path, shape), **_inversion_settings(args))[0]
    try:
        with np.load(path, allow_pickle=False) as f:
            z, recorded = torch.from_numpy(f["z"]), json.loads(str(f["settings"]))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not an .npz written by unnoise invert ({err})") from None
    mine = {**{k: v for k, v in _inversion_settings(args).items() if k != "prompts"}, "prompt": args.prompt,
            "step": pipe.step}
    differ = {k: (recorded.get(k), v) for k, v in mine.items() if recorded.get(k) != v}  # None is a setting too
    if tuple(z.shape) != (1, *pipe.interface.sample_shape) or differ:
        raise ValueError(f"{path} was inverted with other settings or shape ({differ or tuple(z.shape)}): "
                         "invert again with these options")
    return z


def cmd_invert(args) -> int:
    if args.out.suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {args.out}")
    if not args.tol > 0:
        raise ValueError(f"--tol must be > 0, got {args.tol:g}")
    if args.reconstruction is not None and args.reconstruction.suffix not in (".png", ".npz"):
        raise ValueError(f"--reconstruction must end in .png or .npz, got {args.reconstruction}")
    if args.method == "ddim" and args.sampler != "ddim":
        raise ValueError(f"--method ddim inverts the ddim sampler; for --sampler {args.sampler} use --method exact")
    check_writable(args.out)
    if args.reconstruction is not None:
        check_writable(args.reconstruction)
    pipe = Pipeline.load(args.checkpoint, args.device)
    image = read_image(args.image, data_shape(pipe))
    settings = _inversion_settings(args)
    z, report = invert(pipe, image, method=args.method, tol=args.tol, max_iter=args.max_iter, **settings)
    back = reconstruct(pipe, z, **settings)
    rms = (back - image).square().mean().sqrt().item()
    record = {"model": pipe.source, "step": pipe.step, "image": str(args.image), "method": args.method,
              **{k: v for k, v in settings.items() if k != "prompts"}, "prompt": args.prompt,
              "round_trip_rms": rms, "max_step_residual": max(report.residuals) if report else None}
    write_atomic(args.out, lambda tmp: np.savez(tmp, z=z.numpy(), settings=json.dumps(record)))
    if args.reconstruction is not None:
        write_samples(pipe.modality, back, args.reconstruction, record, rendering=pipe.rendering)
    psnr = 10 * math.log10(4 / max(rms * rms, 1e-30))  # data in [-1, 1]: peak-to-peak 2
    print(f"wrote {args.out}: x_T of {args.image} by {args.method} inversion, {args.steps} {args.sampler} steps; "
          f"round trip RMS {rms:.3g} (PSNR {psnr:.1f} dB)")
    return 0


def cmd_interpolate(args) -> int:
    if args.out.suffix not in (".png", ".npz") or args.frames < 2:
        raise ValueError(f"--out must end in .png or .npz and --frames be >= 2, got {args.out}, {args.frames}")
    check_writable(args.out)
    pipe = Pipeline.load(args.checkpoint, args.device)
    shape = data_shape(pipe)
    z0, z1 = (_inverted(pipe, path, args, shape) for path in (args.start, args.end))
    x = interpolate(pipe, z0, z1, args.frames, **_inversion_settings(args))
    record = {"model": pipe.source, "step": pipe.step, "start": str(args.start), "end": str(args.end),
              **{k: v for k, v in _inversion_settings(args).items() if k != "prompts"}, "prompt": args.prompt}
    write_samples(pipe.modality, x, args.out, record, columns=args.frames, rendering=pipe.rendering)
    print(f"wrote {args.out} ({args.frames} frames from {args.start} to {args.end})")
    return 0


def data_shape(pipe) -> tuple[int, ...]:
    """The shape of one sample in data space (a latent model's decoded images)."""
    return tuple(pipe.decode(torch.zeros(1, *pipe.interface.sample_shape, device=pipe.device)).shape[1:])
