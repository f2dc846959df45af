"""The client/server channel: exact byte counts and what each threat model observes.

Every message of a run goes through :meth:`Channel.send`. Bytes are counted as
``element_size * numel`` of every tensor in the payload (the dense encoding; the
encoding is recorded per message so a sparse encoding can be counted as such).
The channel offers each message to the threat model, which keeps the ones its
adversary would see as frozen :class:`Observation` records: the payload plus the
*public* context of the sender's training (architecture, weights before the
update, lr, steps, batch size, augmenter and its parameters). Ground truth never
travels here: the runner keeps it apart and hands it only to the metrics.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from privbench.errors import ParameterError
from privbench.registry import Configurable, Param, Registry

SERVER = "server"

KINDS = (
    "model",
    "update",
    "gradient",
    "averaged_data",
    "policy",
    "generator",
    "synthetic_data",
    "bn_stats",
    "label_counts",
)

Payload = Mapping[str, torch.Tensor]


def payload_bytes(payload: Payload) -> int:
    """Exact dense size of a payload: sum of dtype size x element count."""
    return sum(t.element_size() * t.numel() for t in payload.values())


@dataclass(frozen=True)
class PublicContext:
    """What an adversary knows besides the payload: the public training recipe."""

    model_name: str
    build_model: Callable[[], torch.nn.Module]
    weights_before: Mapping[str, torch.Tensor]
    lr: float
    local_steps: int
    batch_size: int
    num_images: int  # the real records behind the message (what an attack rebuilds)
    num_classes: int
    input_shape: tuple[int, int, int]
    value_range: tuple[float, float]
    # The method as an outsider knows it: a fresh instance built from its public
    # parameters (never the run's live object, which holds clients' private state); its
    # local_loss is what the victim minimised.
    method: Any
    augmenter_params: Mapping[str, Any]
    received: Mapping[str, Payload] = field(default_factory=dict)  # broadcasts it was sent
    algorithm: Any = None  # the public trainer (FedProx's penalty is part of the local loss)
    # Public parameters of the defenses: DP-SGD's per-record clip norm; an L2 bound on the
    # whole update (client-dp). A defense-aware attacker clips its dummy message alike.
    record_clip: float | None = None
    update_clip: float | None = None
    # True: a defense zeroed entries of the message (pruning); the zeros on the wire are
    # its mask, so an attacker masks its simulated message alike.
    masked: bool = False
    # Labelled images from the data's distribution that the adversary may hold (the
    # run's test split): shadow-model attacks such as policy-inference train on them.
    public_data: tuple[torch.Tensor, torch.Tensor] | None = None
    # Synthetic samples the method mixed into the message's batch besides the
    # num_images real ones (Fed-ZDAC, CVAE imputation); their count is public recipe.
    num_synthetic: int = 0

    @property
    def augmenter(self) -> Any:
        """The public method (the field's former name, kept for attack plugins)."""
        return self.method


@dataclass(frozen=True)
class Message:
    round: int
    sender: str | int
    receiver: str | int
    kind: str
    payload: Payload
    nbytes: int
    encoding: str = "dense"


@dataclass(frozen=True)
class Observation:
    """One message as the adversary saw it, with its public context (never ground truth)."""

    round: int
    sender: str | int
    receiver: str | int
    kind: str
    payload: Payload
    context: PublicContext | None


class ThreatModel(Configurable):
    """Decides which messages an adversary sees."""

    name = "threat"

    def bind(self, num_clients: int) -> None:
        """Check the threat model against the run (e.g. the curious client exists)."""
        return None

    def sees(self, message: Message) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


THREATS: Registry[ThreatModel] = Registry("threat model")


@THREATS.register(
    "server", description="honest-but-curious server: sees every upload and shared artifact"
)
class ServerThreat(ThreatModel):
    name = "server"

    def sees(self, message: Message) -> bool:
        return message.receiver == SERVER


@THREATS.register(
    "client",
    params=(
        Param("curious_client", int, -1, "id of the curious client (-1: the last client)", low=-1),
    ),
    description="curious client: sees what the server sends it (broadcasts, others' artifacts)",
)
class ClientThreat(ThreatModel):
    name = "client"

    def __init__(self, **params):
        super().__init__(**params)
        self.curious_client = self.params["curious_client"]

    def bind(self, num_clients: int) -> None:
        if self.curious_client >= num_clients:
            raise ParameterError(
                f"The 'curious_client' parameter of threat model 'client' must be < clients "
                f"({num_clients}). Got {self.curious_client} instead."
            )
        if self.curious_client < 0:
            self.curious_client = num_clients - 1

    def sees(self, message: Message) -> bool:
        return message.receiver == self.curious_client


def _freeze(payload: Payload) -> Payload:
    # Detached copies: later in-place training must not change what was observed.
    return MappingProxyType({k: v.detach().clone() for k, v in payload.items()})


def _up_down() -> dict[str, int]:
    return {"up": 0, "down": 0}


class Channel:
    """Counts bytes by kind and direction and records what the threat model sees
    (``record=False``: counts only, for a run no attack reads, whose observations would
    otherwise hold every upload of every round in memory)."""

    def __init__(self, threat: ThreatModel, *, record: bool = True):
        self.threat, self.record = threat, record
        self.bytes: dict[str, dict[str, int]] = defaultdict(_up_down)
        self.bytes_per_round: dict[int, dict[str, int]] = defaultdict(_up_down)
        self.observations: list[Observation] = []
        self.messages = 0

    def send(
        self,
        round: int,
        sender: str | int,
        receiver: str | int,
        kind: str,
        payload: Payload,
        *,
        context: PublicContext | None = None,
        encoding: str = "dense",
        nbytes: int | None = None,
    ) -> Payload:
        """Send ``payload``; return what the receiver gets (the same tensors)."""
        if kind not in KINDS:
            raise ValueError(f"Unknown message kind '{kind}'. Valid kinds: {', '.join(KINDS)}.")
        size = payload_bytes(payload) if nbytes is None else nbytes
        direction = "up" if receiver == SERVER else "down"
        self.bytes[kind][direction] += size
        self.bytes_per_round[round][direction] += size
        self.messages += 1
        message = Message(round, sender, receiver, kind, payload, size, encoding)
        if self.record and self.threat.sees(message):
            self.observations.append(
                Observation(round, sender, receiver, kind, _freeze(payload), context)
            )
        return payload

    @property
    def bytes_up(self) -> int:
        return sum(v["up"] for v in self.bytes.values())

    @property
    def bytes_down(self) -> int:
        return sum(v["down"] for v in self.bytes.values())

    def bytes_by_kind(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in sorted(self.bytes.items())}
