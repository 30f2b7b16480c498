"""Latent diffusion's autoencoder: training it, measuring its latent scale, and the one encoder
interface that pixel and latent models share (Rombach et al. 2022).

    unnoise train-autoencoder fashion-autoencoder     # -> runs/fashion-autoencoder/checkpoints/...
    space = load_latent_space("runs/fashion-autoencoder")
    z = space.encode(x)        # scale * z ~ q(z | x): unit variance over the training data
    x = space.decode(z)        # in float32 whatever the caller's autocast: no NaN images
    PixelSpace()               # the identity, for pixel models: the same two calls

The scale factor is measured from data: 1 / std of the latents of `scale_images` training images
(Rombach et al. 2022, §4.3.2 and Appendix G, rescale to unit variance), computed at every
checkpoint and stored in that checkpoint's config.json, with nothing repeated in code.

Training loss per example, all terms small functions in unnoise.losses:

    |x - x_hat|_1 + w_p perceptual(x, x_hat) + w_kl KL(q(z | x) || N(0, I)) / D
        + [step >= disc_start] w_d lambda (-D(x_hat))          lambda: Esser et al. 2021, eq. 7

and the patch discriminator's hinge loss. DDP as in unnoise.train; the adaptive weight is computed
on each rank's own slice, so with a discriminator N ranks are not bit-equal to one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from unnoise.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from unnoise.config import RunConfig, to_dict
from unnoise.losses import adaptive_weight, hinge_discriminator_loss, perceptual_loss, reconstruction_loss
from unnoise.models.autoencoder import Autoencoder, AutoencoderConfig, PatchDiscriminator, psnr
from unnoise.train import EMA, Batches, ema_decay, seeded_generator, setup_distributed


class PixelSpace:
    """The identity encoder: what a pixel-space model diffuses in."""

    scale = 1.0

    def encode(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return z


@dataclass
class LatentSpace:
    """A trained autoencoder as an encoder: z = scale * (a sample of q(z | x)), x = decode(z / scale)."""

    autoencoder: Autoencoder
    scale: float  # 1 / std of the training latents, from the autoencoder's checkpoint
    source: str  # the checkpoint folder it came from
    sha256: str  # of its weights: a latent model names the autoencoder it was trained with

    def encode(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """noise None: the posterior mean; else mean + std * noise."""
        with torch.autocast(x.device.type, enabled=False):
            posterior = self.autoencoder.encode(x.float())
            return self.scale * (posterior.mean if noise is None else posterior.sample(noise.float()))

    def decode(self, z: Tensor) -> Tensor:
        # float32 always: a bf16 decoder's group norms overflow on large activations; samplers' x0 are float32
        with torch.autocast(z.device.type, enabled=False):
            return self.autoencoder.decode(z.float() / self.scale)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.autoencoder.config.latent_shape


def weights_sha256(checkpoint_path: Path) -> str:
    return hashlib.sha256((Path(checkpoint_path) / "ema.safetensors").read_bytes()).hexdigest()


def load_latent_space(path: str | Path, device: torch.device | str = "cpu") -> LatentSpace:
    """An autoencoder run or checkpoint folder as a LatentSpace (EMA weights)."""
    from unnoise.config import load_config

    ckpt = load_checkpoint(path, with_state=False)
    config = load_config(None, tree=ckpt.config["tree"])
    if not isinstance(config.model, AutoencoderConfig):
        raise ValueError(f"{ckpt.path} is not an autoencoder checkpoint (its [model] is a "
                         f"{type(config.model).__name__})")
    if "latent_scale" not in ckpt.config:
        raise ValueError(f"{ckpt.path} has no measured latent scale (written by unnoise train-autoencoder)")
    model = Autoencoder(config.model)
    model.load_state_dict(ckpt.ema)
    model.to(device).eval().requires_grad_(False)
    return LatentSpace(model, float(ckpt.config["latent_scale"]), str(ckpt.path), weights_sha256(ckpt.path))


@functools.lru_cache(maxsize=4)
def _cached_space(path: str, device: str) -> LatentSpace:
    return load_latent_space(path, device)


def latent_space_for(config: RunConfig, device: torch.device | str = "cpu") -> LatentSpace | PixelSpace:
    """The encoder a run diffuses in: its autoencoder ([latent] autoencoder), checked against the hash
    recorded when the run was trained and against the network's input shape, or PixelSpace()."""
    lc = config.latent
    if not lc.autoencoder:
        return PixelSpace()
    space = _cached_space(str(lc.autoencoder), str(device))
    if lc.sha256 and lc.sha256 != space.sha256:
        raise ValueError(f"this model was trained in the latent space of an autoencoder with weights "
                         f"{lc.sha256[:12]}..., but {space.source} holds {space.sha256[:12]}...: a different "
                         "autoencoder; point [latent] autoencoder at the one it was trained with")
    model = config.model
    shape = (getattr(model, "in_channels", None), getattr(model, "image_size", None))
    c, h, _ = space.latent_shape
    if shape != (c, h):
        raise ValueError(f"the autoencoder's latents are {space.latent_shape}: the network needs in_channels = "
                         f"out_channels = {c} and image_size = {h}, got in_channels {shape[0]}, image_size {shape[1]}")
    return space


@dataclass
class EncodedSet:
    """A data set's latents (posterior means, scaled), served like an ImageSet by `batch`."""

    latents: Tensor  # (N, C, h, w) float32
    labels: Tensor  # (N,)
    captions: object  # the pixel set's Captions, or None
    name: str

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.latents[index], self.labels[index]


@torch.no_grad()
def encode_dataset(space: LatentSpace, dataset, batch_size: int = 500, progress: bool = True) -> EncodedSet:
    """Every image encoded once to its scaled posterior mean. With KL weight 1e-6 the posterior's std
    is small next to the latents' unit spread (0.007 for fashion-autoencoder, measured on 500 test
    images): drawing from it at every step would change little."""
    device = next(space.autoencoder.parameters()).device
    parts = []
    for i in tqdm(range(0, len(dataset), batch_size), desc="encoding", disable=not progress, leave=False):
        x = dataset.batch(torch.arange(i, min(i + batch_size, len(dataset))))[0].to(device)
        parts.append(space.encode(x).cpu())
    return EncodedSet(torch.cat(parts), dataset.labels, getattr(dataset, "captions", None), f"{dataset.name}-latents")


@torch.no_grad()
def measure_scale(autoencoder: nn.Module, images: Tensor, batch_size: int = 500, seed: int = 0) -> float:
    """1 / std of z ~ q(z | x) over `images` (uint8-derived floats in [-1, 1]): the factor that makes
    the latents unit variance (Rombach et al. 2022, Appendix G)."""
    g = torch.Generator().manual_seed(seed)
    device = next(autoencoder.parameters()).device
    zs = []
    for i in range(0, len(images), batch_size):
        posterior = autoencoder.encode(images[i:i + batch_size].to(device).float())
        noise = torch.randn(posterior.mean.shape, generator=g).to(device)
        zs.append(posterior.sample(noise).double().cpu())
    std = torch.cat(zs).std().item()
    if not math.isfinite(std) or std <= 0:
        raise FloatingPointError(f"the latents' standard deviation is {std}: the autoencoder is broken")
    return 1.0 / std


def _first_images(dataset, n: int) -> Tensor:
    return dataset.batch(torch.arange(min(n, len(dataset))))[0]


def train_autoencoder(config: RunConfig, resume: str | None = None, device: str | None = None,
                      quiet: bool = False) -> dict:
    """Train the autoencoder a config describes ([model] an autoencoder preset, [autoencoder] its loss)."""
    from unnoise.data import load_dataset
    from unnoise.features import PACKAGED, feature_net_for

    tc, lc = config.train, config.autoencoder
    if not isinstance(config.model, AutoencoderConfig):
        raise ValueError(f"train-autoencoder needs an autoencoder [model] preset, got {type(config.model).__name__}")
    # 1. Processes, data, networks (the same initial weights on every rank), optimisers.
    ddp = setup_distributed(device)
    if tc.batch_size % ddp.world:
        raise ValueError(f"batch_size {tc.batch_size} must be divisible by the {ddp.world} processes")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(config.data)
    if tuple(dataset.sample_shape) != (config.model.in_channels, config.model.image_size, config.model.image_size):
        raise ValueError(f"the data are {tuple(dataset.sample_shape)}, the autoencoder expects "
                         f"({config.model.in_channels}, {config.model.image_size}, {config.model.image_size}): "
                         "set [data] image_size / channels or [model] in_channels / image_size")
    torch.manual_seed(tc.seed)
    model = Autoencoder(config.model).to(ddp.device)
    disc = PatchDiscriminator(config.model.in_channels, config.model.disc_channels).to(ddp.device) \
        if lc.disc_weight > 0 else None
    feature_net = None
    if lc.perceptual_weight > 0:
        if config.data.name not in PACKAGED:
            raise ValueError(f"the perceptual term uses a packaged feature network ({', '.join(PACKAGED)}); "
                             f"{config.data.name} has none: set autoencoder.perceptual_weight = 0")
        feature_net = feature_net_for(config.data.name, None, ddp.device).net.requires_grad_(False)
    ema = EMA(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=lc.disc_lr, betas=(0.5, 0.9)) if disc else None
    step, position = 0, 0
    # 2. Resume.
    if resume:
        ckpt = load_checkpoint(out / "checkpoints" if resume == "latest" else resume)
        model.load_state_dict(ckpt.model)
        ema.shadow = {k: v.to(ddp.device) for k, v in ckpt.ema.items()}
        optimizer.load_state_dict(ckpt.state["optimizer"])
        if disc:
            disc.load_state_dict(ckpt.state["discriminator"])
            disc_opt.load_state_dict(ckpt.state["disc_optimizer"])
        step, position = ckpt.state["step"], ckpt.state["position"]
    batches = Batches(dataset, tc.batch_size, tc.seed, position)
    net, dnet = model, disc
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(model)
        dnet = nn.parallel.DistributedDataParallel(disc) if disc else None
    local = slice(ddp.rank * tc.batch_size // ddp.world, (ddp.rank + 1) * tc.batch_size // ddp.world)
    pixels = math.prod(dataset.sample_shape)

    # 3. The loop.
    log = (out / "log.jsonl").open("a") if ddp.main else None
    bar = tqdm(total=tc.steps, initial=step, disable=None if ddp.main and not quiet else True, desc="autoencoder")
    started, last_log, skipped, in_a_row = time.perf_counter(), time.perf_counter(), 0, 0
    stop = "steps"
    while step < tc.steps:
        x, _, _ = batches.next()
        g = seeded_generator(tc.seed, 3, batches.position)  # the posterior's noise: from (seed, batch number)
        noise = torch.randn((len(x), *config.model.latent_shape), generator=g)
        x, noise = x[local].to(ddp.device), noise[local].to(ddp.device)
        lr = tc.lr * min(1.0, (step + 1) / max(tc.warmup_steps, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        # 3a. The autoencoder's step.
        with torch.autocast(ddp.device.type, dtype=torch.bfloat16, enabled=tc.bf16):
            x_hat, posterior = net(x, noise)
        x_hat = x_hat.float()
        terms = {"rec": reconstruction_loss(x, x_hat).mean()}
        if feature_net is not None:
            terms["perceptual"] = perceptual_loss(feature_net, x, x_hat).mean()
        nll = terms["rec"] + lc.perceptual_weight * terms.get("perceptual", 0.0)
        terms["kl"] = posterior.kl().float().mean() / pixels
        loss = nll + lc.kl_weight * terms["kl"]
        adversarial = disc is not None and step >= lc.disc_start
        if adversarial:
            terms["g"] = -dnet(x_hat).mean()
            terms["lambda"] = adaptive_weight(nll, terms["g"], model.last_layer)
            loss = loss + lc.disc_weight * terms["lambda"] * terms["g"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):  # skip the step; stop after N in a row
            skipped, in_a_row = skipped + 1, in_a_row + 1
            if in_a_row >= tc.max_nonfinite:
                stop = f"{in_a_row} non-finite losses or gradients"
                break
            continue
        in_a_row = 0
        optimizer.step()
        # 3b. The discriminator's step, on the same batch (the reconstruction detached).
        if adversarial:
            terms["d"] = hinge_discriminator_loss(dnet(x), dnet(x_hat.detach()))
            disc_opt.zero_grad(set_to_none=True)
            terms["d"].backward()
            disc_opt.step()
        ema.update(model, ema_decay(step, tc.ema_decay, tc.ema_warmup))
        step += 1
        bar.update()
        # 3c. Log and checkpoints (rank 0 writes).
        if log and (step % tc.log_every == 0 or step == tc.steps):
            now = time.perf_counter()
            record = {"step": step, "loss": loss.item(), **{k: float(v.detach()) for k, v in terms.items()}, "lr": lr,
                      "img_per_s": round(tc.log_every * tc.batch_size / max(now - last_log, 1e-9), 2)}
            last_log = now
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(rec=f"{record['rec']:.4f}")
        out_of_time = tc.max_seconds and time.perf_counter() - started > tc.max_seconds
        if ddp.main and (tc.checkpoint_every and step % tc.checkpoint_every == 0 or step == tc.steps or out_of_time):
            _save(config, out, step, model, ema, optimizer, disc, disc_opt, batches, ddp.world, dataset)
        if out_of_time:
            stop = f"time limit of {tc.max_seconds:g} s"
            break
    bar.close()
    summary = {"step": step, "stopped": stop, "skipped": skipped, "seconds": time.perf_counter() - started,
               "out": str(out), "checkpoints": [str(p) for p in list_checkpoints(out / "checkpoints")]}
    if log:
        log.close()
        from unnoise.plots import plot_loss

        plot_loss(out / "log.jsonl", out / "loss.png")
        summary.update(write_reconstructions(config, ema.shadow, out, ddp.device))
    if stop.endswith("gradients"):
        raise RuntimeError(f"autoencoder training stopped at step {step}: {stop} in a row")
    return summary


def _save(config, out, step, model, ema, optimizer, disc, disc_opt, batches, world, dataset) -> None:
    """A checkpoint with the latent scale of the EMA weights measured now."""
    averaged = Autoencoder(config.model).to(next(model.parameters()).device)
    averaged.load_state_dict(ema.shadow)
    images = _first_images(dataset, config.autoencoder.scale_images)
    scale = measure_scale(averaged.eval(), images, seed=config.train.seed)
    state = {"optimizer": optimizer.state_dict(), "step": step, "position": batches.position, "world": world}
    if disc is not None:
        state.update(discriminator=disc.state_dict(), disc_optimizer=disc_opt.state_dict())
    save_checkpoint(out / "checkpoints", step, model.state_dict(), ema.shadow, state,
                    {"tree": config.tree, "resolved": to_dict(config), "latent_scale": scale},
                    keep=config.train.keep_checkpoints)


@torch.no_grad()
def write_reconstructions(config: RunConfig, weights: dict, out: Path, device="cpu", split: str | None = None,
                          features: str | Path | None = None) -> dict:
    """PSNR on `split` (None: the held-out one), the Fréchet distance of the reconstructions to the
    originals in the data set's feature network (where one is packaged, or `features`), and a PNG: rows of
    originals, each above its row of reconstructions. Writes reconstruction.json (the held-out
    split) or reconstruction-<split>.json and the PNG beside it."""
    from unnoise import metrics
    from unnoise.data import eval_split, load_dataset
    from unnoise.features import PACKAGED, feature_net_for
    from unnoise.files import write_text_atomic
    from unnoise.plots import save_image_grid

    model = Autoencoder(config.model).to(device)
    model.load_state_dict(weights)
    model.eval()
    split = split or eval_split(config.data.name)
    test = load_dataset(replace(config.data, split=split))
    values, originals, recons = [], [], []
    for i in range(0, len(test), 500):
        x = test.batch(torch.arange(i, min(i + 500, len(test))))[0].to(device)
        x_hat = model.decode(model.encode(x).mean).clamp(-1, 1)
        values.append(psnr(x, x_hat).cpu())
        originals.append(x.cpu())
        recons.append(x_hat.cpu())
    result = {"split": split, "images": len(test), "psnr dB": torch.cat(values).mean().item()}
    if config.data.name in PACKAGED or features:
        feats = feature_net_for(config.data, features, device)
        f_real, _ = feats.embed(torch.cat(originals))
        f_rec, logits = feats.embed(torch.cat(recons))
        result[f"FD[{feats.name}] of reconstructions"] = metrics.frechet_distance(
            *metrics.gaussian_stats(f_rec), *metrics.gaussian_stats(f_real))
        result[f"accuracy[{feats.name}] of reconstructions"] = (logits.argmax(1) == test.labels).double().mean().item()
    suffix = "" if split == eval_split(config.data.name) else f"-{split}"
    write_text_atomic(out / f"reconstruction{suffix}.json", json.dumps(result, indent=1) + "\n")
    x = test.batch(torch.arange(min(16, len(test))))[0].to(device)
    x_hat = model.decode(model.encode(x).mean).clamp(-1, 1)
    rows = [part for i in range(0, len(x), 8) for part in (x[i:i + 8], x_hat[i:i + 8])]  # originals, then theirs
    save_image_grid(torch.cat(rows), out / f"reconstructions{suffix}.png", columns=8)
    return result
