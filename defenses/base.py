"""The defense contract. Defenses wrap what a client sends; they do not flag it.

Hooks (all optional), applied in the order the defenses were given
(``--defense a --defense b``: a's hook, then b's):

- ``privatize_update(round, client_id, kind, payload)``: a client's ``update``/``gradient``
  before it enters the channel (clip, noise, prune);
- ``privatize_artifact(round, client_id, kind, payload)``: a shared artifact likewise;
- ``encoding(kind, payload)``: how the payload is put on the wire, if not dense:
  ``(encoding name, bytes)``; the last defense that answers decides;
- ``aggregation_weight(client_id, num_samples)``: the client's weight in the average;
- ``privatize_aggregate(round, global_state, new_state, num_clients)``: the server's new
  model after aggregation (central noise);
- ``privacy_spent()``: the formal guarantee, or ``None`` when there is none.

A defense that changes how a client trains (DP-SGD) wraps the run's local-training
strategy in ``wrap_training(inner)`` (plain SGD, or the method's own); two strategies
that each replace plain SGD are refused (:func:`~privbench.engine.training.training_chain`).
``prepare_model(model)`` may replace layers in every copy of the model (global, client,
attacker's), and ``check(algorithm=, augmenter=)`` refuses combinations it cannot serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from privbench.engine.channel import Payload
from privbench.registry import Configurable, Registry


@dataclass(frozen=True)
class PrivacySpend:
    epsilon: float | None
    delta: float | None
    accountant: str
    # What the guarantee protects: one "record" of a client (DP-SGD) or a whole
    # "client" (client-level DP). Guarantees of different levels are never added.
    level: str = "record"


class Defense(Configurable):
    name = "defense"
    # Public knobs an attacker knows and simulates: per-record gradient clip (DP-SGD) and
    # whole-update clip (DP-FedAvg), in update units (lr * gradient for FedSGD).
    record_clip: float | None = None
    update_clip: float | None = None
    # True: the defense zeroes entries of the update (pruning): the zeros it sends are a
    # public mask that a defense-aware attacker applies to its simulated message.
    masks_message = False
    # The message kinds the defense acts on (None: every model update or gradient); a
    # run whose method shares none of them is refused (the defense would do nothing).
    acts_on: tuple[str, ...] | None = None
    # The level of the formal guarantee it gives ("record" or "client"), None for none.
    guarantee: str | None = None

    def setup(
        self,
        *,
        num_clients: int,
        clients_per_round: int,
        rounds: int,
        seed: int,
        lr: float,
        batch_size: int = 10,
        local_epochs: int = 1,
        client_sampling: str = "fixed",
        forced: Mapping[int, set[int]] | None = None,
    ) -> None:
        """The run's public schedule. ``client_sampling``: "fixed" (m of N per round) or
        "poisson" (each client with q = m/N); ``forced``: {round: clients made to take
        part in it} (the attacked round's victims), whose inclusion is certain."""
        self.num_clients = num_clients
        self.client_sampling = client_sampling
        self.forced = {r: set(c) for r, c in (forced or {}).items()}
        self.clients_per_round = clients_per_round
        self.rounds = rounds
        self.seed = seed
        self.lr = lr
        self.batch_size = batch_size
        self.local_epochs = local_epochs

    @staticmethod
    def prepare_model(model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
        """The model every party builds under this defense, and whether it was changed."""
        return model, False

    def wrap_training(self, inner: Any) -> Any:
        """The local-training strategy under this defense (default: ``inner`` as is)."""
        return inner

    def check(self, *, algorithm: Any, augmenter: Any) -> None:
        """Raise ``IncompatibleError`` for a trainer or method this defense cannot serve."""
        return None

    def generator(self, *parts: int) -> torch.Generator:
        """A noise generator private to this defense, seeded from the run and ``parts``."""
        from privbench.engine.seeding import torch_generator

        return torch_generator(self.seed, 5, *parts)

    def privatize_update(self, round: int, client_id: int, kind: str, payload: Payload) -> Payload:
        return payload

    def privatize_artifact(
        self, round: int, client_id: int, kind: str, payload: Payload
    ) -> Payload:
        return payload

    def encoding(self, kind: str, payload: Payload) -> tuple[str, int] | None:
        return None

    def aggregation_weight(self, client_id: int, num_samples: int) -> float:
        return float(num_samples)

    def privatize_aggregate(
        self,
        round: int,
        global_state: dict[str, torch.Tensor],
        new_state: dict[str, torch.Tensor],
        num_clients: int,
    ) -> dict[str, torch.Tensor]:
        return new_state

    def privacy_spent(self) -> PrivacySpend | None:
        return None

    # -- a runtime where clients and server hold separate copies (Flower) ----------------

    def client_report(self, client_id: int) -> dict[str, float]:
        """What this defense's copy in a client tells its server-side copy after the
        client's round (public numbers, e.g. DP-SGD's noise and steps for the accountant);
        the built-in loop holds one copy and never needs it."""
        return {}

    def record_report(self, client_id: int, report: Mapping[str, float]) -> None:
        """The server-side copy takes a client's :meth:`client_report`."""
        return None


DEFENSES: Registry[Defense] = Registry("defense")


@DEFENSES.register("none", description="no defense (no formal guarantee)")
class NoDefense(Defense):
    name = "none"
