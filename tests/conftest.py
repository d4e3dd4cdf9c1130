import socket

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


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (accelerate's ``--main_process_port`` for a 2-process test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


#: Modules whose tests are independent and long (each tutorial page trains its own runs): spread over the workers.
SPREAD = {"test_tutorials"}


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: ``-n auto --dist loadgroup``) each module's tests share one worker, so its
    module- and session-scoped fixtures (runs trained for the module) are built once, not once per worker; the
    modules of ``SPREAD`` go test by test to whichever worker is free. Without xdist the marker does nothing."""
    for item in items:
        name = item.module.__name__ if item.module is not None else item.nodeid
        if name not in SPREAD:
            item.add_marker(pytest.mark.xdist_group(name))
