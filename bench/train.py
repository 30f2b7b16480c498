"""Training throughput of our trainer against the bare step and diffusers, and DDIM sampling overhead.

Training, batch 64 of 3x32x32 (MNIST-5k padded to 32x32, grey replicated to RGB), img/s:

    (a) `unnoise.training.loop.train` with the `unet_base` U-Net and the EDM recipe (the defaults); img/s read
        from the run's log.jsonl, one line a step, the first `--warmup` steps of each run dropped
    (b) the same network and EDM loss written bare: forward, loss, backward, AdamW step - no data
        pipeline, seeding, clipping, EMA, logging or checkpoints; its loss is checked against (a)'s
    (c) diffusers' `UNet2DModel` in the loop of diffusers' examples/unconditional_image_generation/
        train_unconditional.py, stripped as (b) is: `DDPMScheduler.add_noise`, eps MSE, AdamW

each in float32 and with bfloat16 autocast. The loops alternate, their order reversed every round;
a value is the mean img/s over `--steps` steps, and ratios are medians of the per-round ratios. Forward
GFLOP per image come from `torch.utils.flop_counter.FlopCounterMode`, plus the attention products it
does not see on CPU. "Effective GFLOP/s" = img/s x 3 x forward GFLOP/img (forward + backward ~ 3x).

Sampling, 16 images, 50 DDIM steps, float32, with diffusers' UNet2DModel as an eps network: ours
(`ddim` over `NetworkDenoiser`) against `DDPMPipeline` with `DDIMScheduler`, both against the bare
network calls (50 forwards); forward hooks also time the network inside each run.

Run:  python bench/train.py            (~6 min on 2 quiet cores; re-executes itself with tcmalloc)
      python bench/train.py --quick    (smoke test: batch 8, one round, no doc update)
"""

from __future__ import annotations

from common import (  # bench/common.py
    check_load,
    machine,
    preload_tcmalloc,
    publish,
    spread,
)

if __name__ == "__main__":
    preload_tcmalloc()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402
from samplers import SCHEDULER_CONFIG  # noqa: E402  (bench/samplers.py, this script's folder)
from torch import Tensor, nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

from unnoise.config import RunConfig, load_config  # noqa: E402
from unnoise.data import DataConfig, load_dataset  # noqa: E402
from unnoise.grids import time_grid  # noqa: E402
from unnoise.losses import DiffusionLoss  # noqa: E402
from unnoise.models import build_model, count_parameters  # noqa: E402
from unnoise.objectives import DiffusionObjective, RunContext  # noqa: E402
from unnoise.parameterization import EpsPrediction, NetworkDenoiser, get_parameterization  # noqa: E402
from unnoise.samplers import ddim  # noqa: E402
from unnoise.schedules import from_alphas_cumprod, get_schedule  # noqa: E402
from unnoise.training.loop import Batches, seeded_generator  # noqa: E402
from unnoise.training.ema import EMA  # noqa: E402
from unnoise.training.loop import train  # noqa: E402

CONV_PEAK = {"fp32": 430.0, "bf16": 850.0}  # GFLOP/s of a large convolution on this machine, measured before the project began
DATA = {"name": "mnist", "image_size": 32, "channels": 3, "fit": "pad"}  # the only built-in 3x32x32 set


def diffusers_unet() -> UNet2DModel:
    """The issue's peer: ~4.4M parameters, ~2.05 GFLOP per 3x32x32 forward by FlopCounterMode."""
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(64, 128, 128), down_block_types=("DownBlock2D", "AttnDownBlock2D",
                                                                            "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def trainer_tree(batch: int, steps: int, bf16: bool, out: str) -> dict:
    """Run (a): the defaults (EDM schedule, preconditioning, loss), a log line every step, no sample
    grid worth the name, and the one checkpoint every run writes at its end (after the last log line)."""
    return {"data": DATA, "model": {"preset": "unet_base"}, "out": out,
            "train": {"steps": steps, "batch_size": batch, "bf16": bf16, "log_every": 1, "checkpoint_every": 0},
            "sample": {"n": 1, "steps": 1, "sampler": "euler"}}


def forward_gflop(model: nn.Module, *inputs) -> tuple[float, float]:
    """(GFLOP per image as FlopCounterMode counts a forward, the same plus attention). On CPU, SDPA
    runs `_scaled_dot_product_flash_attention_for_cpu`, which has no formula: we map it to torch's own."""
    counts = []
    for mapping in ({}, {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                         lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}):
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(*inputs)
        counts.append(counter.get_total_flops() / inputs[0].shape[0] / 1e9)
    return counts[0], counts[1]


# ---------------------------------------------------------------------------------------------
# Training steps


def edm_loss(net: Callable, x0: Tensor, sigma: Tensor, noise: Tensor, sigma_data: float) -> Tensor:
    """EDM's loss with weight lambda(sigma) = 1 / c_out^2, i.e. uniform on F (Karras et al. 2022,
    eq. 2 and 8, preconditioning from Table 1): mean |F(c_in x, c_noise) - (x0 - c_skip x) / c_out|^2."""
    s = sigma.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    x = x0 + s * noise  # alpha = 1 on the EDM path
    norm = (s**2 + sigma_data**2).sqrt()
    c_skip, c_out, c_in = sigma_data**2 / norm**2, s * sigma_data / norm, 1 / norm
    out = net(c_in * x, sigma.log() / 4)  # c_noise = ln(sigma) / 4
    return (out.float() - (x0 - c_skip * x) / c_out).square().mean()


def bare_edm_step(model: nn.Module, x0: Tensor, bf16: bool, config: RunConfig) -> Callable[[], None]:
    """(b): lognormal sigma (Karras et al. 2022, §5), the loss, backward, AdamW as `unnoise.training.loop` builds it."""
    loss_cfg, schedule = config.loss, get_schedule(config.diffusion.schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay,
                                  fused=True)
    lo, hi = schedule.sigma_tilde(schedule.t_min).item(), schedule.sigma_tilde(1.0).item()  # EDM's sigma range

    def step():
        sigma = (loss_cfg.p_mean + loss_cfg.p_std * torch.randn(x0.shape[0])).exp().clamp(lo, hi)  # (B,)
        noise = torch.randn_like(x0)  # keeps x0's memory format
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = edm_loss(model, x0, sigma, noise, loss_cfg.sigma_data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def diffusers_step(unet: UNet2DModel, x0: Tensor, bf16: bool) -> Callable[[], None]:
    """(c): the example's step without its clipping, EMA and learning-rate schedule (which would only
    slow it), AdamW with the example's defaults; accelerate upcasts autocast outputs to float32."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)

    def step():
        noise = torch.randn(x0.shape)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],))
        noisy = scheduler.add_noise(x0, noise, timesteps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = unet(noisy, timesteps).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _parameterization(config: RunConfig):
    return get_parameterization(config.diffusion.parameterization, config.diffusion.sigma_data)


def check_bare_loss(model: nn.Module, config: RunConfig, x0: Tensor) -> float:
    """Relative difference of (b)'s loss from the trainer's `DiffusionLoss` on the same times and noise."""
    loss_fn = DiffusionLoss(get_schedule(config.diffusion.schedule), _parameterization(config), config.loss)
    g = seeded_generator(0, 2, 1)
    t = loss_fn.sample_times(x0.shape[0], g)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        ours = loss_fn(model, x0, None, noise=noise, t=t).mean()
        bare = edm_loss(model, x0, loss_fn.schedule.sigma_tilde(t).float(), noise, config.loss.sigma_data)
    diff = abs(ours.item() - bare.item()) / abs(ours.item())
    if diff > 1e-4:
        raise RuntimeError(f"the bare EDM loss {bare.item():.6g} differs from DiffusionLoss {ours.item():.6g}")
    return diff


@dataclass
class Contender:
    """One timed loop: measure(n) runs n units (training steps, or sampling runs) and returns a value."""

    key: str  # "a", "b", "c" or a variant's name
    precision: str  # "fp32" or "bf16"
    label: str
    measure: Callable[[int], Any]
    gflop: float = 0.0  # forward GFLOP per image (with attention)


def stepper(step: Callable[[], None], batch: int, warmup: int,
            context: Callable[[], Any] = contextlib.nullcontext) -> Callable[[int], float]:
    """img/s of n calls of step (after `warmup` calls now, which also build the optimiser state)."""
    with context():
        for _ in range(warmup):
            step()

    def measure(n: int) -> float:
        with context():
            start = time.perf_counter()
            for _ in range(n):
                step()
            return n * batch / (time.perf_counter() - start)

    return measure


def trainer_measure(batch: int, warmup: int, bf16: bool, workdir: Path) -> Callable[[int], float]:
    """img/s of (a) over n steps: one fresh `train` run of warmup + n steps, rates from its log."""

    def measure(n: int) -> float:
        out = Path(tempfile.mkdtemp(dir=workdir))
        train(load_config(None, tree=trainer_tree(batch, warmup + n, bf16, str(out))), quiet=True)
        records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        if any(r.get("nonfinite") for r in records):
            raise RuntimeError(f"run (a) skipped non-finite steps: {records}")
        rates = [r["examples_per_s"] for r in records][warmup:]
        return len(rates) / sum(1 / r for r in rates)  # images / seconds over steps of equal batch

    return measure


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, *args, **kwargs) -> Tensor:
    """softmax(q k^T / sqrt(d)) v as three ops (Vaswani et al. 2017, eq. 1), for the variant below."""
    return ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1) @ v


@contextlib.contextmanager
def attention_as_matmuls():
    """Route F.scaled_dot_product_attention (which our Attention calls) through explicit_attention."""
    sdpa, F.scaled_dot_product_attention = F.scaled_dot_product_attention, explicit_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


def training_contenders(args, workdir: Path) -> tuple[list[Contender], dict, nn.Module]:
    """The loops, facts about the two networks, and (b)'s first network (its gradients serve trainer_pieces)."""
    config = load_config(None, tree=trainer_tree(args.batch, 1, False, str(workdir)))
    x0 = load_dataset(DataConfig(**DATA)).batch(torch.arange(args.batch))[0]  # (B, 3, 32, 32) in [-1, 1]
    t_probe = torch.rand(2)
    ours_net, peer = build_model(config.model), diffusers_unet()
    info = {"ours": (count_parameters(ours_net), *forward_gflop(ours_net, x0[:2], t_probe)),
            "diffusers": (count_parameters(peer), *forward_gflop(peer, x0[:2], 999 * t_probe)),
            "loss check": check_bare_loss(ours_net, config, x0[:8])}
    g_ours, g_peer = info["ours"][2], info["diffusers"][2]

    def network():  # the trainer's initial weights (it seeds with train.seed = 0)
        torch.manual_seed(config.train.seed)
        return build_model(config.model)

    contenders, bare_models = [], []
    for precision in args.precisions:
        bf16 = precision == "bf16"
        bare_models.append(network())
        contenders += [
            Contender("a", precision, "(a) unnoise trainer", trainer_measure(args.batch, args.warmup, bf16, workdir),
                      g_ours),
            Contender("b", precision, "(b) bare step, same network and loss",
                      stepper(bare_edm_step(bare_models[-1], x0, bf16, config), args.batch, args.warmup), g_ours),
            Contender("c", precision, "(c) diffusers UNet2DModel, example loop",
                      stepper(diffusers_step(diffusers_unet(), x0, bf16), args.batch, args.warmup), g_peer)]
        for name, make in variants().items() if args.variants else ():
            step, context = make(network(), x0, bf16, config)
            contenders.append(Contender(name, precision, name, stepper(step, args.batch, args.warmup, context), g_ours))
    return contenders, info, bare_models[0]


def variants() -> dict[str, Callable]:
    """Candidate speed-ups of (b), each a maker of (step, context to run it in); only with --variants."""
    def matmul_attention(model, x0, bf16, config):
        return bare_edm_step(model, x0, bf16, config), attention_as_matmuls

    def channels_last(model, x0, bf16, config):
        model.to(memory_format=torch.channels_last)
        step = bare_edm_step(model, x0.contiguous(memory_format=torch.channels_last), bf16, config)
        return step, contextlib.nullcontext

    return {"(b) + attention as matmuls": matmul_attention, "(b) + channels_last": channels_last}


def alternate(contenders: list[Contender], rounds: int, n: int) -> list[list[Any]]:
    """measure(n) of every contender, once a round; the order reverses every round; gc paused."""
    results: list[list[Any]] = [[] for _ in contenders]
    for r in range(rounds):
        for j in range(len(contenders)) if r % 2 == 0 else reversed(range(len(contenders))):
            gc.collect()
            gc.disable()
            try:
                results[j].append(contenders[j].measure(n))
            finally:
                gc.enable()
        print(f"  round {r + 1}/{rounds} done ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Where the trainer's extra time goes


def median_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def trainer_pieces(model: nn.Module, batch: int, reps: int) -> list[tuple[str, float, float]]:
    """(piece, ms in (a), ms in (b)) for what (a) does around the step; model holds (b)'s gradients."""
    config = load_config(None, tree=trainer_tree(batch, 1, False, "unused"))
    objective = DiffusionObjective(config, RunContext(torch.device("cpu"), torch.float32, Path("unused")))
    batches = Batches(len(objective.dataset), batch, 0)
    loss_fn = objective.loss_fn

    def draw():
        return objective.draw(*batches.next(), 0)

    drawn = draw()
    x0, t, noise = drawn["x0"], drawn["t"], drawn["noise"]
    out = torch.zeros(x0.shape, requires_grad=True)  # a zero-cost network's output
    sigma = loss_fn.schedule.sigma_tilde(t).float()
    ema = EMA(model)
    params = [p for p in model.parameters() if p.grad is not None]
    return [
        ("batch, times and noise (`DiffusionObjective.draw`)", median_ms(draw, reps),
         median_ms(lambda: (torch.randn(batch), torch.randn(x0.shape)), reps)),
        ("loss around a zero-cost network, forward + backward",
         median_ms(lambda: loss_fn(lambda *a: out, x0, None, noise=noise, t=t).mean().backward(), reps),
         median_ms(lambda: edm_loss(lambda *a: out, x0, sigma, noise, config.loss.sigma_data).backward(), reps)),
        ("gradient clipping (`clip_grad_norm_`)", median_ms(lambda: nn.utils.clip_grad_norm_(params, 1.0), reps), 0.0),
        ("EMA update (`EMA.update`)", median_ms(lambda: ema.update(model, 0.999), reps), 0.0),
    ]


def adamw_times(model: nn.Module, reps: int) -> dict[str, float]:
    """ms of one AdamW step over the model's parameters (with gradients), by implementation."""
    times = {}
    for name, kwargs in (("for-loop (default on CPU)", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9, **kwargs)
        times[name] = median_ms(optimizer.step, reps)
    return times


# ---------------------------------------------------------------------------------------------
# Sampling


class NetworkClock:
    """Seconds spent inside a module's forward, summed through forward hooks."""

    def __init__(self, module: nn.Module):
        self.seconds, self._start = 0.0, 0.0
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._leave)

    def _enter(self, *_) -> None:
        self._start = time.perf_counter()

    def _leave(self, *_) -> None:
        self.seconds += time.perf_counter() - self._start


def sampling_contenders(args) -> tuple[list[Contender], Callable[[], float]]:
    """Bare calls, ours, diffusers' pipeline (each measure(n) -> (wall s, s inside the network) of one
    run), and a function giving the max difference of ours from the pipeline's images in [0, 1], in their
    last runs."""
    torch.manual_seed(0)
    unet = diffusers_unet().eval()
    clock = NetworkClock(unet)
    pipe = DDPMPipeline(unet=unet, scheduler=DDIMScheduler(**SCHEDULER_CONFIG, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    schedule = from_alphas_cumprod(pipe.scheduler.alphas_cumprod)
    T, shape = SCHEDULER_CONFIG["num_train_timesteps"], (args.sample_n, 3, 32, 32)

    def eps_net(x, t, cond=None):  # diffusers' timestep k is our t = (k + 1) / T
        return unet(x, t * T - 1).sample

    denoise = NetworkDenoiser(eps_net, EpsPrediction(), schedule)

    def ours(steps: int) -> Tensor:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # as the pipeline draws it
        return ddim(denoise, schedule, x, time_grid(schedule, steps))

    def theirs(steps: int) -> Tensor:
        return pipe(batch_size=args.sample_n, generator=torch.Generator().manual_seed(0),
                    num_inference_steps=steps, output_type="pt").images

    def bare(steps: int) -> None:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        for k in time_grid(schedule, steps)[:-1] * T - 1:
            unet(x, k.round().long()).sample  # noqa: B018

    last = {}  # the latest output of each loop

    def timed(run: Callable[[int], Any]) -> Callable[[int], tuple[float, float]]:
        def measure(steps: int) -> tuple[float, float]:
            with torch.no_grad():
                clock.seconds, start = 0.0, time.perf_counter()
                last[run] = run(steps)
                return time.perf_counter() - start, clock.seconds
        return measure

    def agreement() -> float:
        return ((last[ours] / 2 + 0.5).clamp(0, 1) - last[theirs]).abs().max().item()

    contenders = [Contender("bare", "fp32", f"bare: {args.sample_steps} × `unet(x, k).sample`", timed(bare)),
                  Contender("ours", "fp32", "ours: `ddim` + `NetworkDenoiser(eps)`", timed(ours)),
                  Contender("diffusers", "fp32", "diffusers: `DDPMPipeline` + `DDIMScheduler`", timed(theirs))]
    for c in contenders:  # warm up
        c.measure(2)
    return contenders, agreement


# ---------------------------------------------------------------------------------------------
# Report


def ratios(a: list[float], b: list[float], scale: float = 1.0) -> list[float]:
    return [scale * x / y for x, y in zip(a, b, strict=True)]


def training_report(args, contenders, results, info, pieces, adamw) -> list[str]:
    by = {(c.key, c.precision): r for c, r in zip(contenders, results, strict=True)}
    lines = ["| network | parameters | forward GFLOP/img, FlopCounterMode | + attention (total) |", "|---|---|---|---|"]
    for name, (params, counted, total) in (("unnoise `unet_base`", info["ours"]),
                                          ("diffusers `UNet2DModel` (issue config)", info["diffusers"])):
        lines.append(f"| {name} | {params / 1e6:.2f}M | {counted:.3f} | {total:.3f} |")
    lines += ["", (f"img/s at batch {args.batch}: median ({args.rounds} rounds of {args.steps} steps) and min–max. "
                   "Effective GFLOP/s = img/s × 3 × forward GFLOP/img (with attention); peak = the measured "
                   f"convolution peak ({CONV_PEAK['fp32']:.0f} fp32, {CONV_PEAK['bf16']:.0f} bf16 GFLOP/s)."), "",
              "| precision | loop | img/s | effective GFLOP/s | of peak |", "|---|---|---|---|---|"]
    for c, r in zip(contenders, results, strict=True):
        eff = statistics.median(r) * 3 * c.gflop
        lines.append(f"| {c.precision} | {c.label} | {spread(r)} | {eff:.0f} | {eff / CONV_PEAK[c.precision]:.0%} |")
    lines += ["", "| precision | (a)/(b) img/s | trainer overhead | ≤ 5 % | (a)/(c) at equal FLOPs | ≥ 1.3× |",
              "|---|---|---|---|---|---|"]
    g_ratio = info["ours"][2] / info["diffusers"][2]
    for precision in args.precisions:
        ab = ratios(by["a", precision], by["b", precision])
        ac = ratios(by["a", precision], by["c", precision], g_ratio)
        overhead = 1 / statistics.median(ab) - 1
        lines.append(f"| {precision} | {spread(ab, '.3f')} | {overhead:+.1%} | {'yes' if overhead <= 0.05 else '**no**'} "
                     f"| {spread(ac, '.2f')} | {'yes' if statistics.median(ac) >= 1.3 else '**no**'} |")
    variant_rows = [(c, r) for c, r in zip(contenders, results, strict=True) if c.key not in ("a", "b", "c")]
    if variant_rows:
        lines += ["", "| precision | variant | img/s | / (b) img/s |", "|---|---|---|---|"]
        for c, r in variant_rows:
            lines.append(f"| {c.precision} | {c.label} | {spread(r)} | {spread(ratios(r, by['b', c.precision]), '.3f')} |")
    lines += ["", f"What (a) does around the step, timed alone (fp32, batch {args.batch}, median ms):", "",
              "| piece | (a) ms | (b) ms | extra ms |", "|---|---|---|---|"]
    for name, ours, bare in pieces:
        lines.append(f"| {name} | {ours:.2f} | {bare:.2f} | {ours - bare:+.2f} |")
    extra = sum(ours - bare for _, ours, bare in pieces)
    step_ms = {p: 1e3 * args.batch / statistics.median(by["b", p]) for p in args.precisions}  # (b)'s step
    measured = {p: 1e3 * args.batch / statistics.median(by["a", p]) - step_ms[p] for p in args.precisions}
    lines += [f"| **sum** | | | **{extra:+.1f}** |", "",
              "The sum is " + ", ".join(f"{extra / step_ms[p]:.1%} of (b)'s {p} step" for p in args.precisions)
              + "; (a) − (b) per step from the medians above: "
              + ", ".join(f"{p} {ms:+.0f} ms" for p, ms in measured.items())
              + ". One AdamW step ((a) and (b) use fused, (c) the default): " + ", ".join(f"{k} {v:.1f} ms" for k, v in adamw.items())
              + f". (b)'s loss equals `DiffusionLoss`'s to {info['loss check']:.0e} (relative)."]
    return lines


def sampling_report(args, contenders, results, agreement: float) -> list[str]:
    walls = [[wall for wall, _ in r] for r in results]
    lines = [(f"{args.sample_n} images, {args.sample_steps} DDIM steps (trailing grid, η = 0), float32, diffusers' "
              f"UNet2DModel; median of {args.sample_rounds} alternating rounds (min–max). \"Outside the network\": "
              "the run's time not spent inside `unet.forward`, timed by forward hooks in the same run."), "",
             "| loop | s/run | / bare | outside the network | ≤ 2 % |", "|---|---|---|---|---|"]
    for c, r, wall in zip(contenders, results, walls, strict=True):
        outside = statistics.median((w - inside) / w for w, inside in r)
        target = "—" if c.key == "bare" else ("yes" if outside <= 0.02 else "**no**")
        lines.append(f"| {c.label} | {spread(wall, '.2f')} | {spread(ratios(wall, walls[0]), '.3f')} | "
                     f"{outside:.2%} | {target} |")
    return lines + ["", f"Ours and the pipeline from the same noise: max |difference| {agreement:.1e} on images in [0, 1]."]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Default run: about 6 minutes on 2 quiet cores.")
    p.add_argument("--batch", type=int, default=64, help="training batch (images of 3x32x32)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per loop and round")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps: once for (b) and (c), at the start of every run of (a) (its first two "
                        "steps run slower, as those of a fresh process do)")
    p.add_argument("--rounds", type=int, default=4, help="alternating training rounds")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--variants", action="store_true", help="also time candidate speed-ups of (b) (+2 min)")
    p.add_argument("--reps", type=int, default=10, help="repetitions of each piece timed alone")
    p.add_argument("--sample-n", type=int, default=16, help="images sampled")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--sample-rounds", type=int, default=2,
                   help="alternating sampling rounds (the in-run \"outside the network\" share needs no more)")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-sampling", action="store_true")
    p.add_argument("--quick", action="store_true", help="batch 8, 1 step, 1 round, 5 DDIM steps, 4 images; no doc")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    p.add_argument("--no-doc", action="store_true", help="print only")
    p.add_argument("--no-preload", action="store_true", help="do not re-execute with tcmalloc preloaded")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.rounds, args.reps = 8, 1, 1, 2
        args.sample_n, args.sample_steps, args.sample_rounds, args.no_doc = 4, 5, 1, True
    if min(args.batch, args.steps, args.rounds, args.reps, args.sample_n, args.sample_steps, args.sample_rounds) < 1 \
            or args.warmup < 0:
        p.error("--batch, --steps, --rounds, --reps and the --sample-* options must be >= 1; --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_at_start = check_load()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    command = "python bench/train.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    parts = [f"Command: `{command.strip()}`  ", f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  "]
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as workdir:
            contenders, info, model = training_contenders(args, Path(workdir))
            results = alternate(contenders, args.rounds, args.steps)
        pieces, adamw = trainer_pieces(model, args.batch, args.reps), adamw_times(model, args.reps)
        parts += ["", f"### Training, batch {args.batch}, 3×32×32", "",
                  *training_report(args, contenders, results, info, pieces, adamw)]
        print(f"  training done at {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if not args.skip_sampling:
        contenders, agreement = sampling_contenders(args)
        results = alternate(contenders, args.sample_rounds, args.sample_steps)
        parts += ["", "### Sampling overhead", "", *sampling_report(args, contenders, results, agreement())]
    parts.insert(2, f"Machine: {machine(load_at_start)}  ")
    text = "\n".join(parts)
    publish(text, None if args.no_doc else args.doc, "train.py", time.perf_counter() - start)


if __name__ == "__main__":
    main()
