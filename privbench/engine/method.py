"""The method contract (an augmenter): optional hooks around federated training.

The engine calls these; plugins subclass :class:`Augmenter` (re-exported by
``privbench.augmenters``) and register with ``AUGMENTERS``.

An augmenter is the *public* algorithm a client runs. Its hooks, all optional:

- ``share_clients(round, sampled, everyone)``: which clients call ``share`` this round;
- ``share(round, client)``: what a client uploads before training (e.g. averaged data);
- ``server_receive(round, sender, kind, payload)``: the server collects those;
- ``broadcast(round, receiver)``: what the server sends a client besides the model;
- ``training_data(round, client, x, y)``: the data a client trains on this round (what
  it adds beyond ``x`` counts as synthetic in the row's ``synthetic_share``);
- ``local_loss(model, x, y, *, received, generator)``: the client's training loss.
  ``generator`` is the client's private randomness (which shared entry to mix with, ...).
  Attacks call the same function with ``generator=None``: the method must then return
  what an outsider can compute, its loss in expectation over that private randomness
  (exact where the loss is linear in it, as FedMix's is), so a gradient attack on a
  method is method-aware. Attacks differentiate it with ``torch.func`` (and ``vmap``
  it over trials), so it must be functional in ``model``'s weights: no
  ``requires_grad_`` and no ``torch.autograd.grad`` inside; a loss that needs an input
  derivative (FedMix) takes it with :func:`input_gradient`;
- ``local_training()``: the method's own local-training strategy
  (:class:`~privbench.engine.training.LocalTraining`), for methods that train something
  besides the model (FedAvP's policy); ``None``: plain local SGD. Defenses wrap it;
- ``upload(round, client)``: what a client sends after local training besides its model
  update (FedAvP's policy update);
- ``attack_view(guess, generator)``: the loss a gradient attacker simulates when the
  method draws private randomness it cannot see (``guess``: expected, sample, identity);
- ``after_aggregate(round, model)``: server-side work after aggregation; methods with
  ``needs_client_models = True`` (Fed-ZDAS) also get ``client_models``, each received
  client's model (broadcast weights plus its update, as the server received it);
- ``prepare(phase)``: a phase before the first round (train a federated generator,
  pre-train the classifier); its messages go through ``phase.send`` and are counted
  in round :data:`PREPARE_ROUND`;
- ``begin_round(round, clients, model)``: client side, after the sampled ``clients``
  received the global ``model`` and before they train (Fed-ZDAC generates each client's
  synthetic data here; one call for all of them, so a method can batch their work);
- ``attack_synthetic(context, count, generator)``: an attacker's estimate of the
  ``count`` synthetic samples a victim mixed into its attacked batch, built from public
  knowledge only (the broadcast model, the shared generator). Gradient attacks add them
  to the dummy batch so the simulated loss is the victim's real + synthetic loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from privbench.engine.channel import Payload
from privbench.errors import IncompatibleError


def per_sample_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) cross-entropy for hard labels (B,) or soft labels / probabilities (B, K)."""
    if y.dtype.is_floating_point and y.ndim == 2:
        return -(y * F.log_softmax(logits, dim=1)).sum(dim=1)
    return F.cross_entropy(logits, y, reduction="none")


def under_transform() -> bool:
    """True inside a ``torch.func`` transform (grad, vmap), where ``requires_grad`` says
    nothing about whether a tensor is being differentiated."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def input_gradient(fn, x: torch.Tensor):
    """``(d fn(x)[0] / dx, fn(x)[1])`` for ``fn(x) -> (scalar, aux)``, differentiable.

    Inside a ``torch.func`` transform (an attack vectorising its trials) this is
    ``torch.func.grad``. Outside, it is autograd with ``create_graph``: training runs
    real modules whose BatchNorm updates running statistics in place, which function
    transforms refuse.
    """
    if under_transform():
        return torch.func.grad(fn, has_aux=True)(x)
    x = x.detach().requires_grad_(True) if not x.requires_grad else x
    value, aux = fn(x)
    (dx,) = torch.autograd.grad(value, x, create_graph=True)
    return dx, aux


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard labels (B,) or soft labels (B, K)."""
    return per_sample_cross_entropy(logits, y).mean()


PREPARE_ROUND = -1  # the round number of messages sent by ``Augmenter.prepare``


@dataclass
class Preparation:
    """What ``Augmenter.prepare`` may use before the first round.

    ``clients``: every client's state (client-side code reads only its own client's
    data). ``model``: the global classifier, which the method may train in place before
    it is first broadcast. ``send(sender, receiver, kind, payload, context=None)``: a
    message on the run's channel (client uploads pass the run's artifact defenses);
    returns what the receiver gets. ``generator(party)``: that party's private
    randomness (a client id or ``"server"``). ``context(num_images)``: the public
    recipe to attach to an upload, for attacks on it.
    """

    clients: dict[int, ClientState]
    model: nn.Module
    send: Callable[..., Payload]
    generator: Callable[[int | str], torch.Generator]
    context: Callable[[int], Any]


@dataclass
class ClientState:
    """A client's view during a round. ``x``/``y`` are private and never leave the client."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor
    received: dict[str, Payload] = field(default_factory=dict)


class Augmenter:
    """Base class: every hook is a no-op, ``local_loss`` is cross-entropy."""

    name = "augmenter"
    shares: tuple[str, ...] = ()  # message kinds this method puts on the channel
    # How DP-SGD gets one gradient per record: "hooks" (Opacus' GradSampleModule; the
    # loss is a mean of per-record terms of first-order ops), "microbatch" (one backward
    # per record; losses that differentiate through their inputs) or None (the loss
    # couples records of a batch: no per-record gradient exists).
    per_sample_grads: str | None = "hooks"
    value_range: tuple[float, float] = (0.0, 1.0)  # the dataset's pixel range (set by the run)
    # True: the method inverts BatchNorm running statistics (ZSDG); the run needs a model
    # that keeps them.
    needs_batchnorm = False
    # The model a run uses when the user names none (Fed-ZDA needs BatchNorm: cnn-bn).
    default_model: str | None = None
    # True: ``after_aggregate`` also receives every received client model (Fed-ZDAS).
    needs_client_models = False

    def __init__(self, **params: Any):
        self.params: dict[str, Any] = dict(params)

    def setup(
        self, *, num_classes: int, input_shape: tuple[int, int, int], num_clients: int, seed: int
    ) -> None:
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.num_clients = num_clients
        self.seed = seed

    def share_clients(self, round: int, sampled: list[int], everyone: list[int]) -> list[int]:
        return sampled

    def share(self, round: int, client: ClientState) -> dict[str, Payload]:
        return {}

    def server_receive(self, round: int, sender: int, kind: str, payload: Payload) -> None:
        return None

    def broadcast(self, round: int, receiver: int) -> dict[str, Payload]:
        return {}

    def training_data(
        self, round: int, client: ClientState, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def local_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        received: Mapping[str, Payload],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return cross_entropy(model(x), y)

    def local_training(self) -> Any:
        """This method's local-training strategy, or ``None`` for plain local SGD."""
        return None

    def upload(self, round: int, client: ClientState) -> dict[str, Payload]:
        return {}

    def attack_view(self, guess: str, generator: torch.Generator) -> Augmenter:
        """The augmenter whose ``local_loss(generator=None)`` an attacker simulates.
        Methods without hidden randomness (or with a loss linear in it) are their own view."""
        return self

    def after_aggregate(self, round: int, model: nn.Module, **kwargs: Any) -> None:
        return None

    def prepare(self, phase: Preparation) -> None:
        return None

    def begin_round(self, round: int, clients: list[ClientState], model: nn.Module) -> None:
        return None

    def attack_synthetic(
        self, context: Any, count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    # -- what the method publishes: its shared artifacts, rebuilt from public recipe ------

    def decoder(self, weights: Payload) -> nn.Module | None:
        """The generator this method shares, with the given (decoder) ``weights``, as any
        party rebuilds it; ``None``: the method shares no generator."""
        return None

    def policy_state(self, received: Mapping[str, Payload]) -> Mapping[str, torch.Tensor] | None:
        """The augmentation policy among the messages a client ``received``; ``None``: the
        method shares no policy."""
        return None

    def train_policy(self, model: nn.Module, x, y, theta, **recipe: Any) -> tuple[int, Any]:
        """A client's local training of model and policy from ``theta`` (what a shadow
        client replays); only methods that learn a policy have one."""
        raise IncompatibleError(f"method '{self.name}' learns no augmentation policy")
