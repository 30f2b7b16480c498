"""`unnoise serve` with models of other kinds of data than images: a tiny molecule model (EGNN on g2), a
tiny video model (moving MNIST), a tiny waveform model (WaveNet on AR(2)) served as it is (1-D signals)
and as audio. Step events carry the picture of the kind of the current x0 estimate (the bytes
unnoise.modality draws of bare sampling's estimate), results list and serve the file beside the
picture (.xyz, .gif, .wav) equal to what the npz samples give, the editing modes are refused for them
naming the mode and its kinds, and the page plays the sound, shows the animation and links the
coordinates (headless Chromium over the app on a loopback port).

CI needs Debian's chromium (as tests/test_serve_browser.py does) and the soundfile wheel."""

import base64
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import sync_playwright

from unnoise.chemistry import write_xyz
from unnoise.config import load_config
from unnoise.modality import CLIP_GAP, molecules_of, picture_png
from unnoise.pipeline import Pipeline
from unnoise.plots import image_grid
from unnoise.serve import Limits, create_app, load_models, work
from unnoise.serve.work import PREVIEW_FREE, PREVIEW_SHARE
from unnoise.training.loop import train

RATE = 8000  # Hz: the audio model's clips (1024 samples: more than log_mel's n_fft // 2 = 256)
MOLECULES = {"data": {"name": "g2"}, "model": {"preset": "egnn_tiny", "max_atoms": 14},
             "diffusion": {"schedule": "vp", "parameterization": "eps"},
             "train": {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2},
             "sample": {"n": 2, "steps": 3, "sampler": "ddpm"}}
VIDEOS = {"data": {"name": "moving-mnist", "frames": 4, "image_size": 8, "digit_size": 4},
          "model": {"preset": "video_unet_tiny"}, "train": {"steps": 2, "batch_size": 4, "log_every": 1,
                                                            "checkpoint_every": 2},
          "sample": {"n": 2, "steps": 2, "sampler": "ddim"}}
WAVES = {"data": {"name": "ar2", "length": 1024, "num_points": 64}, "model": {"preset": "wavenet_tiny", "length": 1024},
         "train": {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 2},
         "sample": {"n": 2, "steps": 3, "sampler": "heun"}}
CHROMIUM = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-kinds")
    for name, tree in (("g2", MOLECULES), ("moving", VIDEOS), ("ar2", WAVES)):
        train(load_config(None, tree={**tree, "out": str(root / name)}), quiet=True)
    return {name: root / name for name in ("g2", "moving", "ar2")}


@pytest.fixture(scope="module")
def models(runs):
    """g2 (molecules), moving (videos), ar2 (signals) and clips: ar2's network served as audio at RATE Hz."""
    served = load_models([runs["g2"], runs["moving"], runs["ar2"]])
    audio = dataclasses.replace(served["ar2"].pipe, modality="audio", rendering={"sample_rate": RATE})
    return served | {"clips": dataclasses.replace(served["ar2"], name="clips", pipe=audio)}


def client(models, tmp_path, **limits) -> TestClient:
    return TestClient(create_app(models, tmp_path / "results", Limits(**limits)))


def run_job(c: TestClient, ask: dict) -> tuple[list[dict], dict]:
    """Submit, follow the events to the end; the events and the job's status."""
    r = c.post("/api/jobs", json=ask)
    assert r.status_code == 202, r.text
    with c.stream("GET", f"/api/jobs/{r.json()['id']}/events") as stream:
        seen = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    return seen, c.get(f"/api/jobs/{r.json()['id']}").json()


def previews(seen: list[dict], steps: int) -> dict[int, bytes]:
    """The PNG previews of a job's step events, by step. A job keeps its newest preview only, so a
    reader that comes late sees the last step's alone; every step of these short jobs sends one."""
    shown = {e["step"]: e["preview"] for e in seen if e["type"] == "step" and "preview" in e}
    assert [e["step"] for e in seen if e["type"] == "step"] == list(range(1, steps + 1)) and steps in shown
    assert all(url.startswith("data:image/png;base64,") for url in shown.values())
    return {step: base64.b64decode(url.split(",", 1)[1]) for step, url in shown.items()}


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bare_estimates(pipe: Pipeline, n: int, **settings) -> list[torch.Tensor]:
    """The x0 estimates bare sampling makes at each step, decoded."""
    seen = []
    pipe.sample(n, callback=lambda b: seen.append(pipe.decode(b.step.x0_hat)), progress=False, **settings)
    return seen


def test_a_molecule_job_previews_its_estimate_and_serves_its_xyz(models, tmp_path):
    ask = {"model": "g2", "n": 3, "steps": 4, "seed": 7}
    with client(models, tmp_path) as c:
        seen, status = run_job(c, ask)
        xyz = c.get(status["files"]["xyz"])
        npz = c.get(status["files"]["npz"])
    pipe = models["g2"].pipe
    truth = bare_estimates(pipe, 3, steps=4, seed=7)
    assert previews(seen, 4) == {step: picture_png("molecule", truth[step - 1], **pipe.rendering)
                                 for step in previews(seen, 4)}
    files = {s: f"/api/jobs/{status['id']}/result.{s}" for s in ("png", "npz", "xyz")}
    assert status["files"] == files and seen[-1] == {"type": "done", "result": files["png"], "files": files}
    assert xyz.status_code == 200 and xyz.headers["content-type"] == "chemical/x-xyz" and xyz.content
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as f:
        samples = torch.from_numpy(f["samples"])  # (3, 14, 8)
    first = int(xyz.text.splitlines()[0])  # an .xyz frame opens with its atom count
    assert first == int((samples[0].abs().sum(-1) > 0).sum()) and first > 0
    expected = write_xyz(molecules_of(samples, pipe.rendering["elements"]), tmp_path / "expected.xyz")
    assert xyz.text == expected.read_text()


def test_a_video_job_serves_its_gif(models, tmp_path):
    with client(models, tmp_path) as c:
        seen, status = run_job(c, {"model": "moving", "n": 3, "steps": 3, "seed": 2})
        gif = c.get(status["files"]["gif"])
        npz = c.get(status["files"]["npz"])
    truth = bare_estimates(models["moving"].pipe, 3, steps=3, seed=2)
    assert previews(seen, 3) == {step: picture_png("video", truth[step - 1]) for step in previews(seen, 3)}
    assert sorted(status["files"]) == ["gif", "npz", "png"] and gif.headers["content-type"] == "image/gif"
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as f:
        videos = torch.from_numpy(f["samples"])  # (3, 1, 4, 8, 8)
    animation = Image.open(io.BytesIO(gif.content))
    assert animation.format == "GIF" and json.loads(animation.info["comment"])["seed"] == "2"  # as the PNG's text
    for t in range(4):  # frame t: frame t of every video, in a grid drawn 2x (unnoise.video.save_gif)
        animation.seek(t)
        grid = image_grid(videos[:, :, t]).convert("L")
        assert np.array_equal(np.asarray(animation.convert("L"))[::2, ::2], np.asarray(grid))


def test_an_audio_job_serves_the_clips_in_turn_as_wav(models, tmp_path):
    with client(models, tmp_path) as c:
        seen, status = run_job(c, {"model": "clips", "n": 2, "steps": 3, "seed": 4})
        wav = c.get(status["files"]["wav"])
        npz = c.get(status["files"]["npz"])
        gone = c.get(f"/api/jobs/{status['id']}/result.xyz")
    truth = bare_estimates(models["clips"].pipe, 2, steps=3, seed=4)
    assert previews(seen, 3) == {step: picture_png("audio", truth[step - 1], sample_rate=RATE)
                                 for step in previews(seen, 3)}
    assert sorted(status["files"]) == ["npz", "png", "wav"] and gone.status_code == 404
    assert wav.headers["content-type"] == "audio/wav"
    sound, rate = soundfile.read(io.BytesIO(wav.content), dtype="float64")
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as f:
        clips = f["samples"][:, 0].clip(-1, 1)  # (2, 1024); a 16-bit PCM file holds [-1, 1), clipped
    gap = int(CLIP_GAP * RATE)
    assert rate == RATE and sound.shape == (2 * (1024 + gap),)
    sound = sound.reshape(2, 1024 + gap)
    assert np.abs(sound[:, :1024] - clips).max() <= 2**-15 and not sound[:, 1024:].any()  # rounding to 1/32768


def test_a_signal_job_previews_and_writes_nothing_beside_its_picture(models, tmp_path):
    with client(models, tmp_path) as c:
        seen, status = run_job(c, {"model": "ar2", "n": 2, "steps": 3, "seed": 4})
        wav = c.get(f"/api/jobs/{status['id']}/result.wav")
    truth = bare_estimates(models["ar2"].pipe, 2, steps=3, seed=4)
    assert previews(seen, 3) == {step: picture_png("signal", truth[step - 1]) for step in previews(seen, 3)}
    assert sorted(status["files"]) == ["npz", "png"] and wav.status_code == 404
    assert wav.json()["detail"].endswith("results are result.png, result.npz, not result.wav")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [f"{status['id']}.{s}" for s in ("npz", "png")]


def test_slow_previews_take_a_bounded_share_of_a_job(models, tmp_path, monkeypatch):
    """Drawing a preview that takes longer than a step (here 0.2 s against milliseconds): free up to
    PREVIEW_FREE seconds, then at most PREVIEW_SHARE of the job's time, and the last step's always."""
    drawn, draw = [], 0.2

    def slow(kind, x, **rendering):
        time.sleep(draw)
        drawn.append(kind)
        return png(np.zeros((2, 2), np.uint8))

    monkeypatch.setattr(work, "picture_png", slow)
    with client(models, tmp_path) as c:
        began = time.monotonic()
        seen, status = run_job(c, {"model": "ar2", "steps": 40, "sampler": "ddim", "preview_every": 1})
        took = time.monotonic() - began
    assert status["state"] == "done" and 40 in previews(seen, 40) and set(drawn) == {"signal"}
    assert len(drawn) >= PREVIEW_FREE / draw  # the free ones (one fewer where sleeps overrun) and the last
    assert len(drawn) * draw <= PREVIEW_FREE + 2 * draw + PREVIEW_SHARE * took  # one past the free time, the last


@pytest.mark.parametrize("model, kind", [("g2", "molecule"), ("clips", "audio")])
@pytest.mark.parametrize("mode", ["sdedit", "inpaint"])
def test_editing_modes_are_refused_for_other_kinds(models, tmp_path, model, kind, mode):
    picture = base64.b64encode(png(np.zeros((8, 8), np.uint8))).decode()
    with client(models, tmp_path) as c:
        described = {m["name"]: m for m in c.get("/api/models").json()["models"]}[model]
        bare = c.post("/api/jobs", json={"model": model, "mode": mode})
        given = c.post("/api/jobs", json={"model": model, "mode": mode, "image": picture, "mask": picture})
        assert c.get("/api/jobs").json()["jobs"] == []  # nothing was queued
    assert described["modes"] == ["sample"] and not described["editable"] and described["modality"] == kind
    for r in (bare, given):
        assert r.status_code == 422
        (detail,) = r.json()["detail"]
        assert detail["loc"] == ["body", "mode"]
        assert detail["msg"] == f"mode {mode} applies to image models only; {model!r} makes {kind} samples"


def test_forgotten_jobs_take_their_companion_files(models, tmp_path):
    with client(models, tmp_path, keep=1) as c:
        first = run_job(c, {"model": "g2", "steps": 2})[1]["id"]
        second = run_job(c, {"model": "g2", "steps": 2})[1]["id"]
        assert c.get(f"/api/jobs/{first}").status_code == 404
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [f"{second}.{s}" for s in ("npz", "png", "xyz")]


# ---- the page ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(models, tmp_path_factory, serving):
    """The app over the models served on a thread of this process (the audio model is made here, not
    loaded from a run, so `unnoise serve` in a subprocess cannot serve it)."""
    with serving(create_app(models, tmp_path_factory.mktemp("serve-page") / "results")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    found = [p for p in CHROMIUM if Path(p).is_file()]
    if not found:
        pytest.fail(f"this test needs Chromium: apt-get install chromium (Debian); looked for {', '.join(CHROMIUM)}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=found[0], headless=True)
        yield browser
        browser.close()


def test_the_page_plays_the_sound_and_links_the_coordinates(served, browser):
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.set_default_timeout(20_000)
    page.goto(served + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 4")
    links = {}
    beside = [("clips", "wav", "audio[controls]", "src"), ("moving", "gif", "> img", "src"),
              ("g2", "xyz", "a[download]", "href")]  # model, file, the element showing it, its URL attribute
    for model, suffix, extra, attribute in beside:
        page.select_option("#model", model)
        assert page.is_disabled("#mode-sdedit") and page.is_disabled("#mode-inpaint")
        page.fill("#steps", "2")
        page.fill("#n", "2")
        with page.expect_response(lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST") as answer:
            page.click("#submit")
        job = answer.value.json()["id"]
        page.wait_for_function("id => document.getElementById('preview').dataset.job === id", arg=job)  # watched
        page.wait_for_function("document.getElementById('status').textContent === 'done'")
        card = page.locator(f"#gallery .card[data-job='{job}'] {extra}")
        card.wait_for()
        live = page.locator(f"#result-extra {extra}")
        assert live.get_attribute(attribute) == card.get_attribute(attribute) == f"/api/jobs/{job}/result.{suffix}"
        assert page.locator("#result-extra > *").count() == 1  # what this job wrote beside its picture
        if model == "clips":
            page.wait_for_function("document.querySelector('#result-extra audio').duration > 0")
            duration = page.evaluate("document.querySelector('#result-extra audio').duration")
            assert duration == pytest.approx(2 * (1024 / RATE + CLIP_GAP), abs=1e-3)  # two clips and their gaps
        if model == "moving":
            page.wait_for_function("document.querySelector('#result-extra img').naturalWidth > 0")
        links[model] = card
    with page.expect_download() as download:
        links["g2"].click()
    assert Path(download.value.path()).read_text().splitlines()[0].strip().isdigit()  # an atom count
    assert problems == []
    page.close()
