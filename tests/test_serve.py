"""`unnoise serve` through FastAPI's test client on a tiny MNIST model: every endpoint, every
refusal (422 naming the field, 429 past the queue bound, 401 without the token, 404, 409), live
events with previews, cancelling one job, the results carrying their settings and equal to bare
`Pipeline.sample`; and the real server started by the command on a free loopback port."""

import base64
import io
import json
import socket
import subprocess
import sys
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from test_super_resolution import SR  # a tiny 14 -> 28 model of the cascade tests

from unnoise.cascade import super_resolve
from unnoise.cli import main
from unnoise.config import load_config
from unnoise.pipeline import Pipeline
from unnoise.serve import Limits, create_app, load_models
from unnoise.training.loop import train


@pytest.fixture(scope="module")
def run(tiny_mnist_run):
    return tiny_mnist_run


@pytest.fixture(scope="module")
def models(run):
    return load_models([run])


def client(models, tmp_path, **limits) -> TestClient:
    token = limits.pop("token", None)
    return TestClient(create_app(models, tmp_path / "results", Limits(**limits), token))


def png_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def events(c: TestClient, job_id: str) -> list[dict]:
    with c.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        return [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]


def wait(c: TestClient, job_id: str, states=("done", "cancelled", "failed"), timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = c.get(f"/api/jobs/{job_id}").json()
        if status["state"] in states:
            return status
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} still {status['state']} after {timeout} s")


def test_models_say_what_they_take(models, tmp_path):
    with client(models, tmp_path) as c:
        info = c.get("/api/models").json()
    (m,) = info["models"]
    assert m["name"] == "tiny" and m["classes"] == 10 and not m["text"] and m["shape"] == [1, 28, 28]
    assert m["class_names"] == [str(d) for d in range(10)] and m["editable"] and not m["latent"]
    assert m["defaults"] == {"sampler": "heun", "steps": 3, "spacing": "karras", "guidance": 1.0, "hint_noise": 0.0,
                             "prompts": []}
    assert m["gflop_per_call"] > 0 and "dpmpp_2m" in info["samplers"] and info["limits"]["max_n"] == 16


def test_a_job_streams_previews_and_its_result_equals_bare_sampling(models, run, tmp_path):
    ask = {"n": 3, "label": 7, "sampler": "dpmpp_2m", "steps": 12, "guidance": 2.0, "seed": 5}
    with client(models, tmp_path) as c:
        r = c.post("/api/jobs", json=ask)
        assert r.status_code == 202 and r.json()["total"] == 12
        seen = events(c, r.json()["id"])
        status = c.get(f"/api/jobs/{r.json()['id']}").json()
        png = c.get(status["result"])
        npz = c.get(status["result"].replace(".png", ".npz"))
    kinds = [e["type"] for e in seen]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "done" and kinds.count("step") == 12
    steps = [e for e in seen if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 13)) and steps[-1]["t"] == 0
    assert len({e["preview"] for e in steps if "preview" in e}) >= 3  # the estimate of x0 changes as it denoises
    assert status["state"] == "done" and status["progress"] == 12
    text = Image.open(io.BytesIO(png.content)).text
    assert json.loads(text["guidance"]) == 2.0 and text["sampler"] == "dpmpp_2m" and json.loads(text["seed"]) == 5
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as f:
        samples, labels = f["samples"], f["labels"]
    bare = Pipeline.load(run).sample(3, label=7, sampler="dpmpp_2m", steps=12, guidance=2.0, seed=5)
    assert np.array_equal(samples, bare.numpy()) and labels.tolist() == [7, 7, 7]


def test_the_same_request_gives_the_same_bytes(models, tmp_path):
    ask = {"n": 2, "steps": 4, "seed": 11}
    with client(models, tmp_path) as c:
        ids = [c.post("/api/jobs", json=ask).json()["id"] for _ in range(2)]
        for i in ids:
            wait(c, i)
        first, second = (c.get(f"/api/jobs/{i}/result.png").content for i in ids)
    assert first == second


def test_image_to_image_and_inpainting_keep_what_they_should(models, tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    mask = np.zeros((28, 28), np.uint8)
    mask[:, 14:] = 255  # generate the right half
    with client(models, tmp_path) as c:
        paint = c.post("/api/jobs", json={"mode": "inpaint", "image": png_url(digit), "mask": png_url(mask), "n": 2,
                                          "steps": 10, "resample": 2, "jump": 3}).json()
        edit = c.post("/api/jobs", json={"mode": "sdedit", "image": png_url(digit), "strength": 0.3, "steps": 4}).json()
        assert paint["total"] == 10 + 3 * 3  # RePaint's descents: back up 3 at 1, 4 and 7 steps above t = 0, once each
        for job in (paint, edit):
            assert wait(c, job["id"])["state"] == "done"
        with np.load(io.BytesIO(c.get(f"/api/jobs/{paint['id']}/result.npz").content)) as f:
            filled = f["samples"]
        png = c.get(f"/api/jobs/{edit['id']}/result.png").content
    record = json.loads(Image.open(io.BytesIO(png)).text["strength"])
    image = digit / 127.5 - 1
    assert np.array_equal(filled[:, 0, :, :14], np.broadcast_to(image[:, :14], (2, 28, 14)).astype(np.float32))
    assert np.abs(filled[:, 0, :, 14:] - image[:, 14:]).max() > 0.1 and record == 0.3


def test_cancel_stops_a_running_job_within_a_step_and_a_queued_one_at_once(models, tmp_path):
    with client(models, tmp_path) as c:
        running = c.post("/api/jobs", json={"steps": 1000, "sampler": "ddim", "preview_every": 1000}).json()
        queued = c.post("/api/jobs", json={"steps": 5}).json()
        wait(c, running["id"], ("running",))
        assert c.get(f"/api/jobs/{queued['id']}").json()["position"] == 1
        assert c.post(f"/api/jobs/{queued['id']}/cancel").json()["state"] == "cancelled"
        c.post(f"/api/jobs/{running['id']}/cancel")
        stopped = wait(c, running["id"])
        assert c.get(f"/api/jobs/{running['id']}/result.png").status_code == 409
        trail = events(c, running["id"])
    assert stopped["state"] == "cancelled" and 0 < stopped["progress"] < 1000
    assert trail[-1]["type"] == "cancelled" and trail[-2]["step"] == stopped["progress"]


def test_past_the_queue_bound_is_429(models, tmp_path):
    with client(models, tmp_path, max_queued=1) as c:
        long = c.post("/api/jobs", json={"steps": 1000, "sampler": "ddim"}).json()
        wait(c, long["id"], ("running",))
        assert c.post("/api/jobs", json={"steps": 2}).status_code == 202  # waits
        refused = c.post("/api/jobs", json={"steps": 2})
        assert refused.status_code == 429 and "queue is full" in refused.json()["detail"]
        c.post(f"/api/jobs/{long['id']}/cancel")


def test_a_job_past_its_time_fails_and_says_why(models, tmp_path):
    with client(models, tmp_path, max_seconds=0.05) as c:
        job = c.post("/api/jobs", json={"steps": 1000, "sampler": "ddim"}).json()
        status = wait(c, job["id"])
    assert status["state"] == "failed" and "limit of 0.05 s" in status["error"]


def test_old_jobs_are_forgotten_with_their_files(models, tmp_path):
    with client(models, tmp_path, keep=1) as c:
        first, second = (c.post("/api/jobs", json={"steps": 2}).json()["id"] for _ in range(2))
        wait(c, second)
        assert c.get(f"/api/jobs/{first}").status_code == 404
        assert [j["id"] for j in c.get("/api/jobs?state=done").json()["jobs"]] == [second]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [f"{second}.npz", f"{second}.png"]


def bomb() -> str:
    """A 100-byte PNG whose header claims 30000 x 30000 pixels (a decompression bomb)."""
    raw = bytearray(base64.b64decode(png_url(np.zeros((1, 1), np.uint8)).split(",")[1]))
    header = b"IHDR" + (30000).to_bytes(4, "big") * 2 + bytes(raw[24:29])
    raw[12:29], raw[29:33] = header, zlib.crc32(header).to_bytes(4, "big")
    return base64.b64encode(bytes(raw)).decode()


def gif() -> str:
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode()


DIGIT, BOMB, GIF = png_url(np.zeros((28, 28), np.uint8)), bomb(), gif()
REFUSED = [  # (request, limits, the field named, words of the message)
    ({"n": 0}, {}, "n", "greater than or equal to 1"),
    ({"n": 17}, {}, "n", "at most 16"),
    ({"steps": 1001}, {}, "steps", "at most 1000"),
    ({"steps": 0}, {}, "steps", "greater than or equal to 1"),
    ({"n": 16, "steps": 1000, "guidance": 3}, {"max_gflop": 100}, "steps", "GFLOP"),
    ({}, {"max_steps": 2}, "steps", "at most 2, got 3"),  # the model's default steps are bounded too
    ({"sampler": "dpm++"}, {}, "sampler", "unknown sampler"),
    ({"model": "other"}, {}, "model", "unknown model"),
    ({"label": 10}, {}, "label", "0..9"),
    ({"label": -1}, {}, "label", "greater than or equal to 0"),
    ({"prompt": "a boot"}, {}, "prompt", "takes no prompts"),
    ({"prompt": "x" * 301}, {}, "prompt", "at most 300 characters"),
    ({"seed": -1}, {}, "seed", "greater than or equal to 0"),
    ({"mode": "upscale"}, {}, "mode", "sample"),
    ({"mode": "sdedit"}, {}, "image", "needs image"),
    ({"image": DIGIT}, {}, "image", "takes no image"),
    ({"mode": "inpaint", "image": DIGIT}, {}, "mask", "needs mask"),
    ({"mode": "sdedit", "image": DIGIT, "strength": 0}, {}, "strength", "greater than 0"),
    ({"mode": "sdedit", "image": "data:image/png;base64,%%%"}, {}, "image", "base64"),
    ({"mode": "sdedit", "image": base64.b64encode(b"not a picture").decode()}, {}, "image", "not a PNG or JPEG"),
    ({"mode": "sdedit", "image": png_url(np.zeros((1, 3000), np.uint8))}, {}, "image", "at most 2048 a side"),
    ({"mode": "sdedit", "image": DIGIT}, {"max_image_bytes": 50}, "image", "at most 50"),
    ({"mode": "sdedit", "image": BOMB}, {}, "image", "pixel limit"),
    ({"mode": "sdedit", "image": GIF}, {}, "image", "not a PNG or JPEG"),
    ({"mode": "inpaint", "image": DIGIT, "mask": DIGIT}, {}, "mask", "marks no pixel"),
    ({"mode": "inpaint", "image": DIGIT, "mask": DIGIT, "resample": 0}, {}, "resample", "greater than or equal"),
    ({"steps": 3, "colour": "red"}, {}, "colour", "Extra inputs"),
]


@pytest.mark.parametrize("ask, limits, field, words", REFUSED, ids=[r[2] + "-" + r[3][:12] for r in REFUSED])
def test_refusals_name_the_field(models, tmp_path, ask, limits, field, words):
    with client(models, tmp_path, **limits) as c:
        r = c.post("/api/jobs", json=ask)
        assert c.get("/api/jobs").json()["jobs"] == []  # nothing was queued
    assert r.status_code == 422
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", field] and words in detail["msg"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_guidance_must_be_finite(models, tmp_path, number):
    with client(models, tmp_path) as c:
        r = c.post("/api/jobs", content=f'{{"guidance": {number}}}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "guidance"]


def test_unknown_jobs_and_results(models, tmp_path):
    with client(models, tmp_path) as c:
        job = c.post("/api/jobs", json={"steps": 2}).json()["id"]
        wait(c, job)
        assert c.get("/api/jobs/nope").status_code == 404
        assert c.post("/api/jobs/nope/cancel").status_code == 404
        assert c.get("/api/jobs/nope/events").status_code == 404
        assert c.get(f"/api/jobs/{job}/result.gif").status_code == 404
        assert c.post(f"/api/jobs/{job}/cancel").json()["state"] == "done"  # a finished job stays as it is


def test_the_token_guards_every_api_call_but_not_the_page(models, tmp_path):
    with client(models, tmp_path, token="s3cret") as c:
        assert c.get("/api/models").status_code == 401
        assert c.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/api/jobs", json={"steps": 2}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        job = c.post("/api/jobs", json={"steps": 2}, headers=ok).json()["id"]
        assert c.get(f"/api/jobs/{job}/events?token=s3cret").status_code == 200  # EventSource sets no headers
        assert c.get(f"/api/jobs/{job}/result.png?token=s3cret").status_code == 200
        assert c.get(f"/api/jobs/{job}/result.png").status_code == 401
        assert c.get("/").status_code == 200 and c.get("/static/page.js").status_code == 200


def test_the_page_and_the_openapi_docs(models, tmp_path):
    with client(models, tmp_path) as c:
        page, script, docs, schema = c.get("/"), c.get("/static/page.js"), c.get("/docs"), c.get("/openapi.json")
    assert '<script src="/static/page.js">' in page.text and "EventSource" in script.text and docs.status_code == 200
    assert {"/api/jobs", "/api/jobs/{job_id}/events", "/api/jobs/{job_id}/cancel", "/api/models"} <= set(
        schema.json()["paths"])
    assert not any("http://" in t or "https://" in t for t in (page.text, script.text))  # nothing from elsewhere


def test_late_readers_and_reconnects_miss_nothing(models, tmp_path):
    with client(models, tmp_path) as c:
        job = c.post("/api/jobs", json={"steps": 3}).json()["id"]
        wait(c, job)
        whole = events(c, job)
        with c.stream("GET", f"/api/jobs/{job}/events", headers={"Last-Event-ID": "2"}) as s:
            rest = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert rest == whole[3:] and whole[-1]["type"] == "done"
    for last in ("-5", "99", "x", "9" * 5000):  # not an id, or out of range: from the start, or nothing past the end
        with c.stream("GET", f"/api/jobs/{job}/events", headers={"Last-Event-ID": last}) as s:
            got = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
        assert got == ([] if last == "99" else whole), last[:8]
    assert [e for e in whole if "preview" in e] == [whole[-2]]  # a finished job keeps its last preview only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_command_serves_on_loopback(run, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "unnoise.cli", "serve", str(run), "--port", str(port),
                               "--out", str(tmp_path / "out")], stderr=subprocess.PIPE, text=True)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                models = httpx.get(f"{base}/api/models").json()
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        job = httpx.post(f"{base}/api/jobs", json={"n": 2, "steps": 3}).json()
        while (status := httpx.get(f"{base}/api/jobs/{job['id']}").json())["state"] != "done":
            assert status["state"] in ("queued", "running") and time.monotonic() < deadline
            time.sleep(0.05)
        png = httpx.get(f"{base}{status['result']}")
        rebound = httpx.get(f"{base}/api/models", headers={"Host": "evil.example"})  # DNS rebinding: refused
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert models["models"][0]["name"] == run.name and Image.open(io.BytesIO(png.content)).size[1] == 30
    assert "no token: loopback only" in err and (tmp_path / "out" / f"{job['id']}.png").is_file()
    assert rebound.status_code == 400


@pytest.mark.parametrize("args, words", [(["--host", "0.0.0.0"], "give --token"), (["--max-gflop", "0"], "> 0"),
                                         (["--port", "0"], "1..65535")])
def test_the_command_refuses_before_loading(tmp_path, capsys, args, words):
    assert main(["serve", str(tmp_path / "missing"), *args]) == 2  # the run is not even looked for
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_work_is_priced_by_calls_samples_and_guidance(models, tmp_path):
    gflop = models["tiny"].gflop
    limit = 10 * 8 * gflop * 1.0001  # n 10 x 8 calls, no guidance: just within
    with client(models, tmp_path, max_gflop=limit) as c:
        assert c.post("/api/jobs", json={"n": 10, "steps": 8}).status_code == 202
        r = c.post("/api/jobs", json={"n": 10, "steps": 8, "guidance": 2})
    assert r.status_code == 422 and f"{2 * 10 * 8 * gflop:.4g} GFLOP" in r.json()["detail"][0]["msg"]


def test_a_super_resolution_model_takes_its_low_resolution_image_as_the_hint(tmp_path_factory, tmp_path):
    run = tmp_path_factory.mktemp("serve-sr") / "sr"
    train(load_config(None, tree={**SR, "out": str(run)}), quiet=True)
    served = load_models([run])
    low = np.random.default_rng(0).integers(0, 256, (14, 14), dtype=np.uint8)
    ask = {"n": 2, "steps": 3, "label": 4, "seed": 9, "hint": png_url(low), "hint_noise": 0.1}
    with client(served, tmp_path) as c:
        described = c.get("/api/models").json()["models"][0]
        job = c.post("/api/jobs", json=ask).json()["id"]
        assert wait(c, job)["state"] == "done"
        with np.load(io.BytesIO(c.get(f"/api/jobs/{job}/result.npz").content)) as f:
            samples, record = f["samples"], json.loads(str(f["settings"]))
        missing = c.post("/api/jobs", json={"steps": 2}).json()["detail"][0]
    assert described["hint"] == "lowres" and described["hint_shape"] == [1, 14, 14]
    as_read = torch.from_numpy(low).float().div(127.5).sub(1)[None, None]  # as unnoise.inputs reads pixels
    bare = super_resolve(Pipeline.load(run), as_read.expand(2, 1, 14, 14), hint_noise=0.1, seed=9, label=4, steps=3,
                         batch_size=2)
    assert np.array_equal(samples, bare.numpy()) and record["hint"] == "lowres" and record["hint_noise"] == 0.1
    assert missing["loc"] == ["body", "hint"] and "give hint" in missing["msg"]


def test_hints_only_for_models_that_read_them(models, tmp_path):
    with client(models, tmp_path) as c:
        given = c.post("/api/jobs", json={"hint": DIGIT}).json()["detail"][0]
        level = c.post("/api/jobs", json={"hint_noise": 0.2}).json()["detail"][0]
    assert given["loc"] == ["body", "hint"] and "reads no hint image" in given["msg"]
    assert level["loc"] == ["body", "hint_noise"] and "super-resolution models" in level["msg"]


def test_an_adaptive_solver_is_stopped_past_its_calls(models, tmp_path):
    with client(models, tmp_path) as c:
        job = c.post("/api/jobs", json={"sampler": "ode_adaptive", "steps": 2}).json()["id"]
        status = wait(c, job)
    assert status["state"] == "failed" and "more than 8 network calls" in status["error"]


def test_bodies_past_the_bound_are_refused_unread(models, tmp_path):
    with client(models, tmp_path, max_image_bytes=1000) as c:
        body = b'{"image": "' + b"A" * 80_000 + b'"}'  # past 3 images of 1000 bytes and the fields
        r = c.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_cancelled_jobs_are_forgotten_past_keep_even_while_one_runs(models, tmp_path):
    with client(models, tmp_path, keep=1) as c:
        long = c.post("/api/jobs", json={"steps": 1000, "sampler": "ddim"}).json()["id"]
        wait(c, long, ("running",))
        for _ in range(5):
            c.post(f"/api/jobs/{c.post('/api/jobs', json={'mode': 'sdedit', 'image': DIGIT}).json()['id']}/cancel")
        kept = c.get("/api/jobs").json()["jobs"]
        c.post(f"/api/jobs/{long}/cancel")
    assert [j["state"] for j in kept] == ["cancelled", "running"] and "image" not in kept[0]["request"]
