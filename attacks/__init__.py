"""Attacks on what crosses the channel: gradient inversion and artifact reconstruction."""

from privbench.attacks import gradient  # noqa: F401  (registers dlg, idlg, ig)
from privbench.attacks.base import ATTACKS, Attack, Reconstruction

__all__ = ["ATTACKS", "Attack", "Reconstruction"]
