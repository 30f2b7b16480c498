"""The data space a model diffuses in: pixels (or whatever the data are), or a trained autoencoder's
latents (Rombach et al. 2022). One interface for both, so training, sampling and evaluation never ask
which it is:

    space = space_for(config, device)   # PixelSpace() or the run's LatentSpace, checked against its hash
    z = space.encode(x)                 # latents: scale * z ~ q(z | x), unit variance over the training data
    x = space.decode(z)                 # in float32 whatever the caller's autocast: no NaN images
    x = space.project(x, cond)          # onto the subspace the data live in (identity but for point sets)

A point-set model (molecules) diffuses in unnoise.centred.CentredSpace: the data as they are, but
in the zero-centre subspace, which `project` keeps every noise draw and sampler state in, and with
`complete` drawing each sample's number of atoms when the caller gives none.

The scale factor is measured from data: 1 / std of the latents of `scale_images` training images
(Rombach et al. 2022, §4.3.2 and Appendix G, rescale to unit variance), computed at every
autoencoder checkpoint and stored in its config.json, with nothing repeated in code.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from unnoise.centred import CentredSpace
from unnoise.checkpoint import load_checkpoint, run_config
from unnoise.conditioning import Condition
from unnoise.config import RunConfig
from unnoise.data import DataConfig, load_dataset, set_class
from unnoise.data.tensor_set import TensorSet
from unnoise.models.autoencoder import Autoencoder, AutoencoderConfig


class Unconstrained:
    """A space that is all of R^d: nothing to project, no condition of its own to draw."""

    constrained = False  # True: the pipeline projects every sampler state (unnoise.centred)

    def project(self, x: Tensor, cond: Condition | None) -> Tensor:
        return x

    def complete(self, cond: Condition | None, n: int, seed: int, first: int = 0) -> Condition | None:
        return cond


class PixelSpace(Unconstrained):
    """The identity encoder: what a pixel-space model diffuses in."""

    scale = 1.0

    def encode(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return z


@dataclass
class LatentSpace(Unconstrained):
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
    ckpt = load_checkpoint(path, with_state=False)
    config = run_config(ckpt)
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


@functools.lru_cache(maxsize=4)
def _own_space(data: DataConfig) -> CentredSpace:  # the one kind of own space so far
    return load_dataset(data).space()


def space_for(config: RunConfig, device: torch.device | str = "cpu") -> LatentSpace | PixelSpace | CentredSpace:
    """The encoder a run diffuses in: its autoencoder ([latent] autoencoder), checked against the hash
    recorded when the run was trained and against the network's input shape; a space the data set
    builds itself (`has_own_space`: point sets' zero-centre subspace with their histogram of sizes);
    else PixelSpace()."""
    lc = config.latent
    if set_class(config.data).has_own_space:
        return _own_space(config.data)
    if not lc.autoencoder:
        return PixelSpace()
    space = _cached_space(str(lc.autoencoder), str(device))
    if lc.sha256 and lc.sha256 != space.sha256:
        raise ValueError(f"this model was trained in the latent space of an autoencoder with weights "
                         f"{lc.sha256[:12]}..., but {space.source} holds {space.sha256[:12]}...: a different "
                         "autoencoder; point [latent] autoencoder at the one it was trained with")
    shape = config.model.interface.sample_shape
    if shape != tuple(space.latent_shape):
        raise ValueError(f"the autoencoder's latents are {space.latent_shape}: the network reads {shape}; set "
                         f"[model] in_channels = out_channels = {space.latent_shape[0]} and image_size = "
                         f"{space.latent_shape[1]}")
    return space


class EncodedSet(TensorSet):
    """A data set's latents (N, C, h, w) float32 (posterior means, scaled), with its labels and captions."""

    modality = "image"  # decoded, latents are images

    @property
    def latents(self) -> Tensor:
        return self.values


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
    return EncodedSet(torch.cat(parts), dataset.labels, name=f"{dataset.name}-latents",
                      class_names=dataset.class_names, captions=dataset.captions)


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


