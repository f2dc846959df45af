"""Defenses: wrap client training or what clients send."""

from privbench.defenses.base import DEFENSES, Defense, PrivacySpend

__all__ = ["DEFENSES", "Defense", "PrivacySpend"]
