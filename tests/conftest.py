"""Shared fixtures: tiny, fast, seeded configurations; no network anywhere."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from privbench.testing import tiny_config
from tests.golden.machine import golden_threads

# The golden rows run their commands at the machine's own thread count (part of its
# fingerprint, tests/golden/machine.py): noted here, before the threads are shared out.
os.environ.setdefault("PRIVBENCH_GOLDEN_THREADS", golden_threads())
CPUS = len(os.sched_getaffinity(0))  # the CPUs this process may run on


def worker_threads() -> int:
    """Torch threads per test process: ``PRIVBENCH_TEST_THREADS``, else the cores shared
    among pytest-xdist's workers (one each on CI's two cores), at most two, as before
    xdist, when one process runs the suite."""
    if os.environ.get("PRIVBENCH_TEST_THREADS"):
        return int(os.environ["PRIVBENCH_TEST_THREADS"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, CPUS // workers))


THREADS = worker_threads()
torch.set_num_threads(THREADS)
if "PYTEST_XDIST_WORKER" in os.environ:
    # The commands a test starts (CLI runs, sweeps, examples) share the worker's cores
    # too: more threads than cores would stall at every OpenMP barrier.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(THREADS))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may run on (xdist's own count, when
    psutil is installed, is of physical cores, which a VM may report fewer of)."""
    return int(os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or CPUS)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never touch the network: any connection attempt fails loudly."""

    def guard(*args, **kwargs):
        raise RuntimeError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)


@pytest.fixture
def tiny():
    return tiny_config


def shared_data_root() -> str:
    """The folder of the real datasets (MNIST, Fashion-MNIST in torchvision's layout):
    ``PRIVBENCH_DATA_ROOT``, else ``../shared/data`` beside the project. Tests that need
    it skip without it on a developer's machine and fail in CI (``CI=true``), where the
    folder must be there."""
    import os
    from pathlib import Path

    root = os.environ.get("PRIVBENCH_DATA_ROOT") or str(
        Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    if not (Path(root) / "MNIST" / "raw").is_dir():
        message = f"the real datasets are not at {root} (set PRIVBENCH_DATA_ROOT)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture
def data_root() -> str:
    return shared_data_root()
