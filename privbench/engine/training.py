"""Local training as one composable strategy (in the spirit of Flower's client mods and
Opacus' ``make_private``): plain SGD is the default; a method that learns more than the
model during local training (FedAvP's policy) supplies its own; a defense that changes
how a client trains (DP-SGD) wraps whatever it is given, and refuses what it cannot wrap.

The engine builds the chain once per run (:func:`training_chain`) and calls it for every
client: ``gradient`` for a FedSGD step, ``train`` for local epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from privbench.engine.federated import local_train
from privbench.engine.method import ClientState
from privbench.errors import IncompatibleError


@dataclass(frozen=True)
class LocalTask:
    """One client's local computation in one round (private to that client).

    ``x``/``y``: what it trains on (its records, plus the method's synthetic samples);
    ``epochs``: local epochs, or steps on the whole of (x, y) when ``fixed_batch`` (the
    attacked round's victim); ``generator``: its batch shuffles; ``private``: the
    method's randomness; ``num_records``: its real record count (DP's sampling rate);
    ``per_sample``: how the method's loss yields per-record gradients (see
    :attr:`~privbench.engine.method.Augmenter.per_sample_grads`).
    """

    round: int
    client: ClientState
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable[..., torch.Tensor]
    epochs: int
    batch_size: int
    lr: float
    generator: torch.Generator
    private: torch.Generator
    algorithm: Any
    num_records: int
    per_sample: str | None
    fixed_batch: bool
    optimizer: str = "sgd"
    weight_decay: float = 0.0


class LocalTraining:
    """Plain local SGD: the default strategy. A strategy that is not plain SGD says what
    it is in ``replaces`` (for the message when two of them meet)."""

    replaces: str | None = None

    def gradient(self, model: torch.nn.Module, task: LocalTask) -> dict[str, torch.Tensor]:
        """FedSGD: one full-batch gradient at the global weights (the server applies it)."""
        model.train()
        params = dict(model.named_parameters())
        loss = task.loss_fn(model, task.x, task.y)
        grads = torch.autograd.grad(loss, list(params.values()))
        return {n: g.detach() for n, g in zip(params, grads, strict=True)}

    def train(self, model: torch.nn.Module, task: LocalTask) -> int:
        """Train ``model`` in place; return the SGD steps taken."""
        return local_train(
            model,
            task.x,
            task.y,
            loss_fn=task.loss_fn,
            epochs=task.epochs,
            batch_size=task.batch_size,
            lr=task.lr,
            generator=task.generator,
            algorithm=task.algorithm,
            optimizer=task.optimizer,
            weight_decay=task.weight_decay,
        )

    @property
    def is_plain(self) -> bool:
        """Plain SGD and nothing else (what vectorised clients compute)."""
        return type(self) is LocalTraining


def training_chain(client: Any, defenses: Iterable[Any], fed: Any = None) -> LocalTraining:
    """The run's local training: the method's client strategy (plain SGD unless it
    brings its own), wrapped by each defense in the order given. A wrapper that cannot
    serve what it is given raises :class:`~privbench.errors.IncompatibleError`, and so
    does a local optimiser other than plain SGD (``fed``: the run's FedConfig) when a
    strategy replaces local SGD: it trains with its own SGD and would drop it."""
    training = client.local_training() or LocalTraining()
    for d in defenses:
        wrapped = d.wrap_training(training)
        if wrapped is not training and wrapped.replaces and not training.is_plain:
            raise IncompatibleError(f"{wrapped.replaces}, and {training.replaces}; choose one.")
        training = wrapped
    if fed is not None and not fed.plain_sgd and not training.is_plain:
        raise IncompatibleError(
            f"The optimizer {fed.optimizer!r} (weight decay {fed.weight_decay:g}) needs plain "
            f"local training, and {training.replaces} trains with its own SGD; use "
            "--optimizer sgd without --local-weight-decay."
        )
    return training
