"""The defense contract. Defenses wrap what a client sends; they do not flag it.

Hooks (all optional): ``privatize_update`` changes a model update or gradient before
it enters the channel, ``privatize_artifact`` does the same for shared artifacts, and
``privacy_spent`` reports the formal guarantee, or ``None`` when there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from privbench.channel import Payload
from privbench.registry import Registry


@dataclass(frozen=True)
class PrivacySpend:
    epsilon: float | None
    delta: float | None
    accountant: str


class Defense:
    name = "defense"

    def __init__(self, **params: Any):
        self.params = dict(params)

    def setup(self, *, num_clients: int, clients_per_round: int, rounds: int, seed: int) -> None:
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.rounds = rounds
        self.seed = seed

    def privatize_update(self, round: int, client_id: int, kind: str, payload: Payload) -> Payload:
        return payload

    def privatize_artifact(
        self, round: int, client_id: int, kind: str, payload: Payload
    ) -> Payload:
        return payload

    def privacy_spent(self) -> PrivacySpend | None:
        return None


DEFENSES: Registry[Defense] = Registry("defense")


@DEFENSES.register("none", description="no defense (no formal guarantee)")
class NoDefense(Defense):
    name = "none"
