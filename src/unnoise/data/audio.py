"""Short audio clips from Debian packages: recorded drum hits, synthesised spoken digits, recorded digits.

    set             source (Debian package)                          recorded?     clips (train/test)
    drums           hydrogen-drumkits: one-shot samples of 12 kits   recorded      398 / 72, 5 classes
    spoken_digits   espeak-ng and flite saying "zero".."nine"        synthesised   1880 / 360, 10 classes
    real_digits     asterisk-core-sounds-en-wav: one speaker         recorded      10 (one per digit)

    train = drums("train")                        # AudioSet: (398, 1, 8192) float32 at 16 kHz
    x, labels = train.batch(torch.arange(8))      # (8, 1, 8192), (8,) class indices
    spoken_digits("test").sources[:2]             # the voice of each clip: "espeak-ng:en-us+f1", ...

Every clip is prepared alike (fit_clip): mono (channels averaged), resampled to `sample_rate`
(scipy.signal.resample_poly), its leading silence cut at the onset = the first sample whose magnitude
exceeds ONSET (2 %) of the clip's peak, cut or zero-padded at the end to `length`, then scaled so its
peak is PEAK (0.9). So every clip is equally loud: a drum's velocity layers differ in timbre only.

Drums. Classes come from each instrument's <name> in the kit's drumkit.xml (XML namespaces stripped;
the new format lists files as <layer><filename>, the old one as <filename> under <instrument>), lower
cased, by the first rule that matches (drum_class): the African and hand percussion names (sangban,
dununba, kenkeni, djembe, cowbell, tambourine, agogo) are dropped first, so "cowbell" is not a
cymbal; then kick, snare (rim shots included), hihat, tom (a word starting "tom", not "custom"),
cymbal (crash, ride, china, splash, cup, bell); every other instrument (claps, percussion, effects,
unnamed slots "Sample: ..." and "17".."32") and the guitar kit belofilms_GuitarStrums are dropped.
Every existing velocity-layer file is one clip (a file listed twice counts once): 470 clips. The
test split is three whole kits that have all five classes, TEST_KITS (72 clips, 15 %): a test clip
comes from a kit never trained on.

Spoken digits. Each word is rendered by a subprocess into a temporary WAV, in a fixed plan drawn
from `seed` (spoken_digit_plan): 88 espeak-ng voices (8 English voices x 11 variants m1..m7, f1..f4;
the MBROLA voices need data Debian lacks) x 10 digits x 2 takes, each take with its own pitch
(-p 20..80) and rate (-s 130..210 wpm), and 4 flite voices x 10 digits x 12 takes, each with its
own rate (duration_stretch 0.85..1.25) and pitch factor 0.85..1.2 (kal16: int_f0_target_mean =
factor x 105 Hz; awb, slt: f0_shift = factor; rms ignores both, so only its rate varies). That is
1760 + 480 = 2240 clips: every voice says every digit at least twice at different pitch and rate,
while rendering stays near half a minute on 2 idle cores (~25 ms a clip, most of it starting the
synthesiser). The test split is whole voices never heard in training: espeak-ng combinations number
6, 13, ..., 83 in voice-major order (every seventh, 12 of 88) and flite's awb, 360 clips (16 %).
Classes are the words, labels 0..9.

Cache: each set's clips are built once into `cache_folder()` as 16-bit PCM (np.int16: CD resolution,
half the size of float32) with every setting and a digest of the sources in the file name, written
atomically; the values served are pcm / 32767.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch import Tensor
from tqdm import tqdm

from unnoise.audio import resample
from unnoise.data.emoji import cache_folder
from unnoise.data.tensor_set import TensorSet
from unnoise.files import write_atomic

AUDIO_SPLITS = ("train", "test", "all")
ONSET = 0.02  # a clip starts at its first sample above this fraction of its peak magnitude
PEAK = 0.9  # every clip's peak magnitude after normalisation
VERSION = 1  # of the building code: part of every cache file name

DRUMKITS = Path("/usr/share/hydrogen/data/drumkits")
DRUM_CLASSES = ("kick", "snare", "hihat", "tom", "cymbal")
TEST_KITS = ("Audiophob", "ColomboAcousticDrumkit", "Millo_MultiLayered3")  # all five classes each
_DRUM_RULES = (  # tried in order on the lower-cased instrument name; the first match decides
    (None, r"sangban|dununba|kenkeni|djembe|cowbell|tambourine|agogo"),
    ("kick", r"\b(kick|bass ?drum|bassdrum|bd)\b|kick"),
    ("snare", r"snare|rim ?shot|rimshot"),
    ("hihat", r"hi-?\s?hat|\bhh\b|\bhat\b|ohh\b"),
    ("tom", r"\btom"),
    ("cymbal", r"crash|ride|china|splash|cymbal|cup|bell"),
)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
                 "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
ESPEAK_TAKES, FLITE_TAKES = 2, 12  # renders of each digit per voice, each at its own pitch and rate
TEST_EVERY = 7  # espeak-ng combination k (voice-major) is a test voice when k % TEST_EVERY == TEST_EVERY - 1
FLITE_TEST_VOICES = ("awb",)
KAL_F0 = 105.0  # Hz: kal16's mean pitch as rendered here (autocorrelation), scaled by the pitch factor
SPEAKERS_PACKAGE = "espeak-ng flite"

ASTERISK_DIGITS = Path("/usr/share/asterisk/sounds/en_US_f_Allison/digits")


class AudioSet(TensorSet):
    """Clips (N, 1, L) float32 in [-1, 1] at `sample_rate` Hz, with class labels (N,) and per-clip sources."""

    modality = "audio"  # how a sample is shown (unnoise.modality)

    def __init__(self, clips: Tensor, labels: Tensor | None, *, name: str, class_names: Sequence[str],
                 sample_rate: int, sources: Sequence[str]):
        if clips.ndim != 3 or clips.shape[1] != 1:
            raise ValueError(f"clips must be (N, 1, L), got shape {tuple(clips.shape)}")
        if len(sources) != clips.shape[0]:
            raise ValueError(f"sources must name each of the {clips.shape[0]} clips, got {len(sources)}")
        super().__init__(clips.to(torch.float32), labels, name=name, class_names=class_names)
        self.sample_rate = sample_rate  # Hz
        self.sources = list(sources)  # clip i came from sources[i]: a kit's file, or a synthesiser's voice

    @property
    def clips(self) -> Tensor:
        """(N, 1, L) float32."""
        return self.values

    @property
    def length(self) -> int:
        return self.values.shape[-1]


def fit_clip(x: np.ndarray, rate: int, sample_rate: int, length: int) -> np.ndarray | None:
    """A recording (L0,) or (L0, channels) at `rate` -> (length,) float32 as the module docstring says
    (mono, resampled, onset-trimmed, cut or padded, peak PEAK); None if it is silent."""
    x = np.asarray(x, dtype=np.float64)
    x = resample(x.mean(1) if x.ndim == 2 else x, rate, sample_rate)
    peak = np.abs(x).max(initial=0.0)
    if not peak > 0:
        return None
    onset = int(np.argmax(np.abs(x) > ONSET * peak))
    clip = np.zeros(length)
    kept = x[onset:onset + length]
    clip[:len(kept)] = kept
    return (clip * (PEAK / np.abs(clip).max())).astype(np.float32)


def _check(split: str, sample_rate: int, length: int, seed: int = 0) -> None:
    if split not in AUDIO_SPLITS:
        raise ValueError(f"split must be one of {', '.join(AUDIO_SPLITS)}, got {split!r}")
    if not (isinstance(sample_rate, int) and 1000 <= sample_rate <= 96000):
        raise ValueError(f"sample_rate must be an integer number of Hz in 1000..96000, got {sample_rate!r}")
    if not (isinstance(length, int) and 256 <= length <= 10 * sample_rate):
        raise ValueError(f"length must be an integer in 256..{10 * sample_rate} samples (10 s), got {length!r}")
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _to_pcm(clips: list[np.ndarray]) -> np.ndarray:
    """float clips in [-1, 1] -> (N, 1, L) int16, rounded."""
    return np.round(np.stack(clips)[:, None] * 32767).astype(np.int16)


def _audio_set(table_path: Path, split: str, is_test: Callable[[np.ndarray], np.ndarray], name: str, class_names,
               sample_rate: int) -> AudioSet:
    """The rows of a cached table (clips, labels, sources) in `split`; is_test: sources (N,) -> (N,) bool."""
    with np.load(table_path) as table:  # plain arrays: no pickle needed
        pcm, labels, sources = table["clips"], table["labels"], table["sources"]
    test = is_test(sources)
    keep = {"train": ~test, "test": test, "all": np.ones_like(test)}[split]
    clips = torch.from_numpy(pcm[keep]).to(torch.float32) / 32767
    return AudioSet(clips, torch.from_numpy(labels[keep]), name=name, class_names=class_names,
                    sample_rate=sample_rate, sources=sources[keep].tolist())


# ---- drums -------------------------------------------------------------------------------------------


def drum_class(kit: str, instrument: str) -> str | None:
    """The DRUM_CLASSES name of a kit's instrument, or None when it is dropped (module docstring)."""
    if kit == "belofilms_GuitarStrums":
        return None
    name = instrument.strip().lower()
    if name.startswith("sample:"):  # unnamed slots holding loops
        return None
    for cls, rule in _DRUM_RULES:
        if re.search(rule, name):
            return cls
    return None


def drum_files(root: Path = DRUMKITS) -> list[tuple[str, str, str]]:
    """(kit, file path relative to root, class) of every existing sample file of a kept instrument, sorted."""
    rows = []
    for xml in sorted(root.glob("*/drumkit.xml")):
        tree = ET.parse(xml).getroot()
        for element in tree.iter():
            element.tag = element.tag.split("}")[-1]  # 5 kits use the hydrogen-music.org namespace
        kit = xml.parent.name
        for instrument in tree.iterfind("instrumentList/instrument"):
            cls = drum_class(kit, instrument.findtext("name") or "")
            if cls is None:
                continue
            names = [el.text for el in instrument.findall("layer/filename") + instrument.findall("filename")]
            for name in names:
                if name and (xml.parent / name.strip()).is_file():  # 17 listed files are absent in Debian's kits
                    rows.append((kit, f"{kit}/{name.strip()}", cls))
    return sorted(set(rows))


def drums(split: str = "train", sample_rate: int = 16000, length: int = 8192, seed: int = 0,
          root: str | Path = DRUMKITS) -> AudioSet:
    """Drum one-shots of `split` as (N, 1, length) clips with labels over DRUM_CLASSES (module docstring).

    Nothing in the set is random: `seed` is accepted so every audio set takes the same arguments,
    and gives the same clips whatever its value."""
    _check(split, sample_rate, length, seed)
    root = Path(root)
    if not any(root.glob("*/drumkit.xml")):
        raise ValueError(f"no drum kits under {root}: install them with `apt-get install hydrogen-drumkits`")
    files = drum_files(root)
    digest = hashlib.sha256(repr([(f, (root / f).stat().st_size) for _, f, _ in files]).encode()).hexdigest()[:16]
    path = cache_folder() / f"drums-{sample_rate}hz-{length}-v{VERSION}-{digest}.npz"
    if not path.is_file():
        clips, labels, sources = [], [], []
        for _, file, cls in tqdm(files, desc="reading drum kits", disable=None):
            data, rate = soundfile.read(str(root / file), dtype="float64")
            clip = fit_clip(data, rate, sample_rate, length)
            if clip is not None:  # none of Debian's files is silent; another kit's might be
                clips.append(clip)
                labels.append(DRUM_CLASSES.index(cls))
                sources.append(file)
        write_atomic(path, lambda tmp: np.savez_compressed(tmp, clips=_to_pcm(clips), labels=np.array(labels),
                                                           sources=np.array(sources, dtype=str)))
    return _audio_set(path, split, lambda sources: np.array([s.split("/", 1)[0] in TEST_KITS for s in sources]),
                      "drums", DRUM_CLASSES, sample_rate)


# ---- spoken digits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Take:
    """One planned render: which synthesiser and voice says which digit, at what pitch and rate."""

    synth: str  # "espeak-ng" or "flite"
    voice: str  # espeak-ng "en-us+m3", flite "slt"
    digit: int  # 0..9
    pitch: float  # espeak-ng -p 0..99; flite: a factor on the voice's mean pitch
    rate: float  # espeak-ng -s words a minute; flite duration_stretch (> 1 slower)

    @property
    def source(self) -> str:
        return f"{self.synth}:{self.voice}"

    def command(self, out: Path) -> list[str]:
        word = DIGIT_WORDS[self.digit]
        if self.synth == "espeak-ng":
            return ["espeak-ng", "-v", self.voice, "-p", str(int(self.pitch)), "-s", str(int(self.rate)), "-w",
                    str(out), word]
        pitch = (["--setf", f"int_f0_target_mean={KAL_F0 * self.pitch:.1f}"] if self.voice == "kal16"
                 else ["--setf", f"f0_shift={self.pitch:.3f}"])
        return ["flite", "-voice", self.voice, *pitch, "--setf", f"duration_stretch={self.rate:.3f}", "-t", word,
                "-o", str(out)]


def spoken_digit_plan(seed: int = 0) -> tuple[list[Take], np.ndarray]:
    """Every take (module docstring), in a fixed order, and whether each is in the test split (N,) bool."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 18]))
    takes, test = [], []
    for k, (voice, variant) in enumerate((v, w) for v in ESPEAK_VOICES for w in ESPEAK_VARIANTS):
        for digit in range(10):
            for _ in range(ESPEAK_TAKES):
                takes.append(Take("espeak-ng", f"{voice}+{variant}", digit, float(rng.integers(20, 81)),
                                  float(rng.integers(130, 211))))
                test.append(k % TEST_EVERY == TEST_EVERY - 1)
    for voice in FLITE_VOICES:
        for digit in range(10):
            for _ in range(FLITE_TAKES):
                takes.append(Take("flite", voice, digit, float(rng.uniform(0.85, 1.2)), float(rng.uniform(0.85, 1.25))))
                test.append(voice in FLITE_TEST_VOICES)
    return takes, np.array(test)


def render_take(take: Take, sample_rate: int, length: int) -> np.ndarray:
    """One take as a (length,) float32 clip (fit_clip), rendered through a temporary WAV file."""
    with tempfile.TemporaryDirectory(prefix="unnoise-digit-") as folder:
        out = Path(folder) / "take.wav"
        done = subprocess.run(take.command(out), capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{' '.join(take.command(out))} failed: {done.stderr.strip()[:200]}")
        data, rate = soundfile.read(str(out), dtype="float64")
    clip = fit_clip(data, rate, sample_rate, length)
    if clip is None:
        raise RuntimeError(f"{take.synth} rendered silence for {take}")
    return clip


def _synth_versions() -> str:
    missing = [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    if missing:
        raise ValueError(f"spoken digits are rendered by {' and '.join(missing)}: install them with "
                         f"`apt-get install {SPEAKERS_PACKAGE}`")
    return " ".join(subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()
                    for tool in ("espeak-ng", "flite"))


def spoken_digits(split: str = "train", sample_rate: int = 16000, length: int = 16000, seed: int = 0,
                  workers: int = 2) -> AudioSet:
    """Synthesised spoken digits of `split` (N, 1, length) with labels 0..9 (module docstring); rendered
    on first use by `workers` parallel synthesiser processes (~25 s on 2 cores) and cached."""
    _check(split, sample_rate, length, seed)
    versions = _synth_versions()
    takes, test = spoken_digit_plan(seed)
    digest = hashlib.sha256(f"{versions} {takes}".encode()).hexdigest()[:16]
    path = cache_folder() / f"spoken-digits-{sample_rate}hz-{length}-seed{seed}-v{VERSION}-{digest}.npz"
    if not path.is_file():
        with ThreadPoolExecutor(max(1, workers)) as pool:  # the work is in the subprocesses: threads suffice
            jobs = pool.map(lambda take: render_take(take, sample_rate, length), takes)
            clips = list(tqdm(jobs, total=len(takes), desc="rendering spoken digits", disable=None))
        write_atomic(path, lambda tmp: np.savez_compressed(
            tmp, clips=_to_pcm(clips), labels=np.array([t.digit for t in takes]),
            sources=np.array([t.source for t in takes], dtype=str)))
    return _audio_set(path, split, lambda sources: test, "spoken-digits", DIGIT_WORDS, sample_rate)


def real_digits(sample_rate: int = 16000, length: int = 16000, root: str | Path = ASTERISK_DIGITS) -> AudioSet:
    """The ten recorded digits 0..9 of Asterisk's "Allison" prompts (8 kHz, one speaker), upsampled and
    prepared like every clip here: a small check that a network trained on synthetic voices hears speech."""
    _check("all", sample_rate, length)
    files = [Path(root) / f"{d}.wav" for d in range(10)]
    if not all(f.is_file() for f in files):
        raise ValueError(f"recorded digits not found in {root}: install them with "
                         "`apt-get install asterisk-core-sounds-en-wav`")
    clips = []
    for f in files:
        data, rate = soundfile.read(str(f), dtype="float64")
        clips.append(fit_clip(data, rate, sample_rate, length))
    return AudioSet(torch.from_numpy(_to_pcm(clips)).to(torch.float32) / 32767, torch.arange(10), name="real-digits",
                    class_names=DIGIT_WORDS, sample_rate=sample_rate, sources=[str(f) for f in files])
