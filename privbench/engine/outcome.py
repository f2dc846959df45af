"""What a run produced, whichever runtime trained it: the victims' ground truth, the
clients' messages before defenses, and the training outcome with its privacy columns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from privbench.engine.channel import Channel
from privbench.errors import IncompatibleError


@dataclass
class Victim:
    """Ground truth of one attacked client. Never given to an attack."""

    client_id: int
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class LocalUpdate:
    """A client's message before defenses, with the public recipe that produced it."""

    kind: str  # "gradient" (one FedSGD step) or "update" (new weights - global weights)
    payload: dict[str, torch.Tensor]
    steps: int
    batch: int
    num_images: int  # the client's real records behind the message (its FedAvg weight)
    victim: Victim | None
    loss_at_global: float
    num_synthetic: int = 0  # synthetic samples the method mixed into that training set


@dataclass
class TrainingOutcome:
    channel: Channel
    victims: dict[int, Victim]
    utility: object
    history: list[dict[str, float]] = field(default_factory=list)
    spend: tuple[float | None, float | None, str | None] = (None, None, None)
    seconds: float = 0.0
    synthetic_share: float | None = None  # mean over clients of synthetic / training set
    # level ("record", "client") -> (epsilon, delta) of the defenses guaranteeing it
    levels: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @classmethod
    def finish(
        cls, channel, victims, utility, history, defenses, seconds, training_sets
    ) -> TrainingOutcome:
        """The outcome of a finished run, from whichever runtime trained it:
        ``training_sets`` is {client: (real records, synthetic samples)} of the clients
        that trained normally; the defenses give the privacy columns."""
        clear = clear_uploads(channel.bytes_by_kind())
        spend, levels = privacy_columns(void(d.privacy_spent(), clear) for d in defenses)
        shares = [s / (n + s) for n, s in training_sets.values() if n + s]
        synthetic = float(np.mean(shares)) if shares else None
        return cls(channel, victims, utility, history, spend, seconds, synthetic, levels)


# What the DP defenses privatise: the classifier's update (or FedSGD gradient). Any
# other kind a client uploads (FedMix's averaged data, CVAE's generator and label counts,
# FedAvP's policy) is computed from its records and sent without that mechanism's clip
# and noise, so no guarantee covers the run (the whole release's epsilon is infinite).
PRIVATISED_KINDS = ("update", "gradient")


def clear_uploads(bytes_by_kind: dict[str, dict[str, int]] | None) -> list[str]:
    """The kinds clients uploaded that no DP mechanism privatises (sorted)."""
    return sorted(
        k for k, v in (bytes_by_kind or {}).items() if v.get("up") and k not in PRIVATISED_KINDS
    )


def void(spend, clear: list[str]):
    """``spend`` with no guarantee (infinite epsilon, the reason in its accountant) when
    clients uploaded ``clear`` kinds outside the mechanism; else ``spend`` unchanged."""
    if spend is None or not clear or spend.epsilon is None or math.isinf(spend.epsilon):
        return spend
    return replace(spend, epsilon=math.inf, accountant=spend.accountant + void_note(clear))


def void_note(clear: list[str]) -> str:
    return f"; no guarantee: {', '.join(clear)} uploaded outside the mechanism"


def void_row(row: dict) -> dict:
    """A stored row read with today's rule: rows written before it reported the DP
    mechanism's epsilon although clients uploaded ``clear`` kinds outside it."""
    clear = clear_uploads(row.get("bytes_by_kind"))
    keys = ("epsilon", "epsilon_record", "epsilon_client")
    if not clear or all(row.get(k) is None for k in keys):
        return row
    note = void_note(clear)
    accountant = row.get("accountant") or ""
    return {
        **row,
        **dict.fromkeys(keys, None),
        "accountant": accountant if note in accountant else accountant + note,
    }


def privacy_columns(spends) -> tuple[tuple, dict[str, tuple[float | None, float | None]]]:
    """The row's privacy columns from the defenses' spends: ``(epsilon, delta,
    accountant)`` — the one guarantee when there is one; with guarantees of two levels
    (record and client) epsilon and delta are None, never a sum of the two — and the
    per-level ``{level: (epsilon, delta)}``. Two spends of one level are refused."""
    spends = [s for s in spends if s is not None]
    levels: dict[str, tuple[float | None, float | None]] = {}
    for s in spends:
        if s.level in levels:
            raise IncompatibleError(
                f"two defenses give {s.level}-level guarantees; their epsilons do not add "
                "up to one guarantee: choose one"
            )
        levels[s.level] = (s.epsilon, s.delta)
    if not spends:
        return (None, None, None), levels
    accountant = "; ".join(f"{s.level}: {s.accountant}" for s in spends)
    if len(spends) == 1:
        return (spends[0].epsilon, spends[0].delta, spends[0].accountant), levels
    return (None, None, accountant), levels


__all__ = [
    "PRIVATISED_KINDS",
    "LocalUpdate",
    "TrainingOutcome",
    "Victim",
    "clear_uploads",
    "privacy_columns",
    "void",
    "void_row",
]
