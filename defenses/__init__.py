"""Defenses: wrap client training or what clients send."""

from privbench.defenses import dp, dpsgd, noise  # noqa: F401  (register the defenses)
from privbench.defenses.base import DEFENSES, Defense, PrivacySpend

__all__ = ["DEFENSES", "Defense", "PrivacySpend"]
