import contextlib
import socket
import threading
import time

import pytest
import torch

from unnoise.config import load_config
from unnoise.oracle import GaussianMixture
from unnoise.schedules import get_schedule
from unnoise.training.loop import train

# A class-conditional MNIST U-Net trained 5 steps: a real run (checkpoint, config, EMA) for the commands,
# the editors and the server to work on, in seconds. Its samples are noise-like; tests check mechanics.
TINY_MNIST = {
    "data": {"name": "mnist"},
    "model": {"preset": "unet_tiny", "image_size": 28, "in_channels": 1, "out_channels": 1, "num_classes": 10},
    "train": {"steps": 5, "batch_size": 8, "log_every": 5, "checkpoint_every": 5, "label_dropout": 0.1},
    "sample": {"sampler": "heun", "steps": 3, "n": 4, "guidance": 1.0},
}


@pytest.fixture(scope="session")
def tiny_mnist_run(tmp_path_factory):
    """The folder of a TINY_MNIST run, trained once per session (read-only to the tests)."""
    out = tmp_path_factory.mktemp("tiny-mnist") / "tiny"
    train(load_config(None, tree={**TINY_MNIST, "out": str(out)}), quiet=True)
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests run many tiny tensor ops; OpenMP thread hand-offs only slow them down on 2 cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def mixture() -> GaussianMixture:
    return GaussianMixture.random(dim=2, components=8, seed=0)


@pytest.fixture
def ddpm():
    return get_schedule("ddpm")


@contextlib.contextmanager
def _serving(app):
    """Serve an ASGI app with uvicorn on a thread of this process, on a free loopback port; yields the
    base URL and stops the server after."""
    import uvicorn

    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, as uvicorn.run's are
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # held from here on: no race for the port
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(15)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="session")
def serving():
    """`with serving(app) as url:` an app served by uvicorn on a thread, at url (http://127.0.0.1:port)."""
    return _serving
