"""Shared fixtures: small generated datasets in the official on-disk formats, and RNG isolation.

Plain helper functions and constants live in helpers.py; import them from there, not from here.
"""
import os

# The models here are tiny: one thread per process is fastest, and it keeps OpenMP threads from
# spinning against each other when a test runs several processes (torchrun) on two cores.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# The files whose tests start many processes (sweeps' trials, torchrun), slowest first. pytest.ini
# runs the files on one worker per core (pytest-xdist, --dist loadfile), which hands them out in
# collection order: starting with the longest keeps one worker from ending alone on a long file.
SLOW_FILES = ("test_sweep.py", "test_scale.py", "test_sweep_workers.py", "test_cluster.py", "test_resume.py",
              "test_workflow.py", "test_export.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOW_FILES.index(name) if name in SLOW_FILES else len(SLOW_FILES)
    items.sort(key=rank)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
    from data.synthetic_fashion_mnist import write_fashion_mnist
    data_dir = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist(data_dir, n_train=1500, n_test=400, seed=0)
    return data_dir


@pytest.fixture(scope="session")
def carvana_dir(tmp_path_factory):
    from data.synthetic_carvana import write_carvana
    data_dir = tmp_path_factory.mktemp("carvana")
    write_carvana(data_dir, n_cars=16, views=4, size=(48, 64), seed=0)
    return data_dir


@pytest.fixture
def restore_global_rng():
    """Put the Python, NumPy and torch random states back as they were after the test."""
    from utils.seed import get_rng_state, set_rng_state
    state = get_rng_state()
    yield
    set_rng_state(state)
