"""The models a server holds: each run loaded once through `Pipeline`, named, and priced.

A model's price is its GFLOP per sample and network call, counted once at load by PyTorch's
FlopCounterMode over a one-step sample (so a latent model's decoder and a text model's encoder are
included once): deterministic, so the work bound refuses the same requests on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.flop_counter import FlopCounterMode

from unnoise.data import class_names_of
from unnoise.pipeline import Pipeline


@dataclass(frozen=True)
class ServedModel:
    name: str  # how requests name it: the run folder's name
    pipe: Pipeline
    gflop: float  # per sample and network call
    data_shape: tuple[int, ...]  # one sample as the client sees it (a latent model's decoded shape)

    def describe(self) -> dict:
        """What GET /api/models says of it: conditioning, samplers' defaults, shape, price."""
        pipe, d = self.pipe, self.pipe.defaults
        class_names = class_names_of(pipe.config.data) if pipe.config and pipe.classes else []
        return {"name": self.name, "source": pipe.source, "step": pipe.step, "modality": pipe.modality,
                "shape": list(self.data_shape), "classes": pipe.classes, "text": bool(pipe.interface.text),
                "class_names": class_names[: pipe.classes] if len(class_names) >= pipe.classes else [],
                "latent": self.data_shape != tuple(pipe.interface.sample_shape),
                "editable": pipe.modality == "image",
                "defaults": {"sampler": d.sampler, "steps": d.steps, "spacing": d.spacing, "guidance": d.guidance,
                             "prompts": list(pipe.config.sample.prompts) if pipe.config and pipe.interface.text
                             else []},
                "gflop_per_call": self.gflop}


def load_model(run: str | Path, device: str | None = None, name: str | None = None) -> ServedModel:
    """A run (or checkpoint) folder as a served model; models that need a hint image are refused."""
    pipe = Pipeline.load(run, device)
    if pipe.interface.hint_channels:
        raise ValueError(f"{run} reads a hint image (a ControlNet or super-resolution model); the server does not "
                         "take hint images")
    one = {"steps": 1, "sampler": "ddim", "guidance": 1.0, "progress": False}
    x = pipe.sample(1, **one)  # the first call also encodes a text model's default prompts
    with FlopCounterMode(display=False) as counter:
        pipe.sample(1, **one)
    return ServedModel(name or _name(run), pipe, counter.get_total_flops() / 1e9, tuple(x.shape[1:]))


def load_models(runs: list[str | Path], device: str | None = None) -> dict[str, ServedModel]:
    """Each run by its folder's name (a checkpoint folder: run@step); the same name twice is refused."""
    models: dict[str, ServedModel] = {}
    for run in runs:
        name = _name(run)
        if name in models:
            raise ValueError(f"two models would be called {name!r}; serve runs whose folders are named apart")
        models[name] = load_model(run, device, name)
    return models


def _name(run: str | Path) -> str:
    path = Path(run).resolve()
    if path.name.startswith("step_") and path.name[5:].isdigit():  # run/checkpoints/step_00001000: run@1000
        return f"{path.parents[1].name}@{int(path.name[5:])}"
    return path.name

