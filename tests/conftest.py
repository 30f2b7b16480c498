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
