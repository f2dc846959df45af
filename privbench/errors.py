"""privbench's exceptions: one small hierarchy, all ``ValueError`` so callers can catch broadly."""

from __future__ import annotations


class PrivbenchError(ValueError):
    """Base class of every error privbench raises on bad input or bad state."""


class UnknownNameError(PrivbenchError):
    """A plugin name (method, attack, dataset, ...) that is not registered."""


class ParameterError(PrivbenchError):
    """A parameter whose value, type or name is not allowed."""


class DatasetNotFoundError(PrivbenchError):
    """A torchvision dataset that is not on disk (and ``--download`` was not given)."""


class IncompatibleError(PrivbenchError):
    """A combination that cannot work (an attack whose observations the threat model never sees)."""


class DivergedError(PrivbenchError):
    """Training produced non-finite weights: the run ends as an error row, not a score.

    ``outcome``: when the attacked round came before the divergence, what the run had
    produced up to it (a :class:`~privbench.engine.outcome.TrainingOutcome` without
    utility): the victims' messages were sent, so the attacks still run on them; None
    otherwise."""

    outcome = None


# AttackDivergedError's message after the attack's name.
ATTACK_DIVERGED = "every restart diverged (non-finite loss)"


class AttackDivergedError(RuntimeError):
    """Every restart of an attack ended at a non-finite loss (free DLG pixels that a
    victim's augmentation overflows): the attack rebuilds nothing. Its starts and the
    message are deterministic, so a rerun diverges again: its error row settles its point
    (``results.store.settled``) as a diverged training's does."""


class UserCodeError(PrivbenchError):
    """A user's callable (a ``--dataset``/``--model`` import string, a model factory, a
    data loader) raised or returned something privbench cannot use."""
