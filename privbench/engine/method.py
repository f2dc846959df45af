"""The method contract: what a method's clients do, what its server does, and what it
publishes.

A method (an "augmenter") is three roles, each a base class here with every hook
declared and a no-op default; plugins subclass them and register the method with
``AUGMENTERS`` (re-exported by ``privbench.augmenters``):

- :class:`Augmenter`, **what the method publishes**: its public parameters and public
  functions, which every party (attackers included) may evaluate. It holds no party's
  state. ``local_loss(model, x, y, *, received, generator)`` is the client's training
  loss; ``generator`` is the client's private randomness (which shared entry to mix with,
  ...). Attacks call it with ``generator=None``: the method then returns what an outsider
  can compute, its loss in expectation over that private randomness (exact where the loss
  is linear in it). Attacks differentiate it with ``torch.func`` (and ``vmap`` it), so it
  must be functional in ``model``'s weights (no ``requires_grad_``, no
  ``torch.autograd.grad``: take an input derivative with :func:`input_gradient`).
  ``attack_view``, ``attack_synthetic``, ``decoder``, ``policy_state`` and
  ``train_policy`` are the other public functions attacks use.
- :class:`ClientRole`, **what its clients do**: ``share`` (uploads before training),
  ``begin_round`` (client-side work after the model arrives, e.g. Fed-ZDAC's data
  generation), ``training_data`` (what a client trains on), ``local_training`` (its
  local-training strategy, if not plain SGD), ``upload`` (what it sends besides its
  update) and ``prepare`` (its side of the phase before round 0). Every client's private
  state lives in :attr:`ClientRole.private` (``private[client_id]``: a flat dict of
  tensors), so a runtime can keep it where the client lives (Flower: the node's
  ``context.state``) and nothing on the server's or the attacker's side can reach it.
- :class:`ServerRole`, **what its server does**: ``share_clients`` (who shares this
  round), ``receive`` (collect clients' artifacts), ``broadcast`` (what it sends besides
  the model), ``after_aggregate`` (server-side work after aggregation) and
  ``prepare_send``/``prepare_receive`` (its side of the phase before round 0).

The engine owns the round loop (:mod:`privbench.engine.experiment`) and calls the roles
in a fixed order: the phase before round 0 (``prepare_send`` → each client's ``prepare``
→ ``prepare_receive``, step after step until ``prepare_send`` returns ``None``; its
messages are counted in round :data:`PREPARE_ROUND`); then per round ``share_clients`` →
``share`` → ``receive``; the model and ``broadcast`` down; ``begin_round``;
``training_data`` and local training; the update and ``upload`` up (``receive``);
aggregation; ``after_aggregate``.
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
from privbench.registry import Configurable


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
class ClientState:
    """A client's view during a round. ``x``/``y`` are private and never leave the client."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor
    received: dict[str, Payload] = field(default_factory=dict)


class ClientRole:
    """What a method's clients do (see the module docstring). One object plays every
    client of a run in one process (a runtime like Flower gives each node its own); each
    client's private state is ``private[client_id]``, a flat dict of tensors."""

    def __init__(self, method: Augmenter):
        self.method = method
        self.private: dict[int, dict[str, torch.Tensor]] = {}

    def share(self, round: int, client: ClientState) -> dict[str, Payload]:
        """What ``client`` uploads before training this round (if the server asked)."""
        return {}

    def begin_round(
        self, round: int, clients: list[ClientState], model: Callable[[], nn.Module]
    ) -> None:
        """After the sampled ``clients`` received the global model (``model()`` builds it)
        and before they train; one call for all of them, so a method can batch them."""
        return None

    def training_data(
        self, round: int, client: ClientState, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The data ``client`` trains on, given its batch ``(x, y)`` of real records;
        what it adds counts as synthetic in the row's ``synthetic_share``."""
        return x, y

    def local_training(self) -> Any:
        """The clients' local-training strategy
        (:class:`~privbench.engine.training.LocalTraining`), ``None``: plain local SGD."""
        return None

    def upload(self, round: int, client: ClientState) -> dict[str, Payload]:
        """What ``client`` sends after local training besides its model update."""
        return {}

    def prepare(
        self,
        step: int,
        client: ClientState,
        received: Mapping[str, Payload],
        generator: torch.Generator,
    ) -> dict[str, Payload]:
        """Step ``step`` of the phase before round 0: the client got ``received`` from
        the server; return its reply (``generator``: its private randomness)."""
        return {}


@dataclass(frozen=True)
class Reply:
    """A client's reply in the phase before round 0, as the server receives it: the
    messages and the number of records behind them (public metadata, like Flower's
    ``num-examples``)."""

    messages: Mapping[str, Payload]
    num_examples: int


def run_prepare_phase(
    server: ServerRole,
    clients: list[int],
    model: nn.Module,
    exchange: Callable[[int, dict[int, dict[str, Payload]]], Mapping[int, Reply]],
    generator: Callable[[], torch.Generator],
) -> None:
    """The phase before round 0, the same in every runtime: step by step the server role
    says what to send, ``exchange(step, outgoing)`` delivers it and returns each client's
    :class:`Reply` (the built-in loop calls the client roles; Flower sends query
    messages), and the server role receives the replies in client order, until it sends
    nothing. ``generator()``: the server's private randomness for one step."""
    step = 0
    while (outgoing := server.prepare_send(step, clients, model)) is not None:
        replies = exchange(step, outgoing)
        server.prepare_receive(step, dict(sorted(replies.items())), model, generator())
        step += 1


class ServerRole:
    """What a method's server does (see the module docstring)."""

    def __init__(self, method: Augmenter):
        self.method = method

    def share_clients(self, round: int, sampled: list[int], everyone: list[int]) -> list[int]:
        """The clients asked to ``share`` this round."""
        return sampled

    def receive(self, round: int, sender: int, kind: str, payload: Payload) -> None:
        """A client's artifact (a ``share`` or an ``upload``), as the server received it."""
        return None

    def broadcast(self, round: int, receiver: int) -> dict[str, Payload]:
        """What the server sends ``receiver`` besides the model this round."""
        return {}

    def after_aggregate(
        self,
        round: int,
        model: nn.Module,
        client_models: Callable[[], dict[int, nn.Module]],
    ) -> None:
        """Server-side work on the aggregated ``model`` (in place); ``client_models()``
        builds each received client's model (broadcast weights plus its update)."""
        return None

    def prepare_send(
        self, step: int, clients: list[int], model: nn.Module
    ) -> dict[int, dict[str, Payload]] | None:
        """Step ``step`` of the phase before round 0: what to send each client; ``None``
        ends the phase (the default: no phase). ``model``: the global classifier, which
        the server may train in place before it is first broadcast."""
        return None

    def prepare_receive(
        self,
        step: int,
        replies: Mapping[int, Reply],
        model: nn.Module,
        generator: torch.Generator,
    ) -> None:
        """The clients' replies to step ``step`` (``generator``: the server's private
        randomness)."""
        return None


class Augmenter(Configurable):
    """What a method publishes (see the module docstring): its parameters and public
    functions; ``local_loss`` is cross-entropy. ``Client``/``Server``: its roles."""

    name = "augmenter"
    shares: tuple[str, ...] = ()  # message kinds this method puts on the channel
    # How DP-SGD gets one gradient per record: "hooks" (Opacus' GradSampleModule; the
    # loss is a mean of per-record terms of first-order ops), "microbatch" (one backward
    # per record; losses that differentiate through their inputs) or None (the loss
    # couples records of a batch: no per-record gradient exists).
    per_sample_grads: str | None = "hooks"
    value_range: tuple[float, float] = (0.0, 1.0)  # the dataset's pixel range (set by the run)
    # True: the method inverts BatchNorm running statistics (ZSDG): its model keeps them.
    needs_batchnorm = False
    # The model a run uses when the user names none (Fed-ZDA needs BatchNorm: cnn-bn).
    default_model: str | None = None
    # True: ``local_loss`` is the base cross-entropy, one function for every client, so
    # clients may train as one vectorised computation (False where a subclass defines
    # its own ``local_loss`` and says nothing).
    plain_loss = True
    # True: ``local_loss`` is the base cross-entropy on the batch ``mixed_batch`` returns
    # (e.g. mixup): clients still vectorise, each mixing with its own private generator.
    mixes_batches = False
    # True: ``local_loss`` is ``drawn_loss`` (a mean over the batch of per-record terms)
    # with one private draw per step, ``step_draw`` (FedMix: the X_g entry). Clients then
    # vectorise on a model :mod:`privbench.nn.stacked` can stack, each drawing its own.
    draws_per_step = False
    # True: the attacker's view puts the dummies through image ops defined on valid
    # images only (FedAvP's policy ops), where an unbounded L-BFGS dummy overflows:
    # ``all-gradient`` adds each attack's ``@sigmoid`` variant (dummies in the box).
    attack_image_ops = False
    # Guesses of private draws ``all-gradient`` tries too (FedAvP: identity, copies).
    attack_guesses: tuple[str, ...] = ()
    Client: type[ClientRole] = ClientRole
    Server: type[ServerRole] = ServerRole

    def augmented_views(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x`` (B, C, H, W) under every draw of the private image augmentation a client
        trains on, as the adversary enumerates it from the public parameters: (K, B, C,
        H, W); None for a method without one (scores' ``psnr_augmented``)."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "local_loss" in cls.__dict__ and "plain_loss" not in cls.__dict__:
            cls.plain_loss = False
        if "local_loss" in cls.__dict__ and "mixes_batches" not in cls.__dict__:
            cls.mixes_batches = False
        if "local_loss" in cls.__dict__ and "draws_per_step" not in cls.__dict__:
            cls.draws_per_step = False

    def client_role(self) -> ClientRole:
        """A fresh client side of this method (it holds the clients' private state)."""
        return self.Client(self)

    def server_role(self) -> ServerRole:
        """A fresh server side of this method (it holds the server's state)."""
        return self.Server(self)

    def setup(
        self, *, num_classes: int, input_shape: tuple[int, int, int], num_clients: int, seed: int
    ) -> None:
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.num_clients = num_clients
        self.seed = seed

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

    def mixed_batch(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        received: Mapping[str, Payload],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For a method that ``mixes_batches``: the inputs and soft labels (B, K) whose
        base cross-entropy is ``local_loss`` of (x, y), drawing the same randomness from
        ``generator`` in the same order."""
        raise NotImplementedError(f"{self.name} does not mix batches")

    def step_draw(
        self, received: Mapping[str, Payload], generator: torch.Generator
    ) -> dict[str, torch.Tensor] | None:
        """For a method that ``draws_per_step``: the private draw ``local_loss`` makes for
        one batch, as (1, ...) tensors, drawing from ``generator`` in the same order;
        None when ``received`` holds nothing to draw from (the loss is then the base
        cross-entropy)."""
        raise NotImplementedError(f"{self.name} does not draw per step")

    def drawn_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **draw
    ) -> torch.Tensor:
        """For a method that ``draws_per_step``: ``local_loss`` given its draw; each
        tensor of ``draw`` holds one row per record of ``x`` (the draw broadcast)."""
        raise NotImplementedError(f"{self.name} does not draw per step")

    def attack_view(
        self, guess: str, generator: torch.Generator, candidate: int | None = None
    ) -> Augmenter:
        """The augmenter whose ``local_loss(generator=None)`` an attacker simulates.
        Methods without hidden randomness (or with a loss linear in it) are their own view.
        ``candidate``: with ``guess="enumerate"``, the view in which the victim's private
        choice was candidate ``candidate`` (see :meth:`attack_candidates`)."""
        return self

    # A view may hold its candidate as tensors (``trial_inputs``) so that the views of all
    # candidates are one function of those tensors (``recipe``: the object they share) and
    # an attack runs every candidate's trials as one batched computation.
    @property
    def recipe(self) -> Augmenter:
        """The object whose views differ only by :meth:`trial_inputs` (itself here)."""
        return self

    def trial_inputs(self, received: Mapping[str, Payload]) -> dict[str, torch.Tensor]:
        """This view's per-candidate tensors, given what the victim ``received`` (none:
        the view is the recipe itself)."""
        return {}

    def with_trial_inputs(self, inputs: Mapping[str, torch.Tensor]) -> Augmenter:
        """The view whose per-candidate tensors are ``inputs`` (possibly batched-traced)."""
        return self

    def attack_candidates(self, received: Mapping[str, Payload]) -> int:
        """How many values of the victim's private choice an adversary that knows
        ``received`` can enumerate (FedMix: the X_g entries it may mix with); 0: nothing
        to enumerate (``guess="enumerate"`` is then the expected view)."""
        return 0

    def drawn_candidates(
        self, received: Mapping[str, Payload], generator: torch.Generator, calls: int
    ) -> list[int]:
        """Ground truth for scoring, never for attacks: the candidates a client whose
        private randomness is ``generator`` used over ``calls`` loss evaluations."""
        return []

    def trained_views(self, x: torch.Tensor, received: Mapping[str, Payload], generator):
        """Ground truth for scoring, never for attacks: the K copies of batch ``x`` that a
        client with private randomness ``generator`` trained on in its first loss
        evaluation, (K, B, C, H, W) (FedAvP: its op pairs); None: as augmented_views."""
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
