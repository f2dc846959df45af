"""Augmentation methods (registered as ``method`` in the CLI)."""

from privbench.augmenters import (  # noqa: F401  (register the methods)
    cvae,
    fedavp,
    fedmix,
    none,
    randaug,
    zsdg,
)
from privbench.augmenters.base import (
    AUGMENTERS,
    Augmenter,
    ClientRole,
    ClientState,
    ServerRole,
    cross_entropy,
    input_gradient,
)

__all__ = [
    "AUGMENTERS",
    "Augmenter",
    "ClientRole",
    "ClientState",
    "ServerRole",
    "cross_entropy",
    "input_gradient",
]
