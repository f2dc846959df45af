"""Shared fixtures: tiny, fast, seeded configurations; no network anywhere."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from privbench.testing import tiny_config

# Two threads, as on CI's two cores; PRIVBENCH_TEST_THREADS=1 profiles the suite beside a
# benchmark lane on the other core without oversubscribing it.
torch.set_num_threads(int(os.environ.get("PRIVBENCH_TEST_THREADS", "2")))


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
