"""The page of `unnoise serve` in a real browser (headless Chromium through Playwright), over the real
server (`python -m unnoise.cli serve` in a subprocess) and a tiny MNIST model: the page fills its
lists without console errors, shows live previews then the result, cancels a running job, lists the
result in the gallery, inpaints an uploaded image with a painted mask (the kept pixels exactly the
image's), and asks for the token when the server wants one.

CI installs Chromium (Debian's `chromium`); without it these tests fail, saying so: they do not skip.
"""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright
from test_super_resolution import SR  # a tiny 14 -> 28 model of the cascade tests

from unnoise.config import load_config
from unnoise.training.loop import train

CHROMIUM = [os.environ.get("UNNOISE_CHROMIUM", ""), "/usr/lib/chromium/chromium", "/usr/bin/chromium"]
TOKEN = "s3cret-token"
WAIT_MS = 20_000  # the longest the page may take for anything (a job here takes well under a second or two)


# ---- the server and the browser ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`unnoise serve RUN` in a subprocess on a free loopback port."""

    def __init__(self, run: Path, out: Path, token: str | None = None):
        self.port, self.token, self.out = _free_port(), token, out
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "unnoise.cli", "serve", str(run), "--port", str(self.port), "--out", str(out)]
        self.log = open(out.parent / f"{out.name}.log", "w+")  # noqa: SIM115 - open while the server runs
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.process = subprocess.Popen(args + (["--token", token] if token else []), stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until GET /api/models answers (401 counts: the server is up and wants its token)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"unnoise serve exited with {self.process.returncode}:\n{self.log.read()}")
            try:
                urllib.request.urlopen(self.url + "/api/models", timeout=2).close()
                return
            except urllib.error.HTTPError as err:
                if err.code == 401 and self.token:
                    return
                raise
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"unnoise serve did not answer on {self.url} within {timeout} s")

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def servers(tiny_mnist_run, tmp_path_factory):
    """The same tiny model served twice: without a token, and with one (both started at once)."""
    root, run = tmp_path_factory.mktemp("serve-browser"), tiny_mnist_run
    started = {"open": Server(run, root / "out"), "token": Server(run, root / "out-token", TOKEN)}
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def browser():
    found = [p for p in CHROMIUM if p and Path(p).is_file()]
    if not found:
        pytest.fail("these tests need Chromium: apt-get install chromium (Debian), or set UNNOISE_CHROMIUM to a "
                    f"Chromium binary; looked for {', '.join(p for p in CHROMIUM if p)}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=found[0], headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; page.problems collects console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    yield page
    context.close()


def _open(page, server) -> None:
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")


def _submit(page, **fields) -> str:
    """Fill the form's fields (id -> value), press Generate; the new job's id."""
    for name, value in fields.items():
        if name == "sampler":
            page.select_option("#sampler", value)
        else:
            page.fill(f"#{name}", str(value))
    with page.expect_response(lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST") as answer:
        page.click("#submit")
    assert answer.value.status == 202, answer.value.text()
    job_id = answer.value.json()["id"]
    page.wait_for_function("id => document.getElementById('preview').dataset.job === id", arg=job_id)  # watched
    return job_id


def _wait_status(page, *texts: str) -> str:
    page.wait_for_function("texts => texts.includes(document.getElementById('status').textContent)", arg=list(texts))
    return page.text_content("#status")


def _job(server, job_id: str) -> dict:
    return json.loads(server.get(f"/api/jobs/{job_id}"))


# ---- the page ---------------------------------------------------------------------------------


def test_the_page_loads_its_models_and_samplers(servers, page):
    _open(page, servers["open"])
    assert page.locator("#model option").all_text_contents() == ["tiny (step 5)"]
    samplers = page.locator("#sampler option").all_text_contents()
    assert {"ddpm", "ddim", "heun", "dpmpp_2m"} <= set(samplers)
    assert page.input_value("#sampler") == "heun" and page.input_value("#steps") == "3"  # the run's defaults
    assert page.locator("#label option").count() == 11  # "each sample a class" and 0..9
    assert page.is_hidden("#edit-box") and page.is_hidden("#token-box")  # mode "from noise" edits no image
    assert page.text_content("#status") == "idle"
    assert page.problems == []


def test_a_job_shows_previews_then_its_result(servers, page):
    _open(page, servers["open"])
    # every src #preview takes, in order (a MutationObserver sees each change, however fast they come)
    page.evaluate("""() => {
        const img = document.getElementById('preview');
        window.srcs = [];
        new MutationObserver((records) => {
            for (const r of records) window.srcs.push(img.getAttribute('src'));
        }).observe(img, { attributes: true, attributeFilter: ['src'] });
    }""")
    job_id = _submit(page, sampler="ddim", steps=30, n=4, seed=3)
    assert _wait_status(page, "done", "cancelled") == "done"
    result = f"/api/jobs/{job_id}/result.png"
    page.wait_for_function("r => document.getElementById('preview').getAttribute('src') === r", arg=result)
    srcs = page.evaluate("window.srcs")
    assert srcs[-1] == result
    previews = srcs[:-1]
    assert previews and all(s.startswith("data:image/png;base64,") for s in previews)
    assert len(set(previews)) >= 3, f"{len(set(previews))} distinct previews of {len(previews)}"
    assert int(page.get_attribute("#preview", "data-previews")) == len(previews)
    assert page.evaluate("document.getElementById('progress').value") == 30
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    assert page.problems == []


def test_cancel_stops_a_running_job(servers, page):
    _open(page, servers["open"])
    job_id = _submit(page, sampler="ddim", steps=1000, n=4)  # seconds of work on this machine
    page.wait_for_function("document.getElementById('status').textContent.startsWith('step ')")
    assert page.is_enabled("#cancel")
    page.click("#cancel")
    assert _wait_status(page, "cancelled", "done") == "cancelled"
    assert page.is_disabled("#cancel")
    job = _job(servers["open"], job_id)
    assert job["state"] == "cancelled" and 1 <= job["progress"] < job["total"] == 1000, job
    assert page.problems == []


def test_the_gallery_shows_finished_jobs(servers, page):
    _open(page, servers["open"])
    earlier = _submit(page, sampler="ddim", steps=300, n=2, seed=40)  # still running when the next is sent
    job_id = _submit(page, sampler="dpmpp_2m", steps=7, n=3, seed=41)
    assert _job(servers["open"], earlier)["state"] in ("queued", "running")
    assert _wait_status(page, "done", "cancelled") == "done"
    # the page follows the newest job; the one before it, unfollowed, is in the gallery all the same
    assert page.locator("#gallery .card").nth(1).get_attribute("data-job") == earlier
    for reload in (False, True):  # the card added when the job finished, then the gallery read from the API
        if reload:
            _open(page, servers["open"])
        card = page.locator(f"#gallery .card[data-job='{job_id}']")
        card.wait_for()
        page.wait_for_function("id => { const img = document.querySelector(`#gallery .card[data-job='${id}'] img`);"
                               " return img && img.complete && img.naturalWidth > 0; }", arg=job_id)
        text = card.locator("pre").text_content()
        assert "dpmpp_2m, 7 steps" in text and "seed 41, n 3" in text and "tiny · sample" in text, text
    assert page.locator("#gallery .card").first.get_attribute("data-job") == job_id  # newest first
    assert page.problems == []


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded(data_url: str) -> np.ndarray:
    """A data: URL the page sent, as the server reads it: greyscale uint8."""
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L"))


def test_inpainting_from_the_page_keeps_the_unpainted_pixels(servers, page, tmp_path):
    yy, xx = np.mgrid[0:28, 0:28]
    image = ((xx * 9 + yy * 4) % 256).astype(np.uint8)  # a grey 28x28 picture: every value its own
    image[8:20, 11:17] = 250
    (tmp_path / "picture.png").write_bytes(_png(image))

    _open(page, servers["open"])
    page.check("#mode-inpaint")
    assert page.is_visible("#mask-canvas") and page.input_value("#sampler") == "ddpm"  # the inpainting default
    page.set_input_files("#upload", str(tmp_path / "picture.png"))
    page.wait_for_function("document.getElementById('image-canvas').getContext('2d')"
                           ".getImageData(0, 0, 28, 28).data.some((v, i) => i % 4 === 3 && v > 0)")
    box = page.locator("#mask-canvas").bounding_box()  # 224 CSS pixels show the 28 of the model: 8 a pixel
    scale = box["width"] / 28

    def at(x: float, y: float) -> tuple[float, float]:  # model pixel (x, y) -> the page's coordinates
        return box["x"] + x * scale, box["y"] + y * scale

    for (x0, y0), (x1, y1) in (((6, 6), (22, 6)), ((22, 6), (22, 12))):  # a stroke and a turn: an L
        page.mouse.move(*at(x0, y0))
        page.mouse.down()
        page.mouse.move(*at(x1, y1), steps=8)
        page.mouse.up()

    page.fill("#steps", "12")
    page.fill("#n", "2")
    with page.expect_request(lambda r: r.url.endswith("/api/jobs") and r.method == "POST") as sent:
        job_id = _submit(page)
    body = sent.value.post_data_json
    assert body["mode"] == "inpaint" and body["sampler"] == "ddpm" and body["steps"] == 12
    assert np.array_equal(_decoded(body["image"]), image)  # the canvas passed the picture on unchanged
    keep = _decoded(body["mask"]) < 128  # as the server reads a mask: dark is kept
    assert not keep[6, 6:23].any() and not keep[6:13, 22].any()  # the painted L is generated...
    assert keep[20:, :].all() and keep[:, :3].all() and keep.sum() > 28 * 28 // 2  # ... the rest kept
    assert _wait_status(page, "done", "cancelled") == "done", page.text_content("#status")

    with np.load(io.BytesIO(servers["open"].get(f"/api/jobs/{job_id}/result.npz"))) as f:
        samples = f["samples"]
        settings = json.loads(str(f["settings"]))
    assert samples.shape == (2, 1, 28, 28) and settings["mode"] == "inpaint"
    known = image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)  # as the server reads the image
    for x in samples[:, 0]:
        # a pixel model's known part at t = 0 is the image itself: exactly, not approximately
        assert np.array_equal(x[keep], known[keep]), np.abs(x[keep] - known[keep]).max()
        assert np.abs(x[~keep] - known[~keep]).max() > 0.2  # the painted region was generated anew
    assert page.problems == []


def test_the_page_asks_for_the_token(servers, page):
    server = servers["token"]
    page.goto(server.url + "/")
    page.locator("#token-box").wait_for(state="visible")
    page.wait_for_function("document.getElementById('status').className === 'failed'")
    assert "401" in page.text_content("#status") and page.locator("#model option").count() == 0
    page.fill("#token", TOKEN)
    page.press("#token", "Enter")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert page.text_content("#status") == "idle"
    job_id = _submit(page, sampler="ddim", steps=4, n=2)  # the token goes with the job, its events and its images
    assert _wait_status(page, "done", "cancelled") == "done"
    page.wait_for_function("id => { const img = document.querySelector(`#gallery .card[data-job='${id}'] img`);"
                           " return img && img.complete && img.naturalWidth > 0; }", arg=job_id)
    assert page.evaluate("document.getElementById('preview').naturalWidth") > 0
    # the only errors: the browser's note of the first, refused, call
    assert all("401" in p for p in page.problems) and page.problems, page.problems


def test_a_super_resolution_model_takes_its_low_resolution_image_from_the_page(tmp_path_factory, page, tmp_path):
    root = tmp_path_factory.mktemp("serve-browser-sr")
    train(load_config(None, tree={**SR, "out": str(root / "sr")}), quiet=True)
    server = Server(root / "sr", root / "out")
    try:
        server.wait_ready()
        low = np.random.default_rng(1).integers(0, 256, (14, 14), dtype=np.uint8)
        (tmp_path / "low.png").write_bytes(_png(low))
        _open(page, server)
        assert page.is_visible("#hint-box") and page.is_visible("#hint-noise")
        page.set_input_files("#hint-upload", str(tmp_path / "low.png"))
        page.wait_for_function("document.getElementById('hint-canvas').getContext('2d')"
                               ".getImageData(0, 0, 14, 14).data.some((v, i) => i % 4 === 0 && v > 0)")
        page.fill("#hint-noise", "0.05")
        page.fill("#steps", "3")
        with page.expect_request(lambda r: r.url.endswith("/api/jobs") and r.method == "POST") as sent:
            job_id = _submit(page)
        assert _wait_status(page, "done", "cancelled") == "done"
        body, job = sent.value.post_data_json, _job(server, job_id)
    finally:
        server.stop()
    assert np.array_equal(_decoded(body["hint"]), low) and body["hint_noise"] == 0.05
    assert job["settings"]["hint"] == "lowres" and job["settings"]["hint_noise"] == 0.05 and not page.problems
