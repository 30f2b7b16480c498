"""`unnoise eval` of audio, video and molecule runs: each kind's measures of its samples, beside the
same measures on real data (what a perfect model scores) and on a baseline (what a model that learnt
nothing scores), in one JSON report written with the kind's preview files.

    audio     FD and class accuracy in the set's audio feature network (unnoise.audio_features) against
              the held-out clips, and the loudness (rms); floor: the training clips; baseline: white
              noise at the data's rms
    video     trajectory error, ink speed, frame agreement, digit accuracy and per-frame FD in the MNIST
              network (unnoise.video); floor: real test videos; both again with their frames shuffled
              in time (which measures see motion)
    molecule  atom and molecule stability, RDKit validity and uniqueness (unnoise.chemistry; Hoogeboom
              et al. 2022, §5.2); floor: real test molecules; baseline: noise molecules

    pipe = Pipeline.load("runs/qm9")
    measured = evaluate_molecules(pipe, Sampling(n=1000), run="runs/qm9")
    write_measured(measured, pipe, Path("docs/figures/qm9_eval"))     # .json, .png and .xyz
    report, files = evaluate_kind("runs/qm9", "molecule", {"n": 100})  # what `unnoise eval` runs
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import Tensor

from unnoise.audio import write_wav
from unnoise.audio_features import LoadedAudioFeatures, load_audio_features
from unnoise.chemistry import noise_molecules, render_molecules, stability, validity_uniqueness, write_xyz
from unnoise.data import class_names_of, eval_split, load_dataset
from unnoise.eval.report import format_table
from unnoise.files import write_text_atomic
from unnoise.metrics import frechet_distance, gaussian_stats
from unnoise.modality import molecules_of, preview
from unnoise.pipeline import Pipeline, Settings
from unnoise.video import frame_classes, save_gif, save_video_strip, video_report

REFERENCE_VIDEOS = 2000  # training videos whose frames are the per-frame FD's reference
AUDIO_PREVIEW, VIDEO_PREVIEW, MOLECULE_PREVIEW = 20, 20, 16  # samples shown in each kind's picture


@dataclass(frozen=True)
class Sampling:
    """How an evaluation draws its samples; None keeps the run's [sample] setting."""

    n: int  # samples to draw
    seed: int = 0  # sample i draws from the generator of (seed, i)
    sampler: str | None = None
    steps: int | None = None
    spacing: str | None = None
    guidance: float | None = None  # classifier-free scale (class-conditional runs)
    batch_size: int | None = None  # samples drawn at once (memory only); None: the pipeline's bounded default

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")

    def settings(self, pipe: Pipeline) -> Settings:
        return pipe.settings(sampler=self.sampler, steps=self.steps, spacing=self.spacing, guidance=self.guidance,
                             seed=self.seed)

    def draw(self, pipe: Pipeline, labels: Tensor | None = None, progress: bool = True) -> tuple[Tensor, float]:
        """The n samples (labels (n,): the class of each) and the seconds drawing them took."""
        started = time.perf_counter()
        x = pipe.sample(self.n, labels=labels, sampler=self.sampler, steps=self.steps, spacing=self.spacing,
                        guidance=self.guidance, seed=self.seed, batch_size=self.batch_size, progress=progress)
        return x, time.perf_counter() - started

    def header(self, pipe: Pipeline, run: str, seconds: float) -> dict:
        """The report's settings: run, step, n, sampler, steps, spacing (when asked for), guidance (a
        conditional model), seed and the seconds sampling took."""
        s = self.settings(pipe)
        return {"run": run, "step": pipe.step, "n": self.n, "sampler": s.sampler, "steps": s.steps,
                **({"spacing": s.spacing} if self.spacing is not None else {}),
                **({"guidance": s.guidance} if pipe.interface.conditional else {}),
                "seed": self.seed, "sampling_seconds": round(seconds, 1)}


@dataclass
class Measured:
    """A kind's evaluation: the report (settings and one row per set measured) and the samples drawn."""

    report: dict
    samples: Tensor  # (n, *sample shape), for the preview files


# ---- audio --------------------------------------------------------------------------------------


def audio_features_for(source: str | Path, sample_rate: int, length: int) -> LoadedAudioFeatures:
    """The audio feature network `source` (a data set name: its packaged one; or a .safetensors file),
    checked to hear clips of `length` samples at `sample_rate` Hz."""
    feats = load_audio_features(source)
    if (feats.net.sample_rate, feats.net.length) != (sample_rate, length):
        raise ValueError(f"the {feats.name} network hears {feats.net.length} samples at {feats.net.sample_rate} Hz; "
                         f"the run's clips are {length} at {sample_rate} Hz")
    return feats


def measure_clips(name: str, feats: LoadedAudioFeatures, clips: Tensor, labels: Tensor, reference: tuple) -> dict:
    """A row: FD of clips (N, 1, L) to the reference (mu, cov), the share the network names as their
    labels, and their rms."""
    features, logits = feats.embed(clips)
    return {"set": name, "clips": len(clips),
            f"FD[{feats.name}]": frechet_distance(*gaussian_stats(features), *reference),
            f"accuracy[{feats.name}]": (logits.argmax(1) == labels).double().mean().item(),
            "rms": clips.square().mean().sqrt().item()}


def evaluate_audio(pipe: Pipeline, sampling: Sampling, run: str, features: str | Path | None = None,
                   progress: bool = True) -> Measured:
    """Class-grid samples (sample i of class i mod classes), the training clips and white noise at
    their rms, each measured against the held-out clips in the feature network `features` (None:
    the packaged one of the run's data set)."""
    data = pipe.config.data
    train, test = load_dataset(data), load_dataset(replace(data, split="test"))
    feats = audio_features_for(features or data.name, train.sample_rate, train.length)
    reference = gaussian_stats(feats.embed(test.clips)[0])
    labels = torch.arange(sampling.n) % len(train.class_names)
    x, seconds = sampling.draw(pipe, labels, progress)
    noise = torch.randn(sampling.n, 1, train.length, generator=torch.Generator().manual_seed(0))
    rows = [measure_clips("samples", feats, x, labels, reference),
            measure_clips("training clips (floor)", feats, train.clips, train.labels, reference),
            measure_clips("white noise at the data's rms", feats, noise * train.clips.square().mean().sqrt(),
                          labels, reference)]
    return Measured({**sampling.header(pipe, run, seconds), "test_clips": len(test), "rows": rows}, x)


def _audio_files(measured: Measured, pipe: Pipeline, stem: Path) -> list[Path]:
    """The first clips' picture with a WAV of them in turn, and one clip of each class as a WAV."""
    x, rate, names = measured.samples, pipe.rendering["sample_rate"], class_names_of(pipe.config.data)
    picture = preview("audio", x[:AUDIO_PREVIEW], _beside(stem, ".png"), 5, _metadata(measured), sample_rate=rate)
    clips = [write_wav(x[i], stem.parent / f"{stem.name}_{names[i]}.wav", rate) for i in range(min(len(x), len(names)))]
    return [picture, _beside(stem, ".wav"), *clips]


# ---- video --------------------------------------------------------------------------------------


def shuffled(videos: Tensor, seed: int = 0) -> Tensor:
    """Each video (n, C, T, H, W) with its frames in a random order of its own."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(videos.shape[2], generator=g) for _ in range(len(videos))])  # (n, T)
    return videos[torch.arange(len(videos))[:, None], :, order].transpose(1, 2)


def video_rows(samples: Tensor, labels: Tensor, real: Tensor, real_labels: Tensor, reference: Tensor,
               digit_size: int) -> list[dict]:
    """unnoise.video.video_report of the samples and the real videos, then of both with their frames
    shuffled in time; reference: the frame features (N, D) of the per-frame FD."""
    sets = (("samples", samples, labels), ("real test", real, real_labels),
            ("samples, frames shuffled", shuffled(samples), labels),
            ("real test, frames shuffled", shuffled(real), real_labels))
    return [{"set": name, **video_report(videos, truth, reference, digit_size)} for name, videos, truth in sets]


def evaluate_video(pipe: Pipeline, sampling: Sampling, run: str, progress: bool = True) -> Measured:
    """Class-grid samples and as many real test videos (spread over the split), measured as video_rows
    says, the FD against the frames of REFERENCE_VIDEOS training videos."""
    data = replace(pipe.config.data, independent_fraction=0.0)  # videos only, no rows of unrelated frames
    train, test = load_dataset(data), load_dataset(replace(data, split="test"))
    step = max(1, len(train) // REFERENCE_VIDEOS)  # spread over the classes: the set is sorted by label
    videos = train.batch(torch.arange(0, len(train), step)[:REFERENCE_VIDEOS])[0]
    reference = frame_classes(videos, data.digit_size)[1].flatten(0, 1)  # (N T, D)
    real, real_labels = test.batch(torch.linspace(0, len(test) - 1, sampling.n).long())
    labels = torch.arange(sampling.n) % len(train.class_names)
    x, seconds = sampling.draw(pipe, labels, progress)
    rows = video_rows(x, labels, real, real_labels, reference, data.digit_size)
    return Measured({**sampling.header(pipe, run, seconds), "rows": rows}, x)


def _video_files(measured: Measured, pipe: Pipeline, stem: Path) -> list[Path]:
    """The first videos playing in a grid (GIF) and the first ten as rows of frames (PNG)."""
    x, meta = measured.samples, _metadata(measured, text=False)
    return [save_gif(x[:VIDEO_PREVIEW], _beside(stem, ".gif"), columns=10, metadata=meta),
            save_video_strip(x[:10], _beside(stem, ".png"), metadata={k: str(v) for k, v in meta.items()})]


# ---- molecules ----------------------------------------------------------------------------------


def measure_molecules(name: str, molecules: list) -> dict:
    """A row: stability, validity and uniqueness of the molecules, and their mean atom count."""
    row = {"set": name, **stability(molecules), **validity_uniqueness(molecules)}
    row["mean_atoms"] = sum(len(m) for m in molecules) / len(molecules)
    return row


def evaluate_molecules(pipe: Pipeline, sampling: Sampling, run: str, progress: bool = True) -> Measured:
    """Samples, as many real molecules of the held-out split (qm9: "QM9 test") and noise molecules
    of the real ones' atom counts and elements, each measured by measure_molecules."""
    data = pipe.config.data
    split = eval_split(data.name)
    real = load_dataset(replace(data, split=split, limit=sampling.n)).molecules()
    x, seconds = sampling.draw(pipe, progress=progress)
    name = f"{'QM9' if data.name == 'qm9' else data.name} {split}"
    rows = [measure_molecules("samples", molecules_of(x, pipe.rendering["elements"])), measure_molecules(name, real),
            measure_molecules("noise", noise_molecules(real, sampling.n))]
    return Measured({**sampling.header(pipe, run, seconds), "rows": rows}, x)


def _molecule_files(measured: Measured, pipe: Pipeline, stem: Path) -> list[Path]:
    """Every sample as .xyz and a picture of the first ones."""
    molecules = molecules_of(measured.samples, pipe.rendering["elements"])
    return [render_molecules(molecules[:MOLECULE_PREVIEW], _beside(stem, ".png"), columns=4,
                             metadata=_metadata(measured)),
            write_xyz(molecules, _beside(stem, ".xyz"))]


# ---- the files, and `unnoise eval` --------------------------------------------------------------


def _beside(stem: Path, suffix: str) -> Path:
    """stem with suffix appended (a stem may hold dots, e.g. g2.0)."""
    return stem.with_name(stem.name + suffix)


def _metadata(measured: Measured, text: bool = True) -> dict:
    """What the preview files record: run, step, guidance (conditional runs) and sampler; as text for PNGs."""
    meta = {k: measured.report[k] for k in ("run", "step", "guidance", "sampler") if k in measured.report}
    return {k: str(v) for k, v in meta.items()} if text else meta


@dataclass(frozen=True)
class Kind:
    """What `unnoise eval` does with one kind of run."""

    measures: str  # what --help says it measures
    options: tuple[str, ...]  # the eval options it takes (argument names), besides the checkpoint and device
    n: int  # samples when --n is not given
    evaluate: Callable[..., Measured]  # (pipe, sampling, run, [features], progress) -> Measured
    files: Callable[[Measured, Pipeline, Path], list[Path]]  # the preview files beside the report


COMMON_OPTIONS = ("n", "seed", "sampler", "steps", "spacing", "batch_size")  # what every kind takes
KINDS = {
    "audio": Kind("FD and class accuracy in the data set's audio feature network (--features: another file) "
                  "against the held-out clips, beside the training clips and white noise at their loudness",
                  COMMON_OPTIONS + ("guidance", "features"), 500, evaluate_audio, _audio_files),
    "video": Kind("trajectory error, ink speed, frame agreement, digit accuracy and per-frame FD in the MNIST "
                  "network, beside real test videos, and both with frames shuffled in time",
                  COMMON_OPTIONS + ("guidance",), 500, evaluate_video, _video_files),
    "molecule": Kind("atom and molecule stability, RDKit validity and uniqueness, beside real held-out "
                     "molecules and noise molecules", COMMON_OPTIONS, 1000, evaluate_molecules, _molecule_files),
}


def write_measured(measured: Measured, pipe: Pipeline, stem: str | Path) -> list[Path]:
    """The report as <stem>.json and the kind's preview files beside it (<stem>.png, ...); returns them."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    report = write_text_atomic(_beside(stem, ".json"), json.dumps(measured.report, indent=2) + "\n")
    return [report, *KINDS[pipe.modality].files(measured, pipe, stem)]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(kind: str, given: Iterable[str]) -> None:
    """Raise ValueError naming every option given (argument names, e.g. "batch_size") that `kind`
    does not take, with the kinds each applies to (image runs take them all)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of run {kind!r}; measured here: {', '.join(KINDS)}")
    wrong = [name for name in given if name not in KINDS[kind].options]
    if wrong:
        named = ", ".join(f"{_flag(o)} (for {_runs(['image', *(k for k in KINDS if o in KINDS[k].options)])})"
                          for o in wrong)
        raise ValueError(f"{named} {'does' if len(wrong) == 1 else 'do'} not apply to {kind} runs, which take "
                         f"{', '.join(map(_flag, KINDS[kind].options))}")


def _runs(kinds: list[str]) -> str:
    """The kinds as a phrase, e.g. "image, audio and video runs"."""
    return (", ".join(kinds[:-1]) + " and " + kinds[-1] if len(kinds) > 1 else kinds[0]) + " runs"


def evaluate_kind(checkpoint: str | Path, kind: str, options: dict, device=None,
                  progress: bool = True) -> tuple[dict, list[Path]]:
    """`unnoise eval` of an audio, video or molecule run: the options given (by argument name, e.g.
    {"n": 100, "guidance": 2.0}) checked against the kind before anything loads, its measures run,
    and the report and preview files written into the checkpoint folder as
    eval-<sampler>-<steps>[-g<guidance>]-n<n>.json, .png, ...; returns the report and the files."""
    check_options(kind, options)
    spec, drawing = KINDS[kind], {f.name for f in fields(Sampling)}
    sampling = Sampling(**{"n": spec.n, **{k: v for k, v in options.items() if k in drawing and v is not None}})
    extra = {k: v for k, v in options.items() if k not in drawing}  # the kind's own, e.g. audio's features
    pipe = Pipeline.load(checkpoint, device)
    if pipe.modality != kind:
        raise ValueError(f"{checkpoint} is a {pipe.modality} run, not {kind}")
    measured = spec.evaluate(pipe, sampling, str(checkpoint), progress=progress, **extra)
    r = measured.report
    name = f"eval-{r['sampler']}-{r['steps']}" + (f"-g{r['guidance']}" if "guidance" in r else "") + f"-n{r['n']}"
    return r, write_measured(measured, pipe, Path(pipe.source) / name)


def format_measured(report: dict) -> str:
    """The report as text: its settings, then each row, two columns each."""
    return "\n\n".join(format_table(part) for part in ({k: v for k, v in report.items() if k != "rows"},
                                                       *report["rows"]))


def kinds_help() -> str:
    """What `unnoise eval --help` says of audio, video and molecule runs."""
    kinds = "; ".join(f"{k}: {spec.measures}" for k, spec in KINDS.items())
    extra = dict.fromkeys(o for spec in KINDS.values() for o in spec.options if o not in COMMON_OPTIONS)
    also = ", ".join(f"{_flag(o)} ({', '.join(k for k in KINDS if o in KINDS[k].options)})" for o in extra)
    return (f"Audio, video and molecule runs get their own measures of --n samples, each beside real data: {kinds}. "
            f"They take {', '.join(map(_flag, COMMON_OPTIONS))} and {also}; any other option is refused before "
            "sampling. They write eval-<sampler>-<steps>[-g<guidance>]-n<n>.json with preview files (.png and "
            ".wav, .gif or .xyz) into the checkpoint folder.")
