import pytest
import torch

from unnoise.oracle import GaussianMixture
from unnoise.schedules import get_schedule


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
