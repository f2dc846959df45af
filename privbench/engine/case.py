"""The case: a resolved configuration built into data, clients, model and threat model.

Like breaching's ``cases``: the case holds the ground truth and builds the public recipe
an adversary gets (:meth:`Case.public_context`); the round loop trains on it
(:mod:`privbench.engine.experiment`); the evaluation scores against it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from privbench import registries
from privbench.config import RunConfig
from privbench.data import DataBundle, as_bundle, load_dataset
from privbench.data.partition import ClientSplit, partition, split_clients
from privbench.engine.channel import Channel, PublicContext
from privbench.engine.federated import predict
from privbench.engine.seeding import derive_seed
from privbench.engine.training import LocalTraining, training_chain
from privbench.errors import IncompatibleError, ParameterError
from privbench.evaluation.metrics import utility
from privbench.models import check_model_output, model_factory
from privbench.nn.batchnorm import batchnorm_layers

log = logging.getLogger("privbench")

ATTACKER_STREAM = 12  # derive_seed(seed, ATTACKER_STREAM): the public method's seed


def client_splits(cfg: RunConfig, labels: np.ndarray) -> list[ClientSplit]:
    """The clients a run of ``cfg`` builds from its training ``labels``: the seeded
    partition, then each client's local train/test split. Anything that needs a run's
    clients before it trains (a batch bound, a size) asks here, not a copy of it."""
    parts = partition(
        cfg.partition, labels, cfg.fed.clients, seed=cfg.seed, params=cfg.partition_params
    )
    return split_clients(parts, test_fraction=cfg.fed.local_test_fraction, seed=cfg.seed)


@dataclass(frozen=True)
class RunParts:
    """The run's live parts, built once per run (the engine's side; never handed to an
    attack): the trainer, the method's public definition and its client and server roles
    (the roles hold the parties' state), the defenses in the order given, the channel,
    and the clients' local-training chain."""

    algorithm: Any
    method: Any
    client: Any
    server: Any
    defenses: tuple[Any, ...]
    channel: Channel | None
    training: LocalTraining


@dataclass(frozen=True)
class ModelBuilder:
    """The model every party builds: the factory, the data's shape and class count, the
    model's parameters, then each defense's layer replacement (e.g. BatchNorm ->
    GroupNorm under DP-SGD). A standalone public recipe: calling it reaches nothing of
    the run."""

    factory: Callable[..., torch.nn.Module]
    shape: tuple[int, ...]
    num_classes: int
    params: Mapping[str, Any]
    fixers: tuple[Callable[[torch.nn.Module], tuple[torch.nn.Module, bool]], ...] = ()

    def __call__(self) -> torch.nn.Module:
        model = self.factory(self.shape, self.num_classes, **self.params)
        for fix in self.fixers:
            model = fix(model)[0]
        return model


class Case:
    """One resolved configuration built into a case: the data and its partition, the
    model every party builds, the threat model; checked before anything trains.

    The case keeps the ground truth (every client's records); the round loop
    (:class:`~privbench.engine.experiment.Experiment`) trains on it and the evaluation
    scores against it. Attacks get none of it: they see :class:`PublicContext` records,
    built by :meth:`public_context` from public information only.
    """

    def __init__(self, config: RunConfig, *, model=None, data=None):
        """``model``/``data``: a user's own model factory (or module) and data (anything
        :func:`~privbench.data.as_bundle` takes) instead of registered names; the
        config's ``model``/``dataset`` fields are then only their labels in the rows."""
        provided = frozenset(k for k, v in (("model", model), ("dataset", data)) if v is not None)
        self.cfg = config.resolve(provided=provided)
        regs = registries()
        self.regs = regs
        cfg = self.cfg
        if data is not None:
            self.data: DataBundle = as_bundle(data, name=cfg.dataset)
        else:
            self.data = load_dataset(
                cfg.dataset, cfg.dataset_params, root=cfg.data_root, download=cfg.download
            )
        if model is not None:
            self._factory = model_factory(model, cfg.model)
        else:
            self._factory = regs["model"].entry(cfg.model).factory
        check_model_output(
            self._factory(self.data.shape, self.data.num_classes, **cfg.model_params),
            self.data.x_train[:2],
            self.data.num_classes,
            cfg.model,
        )
        self.clients: list[ClientSplit] = client_splits(cfg, self.data.y_train.numpy())
        self._check_sizes()
        # Threat models are validated against the run (a curious client must exist).
        self.threat = self.regs["threat"].build(cfg.attack.threat, cfg.attack.threat_params)
        self.threat.bind(cfg.fed.clients)
        # The method as an outsider knows it, built before any party's state exists;
        # the checks below read its public declarations.
        self.public_method = self._public_method()
        self._check_defenses()
        self._check_batchnorm()

    def _check_batchnorm(self) -> None:
        """Methods and attacks that invert BatchNorm statistics (ZSDG) need a model that
        keeps them; say so before anything trains."""
        needs = []
        if self.public_method.needs_batchnorm:
            needs.append(f"method '{self.cfg.method}'")
        for name in self.cfg.attack.names:
            attack = self.regs["attack"].build(name, self.cfg.attack.params[name])
            if attack.needs_batchnorm:
                needs.append(f"attack '{name}'")
        if needs and not batchnorm_layers(self.build_model()):
            raise IncompatibleError(
                f"{' and '.join(needs)} {'need' if len(needs) > 1 else 'needs'} BatchNorm "
                f"running statistics (ZSDG inverts them), and model "
                f"'{self.cfg.model}' has no BatchNorm layers that keep them; use a model "
                "with BatchNorm (e.g. --model cnn-bn)."
            )

    def _check_defenses(self) -> None:
        """The defenses must accept the run's trainer and method, and their local-training
        strategies must compose (at most one replaces plain SGD); model-changing defenses
        announce the change once."""
        classes = [self.regs["defense"].entry(n).factory for n in self.cfg.defenses]
        defenses = [
            self.regs["defense"].build(n, self.cfg.defense_params[n]) for n in self.cfg.defenses
        ]
        # Raises when two strategies replace local SGD.
        training_chain(self.public_method.client_role(), defenses, self.cfg.fed)
        self._model_fixers = [c.prepare_model for c in classes]
        for name, fix in zip(self.cfg.defenses, self._model_fixers, strict=True):
            if fix(self._raw_model())[1]:
                log.warning(
                    "%s: model '%s' has layers that mix records (BatchNorm); every party, "
                    "the attacker included, uses Opacus' ModuleValidator.fix of it "
                    "(GroupNorm) instead.",
                    name,
                    self.cfg.model,
                )
        for d in defenses:
            d.check(algorithm=self.make_algorithm(), augmenter=self.public_method)
            self._setup_defense(d)  # the schedule's own checks (client-dp's accountant)

    def victim_ids(self) -> list[int]:
        """The clients the attack round forces into its sample (none without attacks)."""
        atk = self.cfg.attack
        return list(range(atk.victims)) if atk.names else []

    def sample_clients(self, rng: np.random.Generator, rnd: int) -> list[int]:
        """The clients of round ``rnd``, drawn from the run's sampler ``rng``: fixed, m of
        N without replacement; poisson, each client with probability q = m/N (a round
        may be empty). In the attack round the victims are forced in (fixed: in place of
        drawn clients, keeping m; poisson: added to the draw, so for them that round's
        inclusion probability is 1, which the accountants charge)."""
        fed = self.cfg.fed
        m, n = fed.clients_per_round, fed.clients
        if fed.client_sampling == "poisson":
            sampled = [int(c) for c in np.flatnonzero(rng.random(n) < m / n)]
        else:
            sampled = sorted(int(c) for c in rng.choice(n, m, replace=False))
        victims = self.victim_ids()
        if rnd != self.cfg.attack.round or not victims:
            return sampled
        if fed.client_sampling == "poisson":
            return sorted(set(sampled) | set(victims))
        others = [c for c in sampled if c not in victims]
        return sorted(victims + others[: m - len(victims)])

    def make_algorithm(self):
        """The run's federated trainer (FedAvg, FedProx, q-FFL) with its parameters."""
        return self.regs["algorithm"].build(self.cfg.fed.algorithm, self.cfg.fed.algorithm_params)

    def make_parts(self, *, method=None, defenses=None, channel=None) -> RunParts:
        """The run's trainer, method (``method``: one already built) with fresh client and
        server roles, defenses (default: the configured ones, set up for this run) and
        the clients' local-training chain."""
        algorithm = self.make_algorithm()
        method = method if method is not None else self.make_augmenter()
        if defenses is None:
            defenses = [
                self.regs["defense"].build(n, self.cfg.defense_params[n]) for n in self.cfg.defenses
            ]
            for d in defenses:
                self._setup_defense(d)
        defenses = tuple(defenses)
        client = method.client_role()
        return RunParts(
            algorithm,
            method,
            client,
            method.server_role(),
            defenses,
            channel,
            training_chain(client, defenses, self.cfg.fed),
        )

    def _setup_defense(self, defense) -> None:
        """Tell ``defense`` the run's public schedule."""
        fed = self.cfg.fed
        victims = self.victim_ids()
        defense.setup(
            num_clients=fed.clients,
            clients_per_round=fed.clients_per_round,
            rounds=fed.rounds,
            seed=self.cfg.seed,
            lr=fed.lr,
            batch_size=fed.batch_size,
            local_epochs=fed.local_epochs,
            client_sampling=fed.client_sampling,
            forced={self.cfg.attack.round: set(victims)} if victims else {},
        )

    def make_augmenter(self, *, setup: bool = True):
        """The run's augmentation method, set up for this data and client count."""
        augmenter = self.regs["method"].build(self.cfg.method, self.cfg.method_params)
        augmenter.value_range = self.data.value_range
        if setup:
            augmenter.setup(
                num_classes=self.data.num_classes,
                input_shape=self.data.shape,
                num_clients=self.cfg.fed.clients,
                seed=self.cfg.seed,
            )
        return augmenter

    def evaluates_after(self, rounds_done: int) -> bool:
        """Whether utility is measured after ``rounds_done`` rounds (always after the last:
        it is the row's utility)."""
        fed = self.cfg.fed
        return rounds_done == fed.rounds or bool(
            fed.eval_every and rounds_done % fed.eval_every == 0
        )

    @staticmethod
    def history_entry(rounds_done: int, u, channel: Channel) -> dict[str, float]:
        return {
            "round": rounds_done,
            **u.__dict__,
            "bytes_up": channel.bytes_up,
            "bytes_down": channel.bytes_down,
        }

    def _check_sizes(self) -> None:
        smallest = min(len(c.train) for c in self.clients)
        victims = self.clients[: self.cfg.attack.victims]
        smallest_victim = min(len(c.train) for c in victims)
        if self.cfg.fed.batch_size > smallest:
            raise ParameterError(
                f"The 'batch_size' parameter must be <= {smallest} (the smallest client's "
                f"training set). Got {self.cfg.fed.batch_size} instead."
            )
        if self.cfg.attack.names and self.cfg.attack.batch > smallest_victim:
            raise ParameterError(
                f"The 'attack_batch' parameter must be <= {smallest_victim} (the smallest "
                f"victim's training set). Got {self.cfg.attack.batch} instead."
            )

    def _raw_model(self) -> torch.nn.Module:
        return self._factory(self.data.shape, self.data.num_classes, **self.cfg.model_params)

    @functools.cached_property
    def model_builder(self) -> ModelBuilder:
        """The model as every party builds it, as a standalone public recipe."""
        return ModelBuilder(
            self._factory,
            tuple(self.data.shape),
            self.data.num_classes,
            MappingProxyType(dict(self.cfg.model_params)),
            tuple(self._model_fixers),
        )

    def build_model(self) -> torch.nn.Module:
        """The model as every party builds it (after any defense's layer replacement)."""
        return self.model_builder()

    def _public_method(self):
        """The method as an outsider knows it: a fresh instance built from its public
        parameters and the data's public shape. It never plays a client or the server,
        so it holds no client's records, synthetic set or local policy; attacks get this
        object, never the run's live one. Its seed is the attacker's own stream: the
        run's seed (which derives every party's private randomness) is not public."""
        method = self.make_augmenter(setup=False)
        method.setup(
            num_classes=self.data.num_classes,
            input_shape=self.data.shape,
            num_clients=self.cfg.fed.clients,
            seed=derive_seed(self.cfg.seed, ATTACKER_STREAM) % 2**31,
        )
        return method

    # -- training -----------------------------------------------------------------------

    def public_context(
        self,
        global_state,
        *,
        steps,
        batch,
        num_images,
        algorithm,
        received,
        defenses,
        num_synthetic=0,
    ) -> PublicContext:
        """The public recipe behind a client's message: what an attacker knows."""
        return PublicContext(
            model_name=self.cfg.model,
            build_model=self.model_builder,
            weights_before=global_state,
            lr=self.cfg.fed.lr,
            local_steps=steps,
            batch_size=batch,
            num_images=num_images,
            num_synthetic=num_synthetic,
            num_classes=self.data.num_classes,
            input_shape=self.data.shape,
            value_range=self.data.value_range,
            method=self.public_method,
            augmenter_params=MappingProxyType(dict(self.cfg.method_params)),
            received=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in received.items()}),
            algorithm=algorithm,
            record_clip=min((d.record_clip for d in defenses if d.record_clip), default=None),
            update_clip=min((d.update_clip for d in defenses if d.update_clip), default=None),
            masked=any(d.masks_message for d in defenses),
            public_data=(self.data.x_test, self.data.y_test),
        )

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module):
        pred = predict(model, self.data.x_test).numpy()
        local_accs = []
        x, y = self.data.x_train, self.data.y_train
        for c in self.clients:
            if len(c.test):
                local_accs.append(float((predict(model, x[c.test]) == y[c.test]).float().mean()))
        return utility(self.data.y_test.numpy(), pred, self.data.num_classes, local_accs)

    def client_data(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.clients[cid].train
        return self.data.x_train[split], self.data.y_train[split]
