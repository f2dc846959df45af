"""Shared fixtures: tiny, fast, seeded configurations; no network anywhere."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
import torch

from privbench import AttackConfig, FedConfig, RunConfig

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never touch the network: any connection attempt fails loudly."""

    def guard(*args, **kwargs):
        raise RuntimeError("tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)


def tiny_config(**overrides) -> RunConfig:
    """A run that trains in well under a second: digits, 4 clients, 2 rounds."""
    fed = overrides.pop("fed", {})
    attack = overrides.pop("attack", {})
    base = RunConfig(
        dataset="digits",
        partition="iid",
        model="lenet-sigmoid",
        fed=FedConfig(clients=4, rounds=2, local_epochs=1, batch_size=16, lr=0.5, eval_every=0),
        attack=AttackConfig(),
        seed=0,
    )
    return replace(
        base,
        fed=replace(base.fed, **fed),
        attack=replace(base.attack, **attack),
        **overrides,
    )


@pytest.fixture
def tiny():
    return tiny_config
