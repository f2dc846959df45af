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


class UserCodeError(PrivbenchError):
    """A user's callable (a ``--dataset``/``--model`` import string, a model factory, a
    data loader) raised or returned something privbench cannot use."""
