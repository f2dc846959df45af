"""Augmentation methods (registered as ``method`` in the CLI)."""

from privbench.augmenters import none  # noqa: F401  (registers fedavg)
from privbench.augmenters.base import AUGMENTERS, Augmenter, ClientState, cross_entropy

__all__ = ["AUGMENTERS", "Augmenter", "ClientState", "cross_entropy"]
