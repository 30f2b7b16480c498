"""Rectified flow's reflow (Liu et al. 2022, Alg. 1 "Reflow"): retrain a flow on the pairs
(z, x0 = ODE_1(z)) that its own ODE draws, instead of on independent (noise, data) pairs.

A 1-rectified flow learns v(x_t, t) = E[z - x0 | x_t] on x_t = (1 - t) x0 + t z with x0 and z
independent; its paths bend where pairs' lines cross. Its ODE gives a deterministic coupling
(z, ODE_1(z)) with the same marginals and a lower transport cost (Thm. 3.5); the 2-rectified flow
trained on those pairs has straighter paths (Thm. 3.7): fewer steps sample as well. With one_step,
t = 1 only: the flow is distilled into one Euler step x0 = z - v(z, 1) (§2.3, "distillation").

    pairs = draw_pairs(teacher_pipeline, 10_000, sampler="dpmpp_2m", steps=35)  # in the model's space
    write_pairs(pairs, run_folder / PAIRS_FILE, settings)                         # what the objective reads

The student is a flow (schedule "flow") initialised from the teacher's network when [distill]
teacher names a run, as Liu et al. do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from unnoise.config import RunConfig
from unnoise.data import TensorSet
from unnoise.files import atomic_path
from unnoise.losses import DiffusionLoss
from unnoise.noise import per_sample_generators
from unnoise.objectives.base import Batch, RunContext
from unnoise.objectives.diffusion import DiffusionObjective, independent_noise_only
from unnoise.objectives.teacher import load_teacher

PAIRS_FILE = "pairs.safetensors"
PAIRS_STREAM = 3  # the pairs' noise: a stream apart from those sampling draws with the same seed
DETERMINISTIC = ("ddim", "euler", "heun", "dpmpp_2m", "unipc", "plms", "ode_adaptive")  # ODE solvers


def draw_pairs(pipe, n: int, *, sampler: str, steps: int, guidance: float = 1.0, seed: int = 0,
               progress: bool | None = None) -> dict[str, Tensor]:
    """n pairs {noise z, x0 = the teacher's ODE solution from z, labels} in the space the teacher
    diffuses in; sample i's z from the generator of (seed, i) on PAIRS_STREAM, its class i mod classes."""
    if sampler not in DETERMINISTIC:
        raise ValueError(f"reflow pairs come from the teacher's ODE: the sampler must be one of "
                         f"{', '.join(DETERMINISTIC)}, got {sampler!r}")
    if pipe.interface.text:
        raise ValueError("reflow draws its pairs for class labels or none; text-conditioned teachers are not "
                         "supported")
    shape = pipe.interface.sample_shape
    z = torch.stack([torch.randn(shape, generator=g) for g in per_sample_generators(seed, n, stream=PAIRS_STREAM)])
    labels, _ = pipe.per_sample(n)
    x0 = pipe.sample(n, labels=labels, x=z * pipe.schedule.sigma(1.0).item(), t_start=1.0, sampler=sampler,
                     steps=steps, guidance=guidance if pipe.interface.conditional else None, seed=seed,
                     decode=False, progress=progress)
    return {"noise": z, "x0": x0, "labels": torch.full((n,), -1) if labels is None else labels}


def write_pairs(pairs: dict[str, Tensor], path: Path, settings: dict) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in pairs.items()}, str(tmp), metadata={"settings": json.dumps(settings)})


def read_pairs(path: Path) -> tuple[dict[str, Tensor], dict]:
    """The pairs and the settings they were drawn with; a missing or damaged file is refused."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist: a reflow run trains on pairs its teacher draws first "
                         "(unnoise distill TEACHER_RUN --method reflow draws them)")
    try:
        with safe_open(str(path), "pt") as f:
            pairs = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            settings = json.loads((f.metadata() or {}).get("settings", "{}"))
    except (SafetensorError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable pairs file ({err}); delete it to draw the pairs again") from None
    if set(pairs) != {"noise", "x0", "labels"} or pairs["x0"].shape != pairs["noise"].shape \
            or pairs["labels"].shape != pairs["noise"].shape[:1]:
        raise ValueError(f"{path} does not hold (noise, x0, labels) pairs of one shape; delete it to draw them again")
    if not (torch.isfinite(pairs["x0"]).all() and torch.isfinite(pairs["noise"]).all()):
        raise ValueError(f"{path} holds non-finite values; delete it to draw the pairs again")
    return pairs, settings


class ReflowObjective(DiffusionObjective):
    """The flow loss on the pairs of <run>/pairs.safetensors (or `pairs` given), each x0 with its own z."""

    def __init__(self, config: RunConfig, run: RunContext, pairs: dict[str, Tensor] | None = None):
        if config.diffusion.schedule != "flow":
            raise ValueError(f"reflow trains a rectified flow: diffusion.schedule must be \"flow\", got "
                             f"{config.diffusion.schedule!r}")
        independent_noise_only(config)
        pairs = pairs if pairs is not None else read_pairs(run.out / PAIRS_FILE)[0]
        dataset = TensorSet(pairs["x0"], pairs["labels"], name="reflow pairs")
        self.setup(config, run, dataset, in_model_space=True)
        self.noise = pairs["noise"]
        if config.distill.teacher:  # the student starts as its teacher (Liu et al. 2022, §5)
            _, pipe = load_teacher(config.distill.teacher, self.config, run.device, run.dtype)
            self.network.load_state_dict(pipe.denoiser.net.state_dict())
        self.loss_fn = DiffusionLoss(self.schedule, self.parameterization, config.loss)

    def draw(self, index: Tensor, generator: torch.Generator, step: int) -> Batch:
        x0, labels = self.dataset.batch(index)
        if self.config.distill.one_step:
            t = torch.ones(len(x0), dtype=torch.float64)
        else:
            t = self.loss_fn.sample_times(len(x0), generator)
        return self.with_condition({"x0": x0, "t": t, "noise": self.noise[index]}, index, labels, generator)
