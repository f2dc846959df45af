"""Shared fixtures: tiny, fast, seeded configurations; no network anywhere."""

from __future__ import annotations

import socket

import pytest
import torch

from privbench.testing import tiny_config

torch.set_num_threads(2)


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
