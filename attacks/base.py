"""The attack contract: ``reconstruct(observation) -> Reconstruction``.

An attack declares the message kinds it consumes. It gets an :class:`Observation`
(payload + public context) and never the ground truth, which the runner keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from privbench.engine.channel import Observation
from privbench.registry import Configurable, Registry


@dataclass(frozen=True)
class Reconstruction:
    images: torch.Tensor  # (B, C, H, W) in the dataset's value range
    labels: torch.Tensor | None = None  # (B,) predicted labels, when the attack infers them
    meta: Mapping[str, Any] = field(default_factory=dict)


class Attack(Configurable):
    """``consumes``: message kinds it attacks. ``target``: what it is scored against —
    ``"batch"`` (the victim's attacked batch, matched one-to-one) or ``"dataset"`` (the
    victim's whole local training set; each reconstruction vs its nearest private image)
    or ``"labels"`` (no images: ``meta["label_hist"]`` vs the victim's label histogram)
    or ``"audit"`` (a privacy audit handed the victim's private records: ``audit``
    returns one image per record, scored pairwise; e.g. a generator's memorisation)."""

    name = "attack"
    consumes: tuple[str, ...] = ()
    target = "batch"
    needs_batchnorm = False  # True: works only on models with BatchNorm running statistics

    def reconstruct(
        self,
        observation: Observation,
        *,
        generator: torch.Generator,
        seen: Sequence[Observation] = (),
    ) -> Reconstruction:  # pragma: no cover
        """Rebuild private data from ``observation``; ``seen`` is everything the same
        adversary observed in the run (for priors and cross-client attacks)."""
        raise NotImplementedError

    def audit(
        self,
        observation: Observation,
        *,
        images: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
        seen: Sequence[Observation] = (),
    ) -> Reconstruction:  # pragma: no cover
        """``target = "audit"`` only: the artifact's best match for each private record."""
        raise NotImplementedError

    def reconstruct_batch(
        self,
        observations: Sequence[Observation],
        *,
        generators: Sequence[torch.Generator],
        seen: Sequence[Observation] = (),
    ) -> list[Reconstruction]:
        """One reconstruction per observation (victim), each with its own generator.
        Attacks that can run victims together (one vectorised computation) override
        this; the default attacks them one after another."""
        return [
            self.reconstruct(o, generator=g, seen=seen)
            for o, g in zip(observations, generators, strict=True)
        ]


ATTACKS: Registry[Attack] = Registry("attack", variant_params=("guess", "synthetic", "box"))
