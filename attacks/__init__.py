"""Attacks on what crosses the channel: gradient inversion and artifact reconstruction."""

from privbench.attacks import (  # noqa: F401  (register the attacks)
    artifacts,
    bn_inversion,
    generative,
    gradient,
    policy,
)
from privbench.attacks.base import ATTACKS, Attack, Reconstruction

__all__ = ["ATTACKS", "Attack", "Reconstruction"]
