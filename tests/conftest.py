import pytest
import torch

from denoisekit import GaussianMixture


@pytest.fixture
def one_thread():
    """Tiny tensors: threads only contend (the machine is shared). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def gm2() -> GaussianMixture:
    """2-D, 8-component mixture: the exact oracle most sampler tests use."""
    return GaussianMixture.random(dim=2, components=8, seed=0)


@pytest.fixture(scope="session")
def gm16() -> GaussianMixture:
    return GaussianMixture.random(dim=16, components=6, seed=1)


def pytest_configure(config):
    # Test tensors are small: one thread avoids oversubscription on shared cores (10x faster here).
    torch.set_num_threads(1)
