"""The method registry. The contract itself (:class:`Augmenter` and the loss helpers) is
the engine's, in :mod:`privbench.engine.method`; it is re-exported here for plugins."""

from __future__ import annotations

from privbench.engine.method import (
    PREPARE_ROUND,
    Augmenter,
    ClientRole,
    ClientState,
    Reply,
    ServerRole,
    cross_entropy,
    input_gradient,
    per_sample_cross_entropy,
    under_transform,
)
from privbench.registry import Registry

AUGMENTERS: Registry[Augmenter] = Registry("method")

__all__ = [
    "AUGMENTERS",
    "PREPARE_ROUND",
    "Augmenter",
    "ClientRole",
    "ClientState",
    "Reply",
    "ServerRole",
    "cross_entropy",
    "input_gradient",
    "per_sample_cross_entropy",
    "under_transform",
]
