"""The models a server holds: each run loaded once through `Pipeline`, named, and priced.

A model's price is its GFLOP per sample and network call, counted once at load by PyTorch's
FlopCounterMode over a one-step sample (so a latent model's decoder and a text model's encoder are
included once): deterministic, so the work bound refuses the same requests on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from unnoise.cascade import hint_picture, sr_condition
from unnoise.conditioning import Condition
from unnoise.data import class_names_of
from unnoise.modality import MODALITIES
from unnoise.pipeline import Pipeline

# mode -> the kinds of data (unnoise.modality) it applies to: sdedit and inpaint start from an uploaded picture
MODE_KINDS = {"sample": MODALITIES, "sdedit": ("image",), "inpaint": ("image",)}


@dataclass(frozen=True)
class ServedModel:
    name: str  # how requests name it: the run folder's name
    pipe: Pipeline
    gflop: float  # per sample and network call
    data_shape: tuple[int, ...]  # one sample as the client sees it (a latent model's decoded shape)
    hint: str | None = None  # the hint image it reads: "edges" (any ControlNet hint), "lowres" or None
    hint_shape: tuple[int, ...] = ()  # the picture a client gives as the hint (C, H, W)

    @property
    def modes(self) -> list[str]:
        """The modes that apply to its kind of data (MODE_KINDS)."""
        return [mode for mode, kinds in MODE_KINDS.items() if self.pipe.modality in kinds]

    def describe(self) -> dict:
        """What GET /api/models says of it: conditioning, samplers' defaults, shape, price."""
        pipe, d = self.pipe, self.pipe.defaults
        class_names = class_names_of(pipe.config.data) if pipe.config and pipe.classes else []
        return {"name": self.name, "source": pipe.source, "step": pipe.step, "modality": pipe.modality,
                "shape": list(self.data_shape), "classes": pipe.classes, "text": bool(pipe.interface.text),
                "class_names": class_names[: pipe.classes] if len(class_names) >= pipe.classes else [],
                "latent": self.data_shape != tuple(pipe.interface.sample_shape), "modes": self.modes,
                "editable": "sdedit" in self.modes, "hint": self.hint, "hint_shape": list(self.hint_shape),
                "defaults": {"sampler": d.sampler, "steps": d.steps, "spacing": d.spacing, "guidance": d.guidance,
                             "hint_noise": pipe.config.sample.hint_noise if pipe.config else 0.0,
                             "prompts": list(pipe.config.sample.prompts) if pipe.config and pipe.interface.text
                             else []},
                "gflop_per_call": self.gflop}


def load_model(run: str | Path, device: str | None = None, name: str | None = None) -> ServedModel:
    """A run (or checkpoint) folder as a served model, priced."""
    pipe = Pipeline.load(run, device)
    hint, hint_shape = hint_picture(pipe)
    one = {"steps": 1, "sampler": "ddim", "guidance": 1.0, "progress": False}
    if hint:  # a blank hint of the right shape: the price does not depend on its pixels
        low = torch.zeros(1, *hint_shape)
        one["cond"] = sr_condition(pipe, low) if hint == "lowres" else Condition(image=low)
    x = pipe.sample(1, **one)  # the first call also encodes a text model's default prompts
    with FlopCounterMode(display=False) as counter:
        pipe.sample(1, **one)
    return ServedModel(name or _name(run), pipe, counter.get_total_flops() / 1e9, tuple(x.shape[1:]), hint,
                       hint_shape)


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

