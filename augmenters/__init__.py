"""Augmentation methods (registered as ``method`` in the CLI)."""

from privbench.augmenters import fedavp, fedmix, none, randaug  # noqa: F401  (register the methods)
from privbench.augmenters.base import (
    AUGMENTERS,
    Augmenter,
    ClientState,
    cross_entropy,
    input_gradient,
)

__all__ = ["AUGMENTERS", "Augmenter", "ClientState", "cross_entropy", "input_gradient"]
