"""Attacks on what crosses the channel: gradient inversion and artifact reconstruction."""

from privbench.attacks import artifacts, gradient, policy  # noqa: F401  (register the attacks)
from privbench.attacks.base import ATTACKS, Attack, Reconstruction

__all__ = ["ATTACKS", "Attack", "Reconstruction"]
