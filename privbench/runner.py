"""The experiment loop: data -> federated run through the channel -> attacks -> rows.

Plugins only supply hooks; this module owns the loop. The victims' private batches
are kept here (``ground_truth``) and handed only to the metrics.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch

from privbench import registries
from privbench.augmenters import ClientState
from privbench.augmenters.base import PREPARE_ROUND, Augmenter, Preparation
from privbench.channel import SERVER, Channel, PublicContext
from privbench.config import RunConfig
from privbench.data import DataBundle, as_bundle, load_dataset
from privbench.errors import IncompatibleError, ParameterError, PrivbenchError
from privbench.federated import (
    ClientResult,
    can_vectorise,
    clone_state,
    local_train,
    mean_loss,
    predict,
    state_delta,
    vectorised_local_train,
)
from privbench.metrics import (
    combine_scores,
    label_distribution_error,
    score_nearest,
    score_pairs,
    score_reconstruction,
    utility,
)
from privbench.models import check_model_output, model_factory
from privbench.partition import ClientSplit, partition, split_clients
from privbench.progress import bar
from privbench.results import Result, Results, ResultStore, versions

log = logging.getLogger("privbench")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SeedSequence: no collisions from simple sums).
    Negative parts (the preparation round, -1) enter as their 64-bit two's complement."""
    return int(
        np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(2, np.uint64)[0]
        >> np.uint64(1)
    )


def torch_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass
class Victim:
    """Ground truth of one attacked client. Never given to an attack."""

    client_id: int
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class LocalUpdate:
    """A client's message before defenses, with the public recipe that produced it."""

    kind: str  # "gradient" (one FedSGD step) or "update" (new weights - global weights)
    payload: dict[str, torch.Tensor]
    steps: int
    batch: int
    num_images: int  # the client's real records behind the message (its FedAvg weight)
    victim: Victim | None
    loss_at_global: float
    num_synthetic: int = 0  # synthetic samples the method mixed into that training set


@dataclass
class TrainingOutcome:
    channel: Channel
    victims: dict[int, Victim]
    utility: object
    history: list[dict[str, float]] = field(default_factory=list)
    spend: tuple[float | None, float | None, str | None] = (None, None, None)
    seconds: float = 0.0
    synthetic_share: float | None = None  # mean over clients of synthetic / training set


class Experiment:
    """One resolved configuration, ready to train and attack."""

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
        parts = partition(
            cfg.partition,
            self.data.y_train.numpy(),
            cfg.fed.clients,
            seed=cfg.seed,
            params=cfg.partition_params,
        )
        self.clients: list[ClientSplit] = split_clients(
            parts, test_fraction=cfg.fed.local_test_fraction, seed=cfg.seed
        )
        self._check_sizes()
        # Threat models are validated against the run (a curious client must exist).
        self.threat = self.regs["threat"].create(cfg.attack.threat, **cfg.attack.threat_params)
        if hasattr(self.threat, "bind"):
            self.threat.bind(cfg.fed.clients)
        self._check_defenses()
        self._check_batchnorm()

    def _check_batchnorm(self) -> None:
        """Methods and attacks that invert BatchNorm statistics (ZSDG) need a model that
        keeps them; say so before anything trains."""
        from privbench.augmenters.zsdg import batchnorm_layers

        needs = []
        if getattr(self.regs["method"].entry(self.cfg.method).factory, "needs_batchnorm", False):
            needs.append(f"method '{self.cfg.method}'")
        for name in self.cfg.attack.names:
            if getattr(self.regs["attack"].entry(name).factory, "needs_batchnorm", False):
                needs.append(f"attack '{name}'")
        if needs and not batchnorm_layers(self.build_model()):
            raise IncompatibleError(
                f"{' and '.join(needs)} {'need' if len(needs) > 1 else 'needs'} BatchNorm "
                f"running statistics (ZSDG inverts them), and model "
                f"'{self.cfg.model}' has no BatchNorm layers that keep them; use a model "
                "with BatchNorm (e.g. --model cnn-bn)."
            )

    def _check_defenses(self) -> None:
        """At most one defense may take over local training, and it must accept the run's
        trainer and method; model-changing defenses announce the change once."""
        classes = [self.regs["defense"].entry(n).factory for n in self.cfg.defenses]
        trainers = [n for n, c in zip(self.cfg.defenses, classes, strict=True) if c.trains_locally]
        if len(trainers) > 1:
            raise IncompatibleError(
                f"defenses {', '.join(repr(n) for n in trainers)} each replace local "
                "training; choose one."
            )
        self._model_fixers = [c.prepare_model for c in classes]
        augmenter = self.make_augmenter(setup=False)
        if trainers and augmenter.trains_locally:
            raise IncompatibleError(
                f"defense '{trainers[0]}' replaces local training, and method "
                f"'{self.cfg.method}' runs its own local training loop (it learns more "
                "than the model); choose one."
            )
        for name, fix in zip(self.cfg.defenses, self._model_fixers, strict=True):
            if fix(self._raw_model())[1]:
                log.warning(
                    "%s: model '%s' has layers that mix records (BatchNorm); every party, "
                    "the attacker included, uses Opacus' ModuleValidator.fix of it "
                    "(GroupNorm) instead.",
                    name,
                    self.cfg.model,
                )
        for n in self.cfg.defenses:
            self.regs["defense"].create(n, **self.cfg.defense_params.get(n, {})).check(
                algorithm=self.make_algorithm(), augmenter=augmenter
            )

    def make_algorithm(self):
        """The run's federated trainer (FedAvg, FedProx, q-FFL) with its parameters."""
        return self.regs["algorithm"].create(
            self.cfg.fed.algorithm, **self.cfg.fed.algorithm_params
        )

    def make_augmenter(self, *, setup: bool = True):
        """The run's augmentation method, set up for this data and client count."""
        augmenter = self.regs["method"].create(self.cfg.method, **self.cfg.method_params)
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

    def build_model(self) -> torch.nn.Module:
        """The model as every party builds it (after any defense's layer replacement)."""
        model = self._raw_model()
        for fix in self._model_fixers:
            model = fix(model)[0]
        return model

    # -- training -----------------------------------------------------------------------

    def train(self) -> TrainingOutcome:
        cfg, fed, atk = self.cfg, self.cfg.fed, self.cfg.attack
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, 0))
        global_model = self.build_model()
        algorithm = self.make_algorithm()
        augmenter = self.make_augmenter()
        self.augmenter = augmenter  # the run's method object (its server-side state)
        defenses = [
            self.regs["defense"].create(n, **cfg.defense_params.get(n, {})) for n in cfg.defenses
        ]
        for d in defenses:
            d.setup(
                num_clients=fed.clients,
                clients_per_round=fed.clients_per_round,
                rounds=fed.rounds,
                seed=cfg.seed,
                lr=fed.lr,
                batch_size=fed.batch_size,
                local_epochs=fed.local_epochs,
            )
        channel = Channel(self.threat)
        states = {
            c.client_id: ClientState(c.client_id, *self.client_data(c.client_id))
            for c in self.clients
        }
        victim_ids = list(range(atk.victims)) if atk.names else []
        victims: dict[int, Victim] = {}
        self._prepare(global_model, states, augmenter, algorithm, defenses, channel)
        self._training_sets: dict[int, tuple[int, int]] = {}  # cid -> (real, synthetic)
        client_side = type(augmenter).begin_round is not Augmenter.begin_round
        rng = np.random.default_rng([cfg.seed, 3])
        history: list[dict[str, float]] = []
        m = fed.clients_per_round
        with bar(fed.rounds, "rounds") as pbar:
            for rnd in range(fed.rounds):
                sampled = sorted(int(c) for c in rng.choice(fed.clients, m, replace=False))
                if rnd == atk.round and victim_ids:
                    others = [c for c in sampled if c not in victim_ids]
                    sampled = sorted(victim_ids + others[: m - len(victim_ids)])
                global_state = clone_state(global_model)
                # 1. Shared artifacts (client -> server), before local training.
                for cid in augmenter.share_clients(rnd, sampled, list(range(fed.clients))):
                    self.send_artifacts(
                        rnd, cid, augmenter.share(rnd, states[cid]), augmenter, defenses, channel
                    )
                # 2. Broadcasts (server -> client): the model, then the method's extras.
                for cid in sampled:
                    channel.send(rnd, SERVER, cid, "model", global_state)
                    for kind, payload in augmenter.broadcast(rnd, cid).items():
                        states[cid].received[kind] = channel.send(rnd, SERVER, cid, kind, payload)
                if client_side:  # e.g. Fed-ZDAC's clients generate data from the model
                    received = self.build_model()
                    received.load_state_dict(global_state)
                    augmenter.begin_round(rnd, [states[c] for c in sampled], received)
                # 3. Local training and uploads.
                attacked = {c for c in sampled if rnd == atk.round and c in victim_ids}
                done = self.vectorised_updates(
                    rnd,
                    [states[c] for c in sampled if c not in attacked],
                    global_state,
                    algorithm,
                    augmenter,
                    defenses,
                )
                results = []
                for cid in sampled:
                    results.append(
                        self._client_round(
                            rnd,
                            states[cid],
                            global_state,
                            algorithm,
                            augmenter,
                            defenses,
                            channel,
                            victims,
                            is_victim=cid in attacked,
                            local=done.get(cid),
                        )
                    )
                new_state = algorithm.aggregate(global_state, results, fed.lr)
                for d in defenses:
                    new_state = d.privatize_aggregate(rnd, global_state, new_state, len(results))
                global_model.load_state_dict(new_state)
                extra = {}
                if augmenter.needs_client_models:
                    extra["client_models"] = self.client_models(global_state, results)
                augmenter.after_aggregate(rnd, global_model, **extra)
                if self.evaluates_after(rnd + 1):
                    u = self.evaluate(global_model)
                    history.append(self.history_entry(rnd + 1, u, channel))
                pbar.update(1)
        spends = [s for s in (d.privacy_spent() for d in defenses) if s is not None]
        spend = (None, None, None)
        if spends:
            eps = [s.epsilon for s in spends]
            dlt = [s.delta for s in spends]
            spend = (
                None if None in eps else float(sum(eps)),
                None if None in dlt else float(sum(dlt)),
                "+".join(s.accountant for s in spends),
            )
        self.global_model = global_model
        shares = [s / (n + s) for n, s in self._training_sets.values() if n + s]
        return TrainingOutcome(
            channel,
            victims,
            u,
            history,
            spend,
            time.perf_counter() - t0,
            float(np.mean(shares)) if shares else None,
        )

    def _prepare(self, global_model, states, augmenter, algorithm, defenses, channel) -> None:
        """The method's phase before round 0 (a federated generator, a pre-trained
        classifier); its messages are counted in round ``PREPARE_ROUND``."""
        if type(augmenter).prepare is Augmenter.prepare:
            return

        def send(sender, receiver, kind, payload, context=None):
            if receiver == SERVER:  # a client's artifact: the defenses see it first
                for d in defenses:
                    payload = d.privatize_artifact(PREPARE_ROUND, sender, kind, payload)
            context = context if context is not None else recipe
            return channel.send(PREPARE_ROUND, sender, receiver, kind, payload, context=context)

        def context(num_images: int) -> PublicContext:
            return self.public_context(
                clone_state(global_model),
                steps=0,
                batch=num_images,
                num_images=num_images,
                augmenter=augmenter,
                algorithm=algorithm,
                received={},
                defenses=defenses,
            )

        recipe = context(0)  # the public recipe attached to the phase's other messages
        augmenter.prepare(
            Preparation(
                clients=states,
                model=global_model,
                send=send,
                generator=lambda party: (
                    torch_generator(self.cfg.seed, 6)
                    if party == SERVER
                    else torch_generator(self.cfg.seed, 5, int(party))
                ),
                context=context,
            )
        )

    def client_models(self, global_state, results) -> dict[int, torch.nn.Module]:
        """Each client's model as the server received it: broadcast weights + update."""
        models = {}
        for r in results:
            model = self.build_model()
            model.load_state_dict({k: v + r.delta[k].to(v.dtype) for k, v in global_state.items()})
            models[r.client_id] = model
        return models

    def round_generator(self, rnd: int, cid: int) -> torch.Generator:
        """Client ``cid``'s generator for round ``rnd``: its attacked batch and its local
        SGD shuffles (one-by-one and vectorised training draw from it alike)."""
        return torch_generator(self.cfg.seed, 1, rnd, cid)

    @staticmethod
    def loss_at_global(model, state, loss_fn, algorithm) -> float:
        """F_k(w^t), the client's loss at the global weights: only q-FFL needs it."""
        if not getattr(algorithm, "needs_loss", False):
            return 0.0
        return mean_loss(model, state.x, state.y, loss_fn)

    def victim_batch(
        self, rnd: int, state: ClientState, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch a victim trains on in the attacked round: the first draw of the
        client's round generator, so the metrics and an outside runtime (Flower's)
        agree on it. Pass the client's generator to advance it."""
        gen = generator or self.round_generator(rnd, state.client_id)
        pick = torch.randperm(len(state.y), generator=gen)[: self.cfg.attack.batch]
        return state.x[pick], state.y[pick]

    def local_update(
        self, rnd, state, global_state, algorithm, augmenter, defenses, *, is_victim
    ) -> LocalUpdate:
        """One client's local computation from the global weights: what it would send
        (before any defense touches the message) and its public recipe."""
        cfg, fed, atk = self.cfg, self.cfg.fed, self.cfg.attack
        model = self.build_model()
        model.load_state_dict(global_state)
        gen = self.round_generator(rnd, state.client_id)
        private = torch_generator(cfg.seed, 4, rnd, state.client_id)  # the method's randomness

        def loss_fn(mdl, x, y):
            return augmenter.local_loss(mdl, x, y, received=state.received, generator=private)

        loss_at_global = self.loss_at_global(model, state, loss_fn, algorithm)
        victim = None
        if is_victim:
            x, y = self.victim_batch(rnd, state, gen)
            victim = Victim(state.client_id, x.clone(), y.clone())
            real = len(y)
            x, y = augmenter.training_data(rnd, state, x, y)
            steps, batch = atk.steps, len(y)
            kind = "gradient" if steps == 1 else "update"
        else:
            real = len(state.y)
            x, y = augmenter.training_data(rnd, state, state.x, state.y)
            steps, batch = None, fed.batch_size
            kind = "update"
        trainer = next((d for d in defenses if d.trains_locally), None)
        if kind == "gradient" and trainer is not None:
            payload = trainer.local_gradient(
                rnd,
                state.client_id,
                model,
                x,
                y,
                loss_fn=loss_fn,
                num_records=len(state.y),
                per_sample=augmenter.per_sample_grads,
            )
        elif kind == "gradient":
            # FedSGD: one full-batch gradient at the global weights; the server applies it.
            model.train()
            params = dict(model.named_parameters())
            loss = loss_fn(model, x, y)
            grads = torch.autograd.grad(loss, list(params.values()))
            payload = {n: g.detach() for n, g in zip(params, grads, strict=True)}
        else:
            common = dict(
                loss_fn=loss_fn,
                epochs=steps if steps else fed.local_epochs,
                batch_size=batch,
                lr=fed.lr,
                generator=gen,
                algorithm=algorithm,
            )
            if trainer is not None:  # e.g. DP-SGD replaces plain local SGD
                taken = trainer.local_train(
                    rnd,
                    state.client_id,
                    model,
                    x,
                    y,
                    **common,
                    per_sample=augmenter.per_sample_grads,
                    num_records=len(state.y),
                    fixed_batch=is_victim,
                )
            elif augmenter.trains_locally:  # e.g. FedAvP learns its policy alongside
                del common["loss_fn"]
                taken = augmenter.local_train(
                    model, x, y, client=state, round=rnd, private=private, **common
                )
            else:
                taken = local_train(model, x, y, **common)
            steps = steps or taken
            payload = state_delta(clone_state(model), global_state)
        return LocalUpdate(kind, payload, steps, batch, real, victim, loss_at_global, len(y) - real)

    def vectorises(self, augmenter, defenses) -> bool:
        """Whether this run's clients can train as one computation: plain local SGD on a
        loss that is the same function for every client (the base cross-entropy; a
        method may change the data via ``training_data``), no defense replacing local
        training, no randomness inside the model."""
        return (
            self.cfg.fed.vectorise
            and type(augmenter).local_loss is Augmenter.local_loss
            and not augmenter.trains_locally
            and not any(d.trains_locally for d in defenses)
            and self._model_vectorises
        )

    @functools.cached_property
    def _model_vectorises(self) -> bool:
        return can_vectorise(self.build_model())

    def vectorised_updates(
        self, rnd, clients, global_state, algorithm, augmenter, defenses
    ) -> dict[int, LocalUpdate]:
        """:meth:`local_update` for ``clients`` (none of them attacked) as one vectorised
        computation, when :meth:`vectorises`; {} otherwise (they train one by one)."""
        if len(clients) < 2 or not self.vectorises(augmenter, defenses):
            return {}
        fed = self.cfg.fed
        model = self.build_model()
        model.load_state_dict(global_state)

        # The base loss reads neither the client's received messages nor its private
        # generator: one function serves every client.
        def loss_fn(mdl, x, y):
            return augmenter.local_loss(mdl, x, y, received={})

        datasets, generators, losses = [], [], []
        for state in clients:
            losses.append(self.loss_at_global(model, state, loss_fn, algorithm))
            generators.append(self.round_generator(rnd, state.client_id))
            datasets.append(augmenter.training_data(rnd, state, state.x, state.y))
        new_states, steps = vectorised_local_train(
            model,
            global_state,
            datasets,
            loss_fn=loss_fn,
            epochs=fed.local_epochs,
            batch_size=fed.batch_size,
            lr=fed.lr,
            generators=generators,
            algorithm=algorithm,
        )
        return {
            state.client_id: LocalUpdate(
                "update",
                state_delta(new, global_state),
                taken,
                fed.batch_size,
                len(state.y),
                None,
                loss,
                len(data[1]) - len(state.y),
            )
            for state, new, taken, data, loss in zip(
                clients, new_states, steps, datasets, losses, strict=True
            )
        }

    def public_context(
        self,
        global_state,
        *,
        steps,
        batch,
        num_images,
        augmenter,
        algorithm,
        received,
        defenses,
        num_synthetic=0,
    ) -> PublicContext:
        """The public recipe behind a client's message: what an attacker knows."""
        trainer = next((d for d in defenses if d.trains_locally), None)
        return PublicContext(
            model_name=self.cfg.model,
            build_model=self.build_model,
            weights_before=global_state,
            lr=self.cfg.fed.lr,
            local_steps=steps,
            batch_size=batch,
            num_images=num_images,
            num_synthetic=num_synthetic,
            num_classes=self.data.num_classes,
            input_shape=self.data.shape,
            value_range=self.data.value_range,
            augmenter=augmenter,
            augmenter_params=dict(self.cfg.method_params),
            received=dict(received),
            algorithm=algorithm,
            record_clip=trainer.record_clip if trainer is not None else None,
            update_clip=min((d.update_clip for d in defenses if d.update_clip), default=None),
            public_data=(self.data.x_test, self.data.y_test),
        )

    @staticmethod
    def send_artifacts(rnd, cid, messages, augmenter, defenses, channel, *, context=None):
        """Client ``cid``'s artifacts to the server: each defense privatises them, the
        channel counts and records them, the server side of the method receives them."""
        for kind, payload in messages.items():
            for d in defenses:
                payload = d.privatize_artifact(rnd, cid, kind, payload)
            got = channel.send(rnd, cid, SERVER, kind, payload, context=context)
            augmenter.server_receive(rnd, cid, kind, got)

    def _client_round(
        self,
        rnd,
        state,
        global_state,
        algorithm,
        augmenter,
        defenses,
        channel,
        victims,
        *,
        is_victim,
        local: LocalUpdate | None = None,
    ) -> ClientResult:
        """One client's round: local computation (unless ``local`` was computed already,
        vectorised with others), defenses, the upload through the channel."""
        fed = self.cfg.fed
        if local is None:
            local = self.local_update(
                rnd, state, global_state, algorithm, augmenter, defenses, is_victim=is_victim
            )
        if local.victim is not None:
            victims[state.client_id] = local.victim
        else:
            self._training_sets[state.client_id] = (local.num_images, local.num_synthetic)
        kind, payload = local.kind, local.payload
        for d in defenses:
            payload = d.privatize_update(rnd, state.client_id, kind, payload)
        context = self.public_context(
            global_state,
            steps=local.steps,
            batch=local.batch,
            num_images=local.num_images,
            num_synthetic=local.num_synthetic,
            augmenter=augmenter,
            algorithm=algorithm,
            received=state.received,
            defenses=defenses,
        )
        encoding, nbytes = "dense", None
        for d in defenses:  # the last defense that re-encodes the payload decides
            encoded = d.encoding(kind, payload)
            if encoded is not None:
                encoding, nbytes = encoded
        got = channel.send(
            rnd,
            state.client_id,
            SERVER,
            kind,
            payload,
            context=context,
            encoding=encoding,
            nbytes=nbytes,
        )
        # Uploads after local training besides the update (FedAvP's policy update).
        self.send_artifacts(
            rnd,
            state.client_id,
            augmenter.upload(rnd, state),
            augmenter,
            defenses,
            channel,
            context=context,
        )
        if kind == "gradient":
            delta = {k: torch.zeros_like(v) for k, v in global_state.items()}
            for n, g in got.items():
                delta[n] = -fed.lr * g
        else:
            delta = dict(got)
        weight = float(local.num_images)
        for d in defenses:
            weight = d.aggregation_weight(state.client_id, weight)
        return ClientResult(state.client_id, delta, weight, local.loss_at_global)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module):
        pred = predict(model, self.data.x_test).numpy()
        local_accs = []
        x, y = self.data.x_train, self.data.y_train
        for c in self.clients:
            if len(c.test):
                local_accs.append(float((predict(model, x[c.test]) == y[c.test]).float().mean()))
        return utility(self.data.y_test.numpy(), pred, self.data.num_classes, local_accs)

    # -- attacks ------------------------------------------------------------------------

    def client_data(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.clients[cid].train
        return self.data.x_train[split], self.data.y_train[split]

    def attack(self, name: str, outcome: TrainingOutcome, store: ResultStore | None):
        """Run attack ``name`` on every victim; return (score, label-distribution error,
        reconstruction file)."""
        cfg = self.cfg
        attack = self.regs["attack"].create(name, **cfg.attack.params.get(name, {}))
        seen = outcome.channel.observations
        scores, label_errors, arrays = [], [], {}
        observed = [self._observed(attack, name, vid, seen) for vid in range(cfg.attack.victims)]
        generators = [torch_generator(cfg.seed, 2, vid) for vid in range(cfg.attack.victims)]
        if attack.target == "audit":  # handed each victim's records; scored pairwise
            recs = []
            for vid, (obs, gen) in enumerate(zip(observed, generators, strict=True)):
                gt, gt_labels = self.client_data(vid)
                rec = attack.audit(obs[0], images=gt, labels=gt_labels, generator=gen, seen=seen)
                scores.append(
                    score_pairs(gt, rec.images, gt_labels, rec.labels, self.data.value_range)
                )
                recs.append(rec)
        else:  # every victim in one call: batched attacks run their trials as one computation
            recs = attack.reconstruct_batch(
                [obs[0] for obs in observed], generators=generators, seen=seen
            )
        for vid, (obs, rec) in enumerate(zip(observed, recs, strict=True)):
            if attack.target == "labels":  # scored by label-distribution error only
                truth = self._label_hist(vid)
                label_errors.append(label_distribution_error(rec.meta["label_hist"], truth))
                arrays[f"label_hist_{vid}"] = np.asarray(rec.meta["label_hist"], dtype=float)
                arrays[f"true_hist_{vid}"] = truth.numpy()
                continue
            images = rec.images.detach().clamp(*self.data.value_range)
            if attack.target == "audit":
                gt, _ = self.client_data(vid)
            elif attack.target == "batch":
                victim = outcome.victims[vid]
                gt = victim.images
                scores.append(
                    score_reconstruction(
                        victim.images, images, victim.labels, rec.labels, self.data.value_range
                    )
                )
            else:
                gt, _ = self.client_data(vid)
                population = None
                if obs[0].sender != vid:  # unattributed entries: score those nearest to vid
                    population = (self.data.x_train, self._owners())
                scores.append(
                    score_nearest(
                        gt, images, self.data.value_range, owner=vid, population=population
                    )
                )
                if "label_hist" in rec.meta and obs[0].sender == vid:
                    label_errors.append(
                        label_distribution_error(rec.meta["label_hist"], self._label_hist(vid))
                    )
            arrays[f"ground_truth_{vid}"] = gt.numpy()
            arrays[f"reconstruction_{vid}"] = images.numpy()
        path = None
        if store is not None:
            if attack.target == "batch":  # equal shapes: one (victims, B, C, H, W) array each
                arrays = {
                    "ground_truth": np.stack(
                        [v for k, v in arrays.items() if k.startswith("ground")]
                    ),
                    "reconstruction": np.stack(
                        [v for k, v in arrays.items() if k.startswith("recon")]
                    ),
                }
            path = store.save_arrays(f"{cfg.hash()}-{name}", **arrays)
        label_error = float(np.mean(label_errors)) if label_errors else None
        return (combine_scores(scores) if scores else None), label_error, path

    def _observed(self, attack, name: str, vid: int, seen) -> list:
        """The messages attack ``name`` may use against victim ``vid`` (it attacks the
        first)."""
        cfg = self.cfg
        if attack.target == "batch":
            # The victim's message of the attacked round.
            obs = [
                o
                for o in seen
                if o.sender == vid and o.round == cfg.attack.round and o.kind in attack.consumes
            ]
        elif attack.target == "labels":  # the victim's own upload, nothing else
            obs = [o for o in seen if o.sender == vid and o.kind in attack.consumes]
        else:
            # Any artifact of the victim; a curious client gets only the server's
            # broadcasts (which mix everyone's entries, with no owner attached).
            obs = [o for o in seen if o.sender == vid and o.kind in attack.consumes] or [
                o for o in seen if o.sender == SERVER and o.kind in attack.consumes
            ]
        if not obs:
            raise IncompatibleError(
                f"attack '{name}' needs a {'/'.join(attack.consumes)} message from client "
                f"{vid}, which threat model '{cfg.attack.threat}' never sees in this run "
                f"(method '{cfg.method}'); see `privbench list` for what each attack needs."
            )
        return obs

    def _label_hist(self, cid: int) -> torch.Tensor:
        """Client ``cid``'s true label counts over its training data."""
        return torch.bincount(self.client_data(cid)[1], minlength=self.data.num_classes).double()

    def _owners(self) -> torch.Tensor:
        owners = torch.full((len(self.data.y_train),), -1, dtype=torch.long)
        for c in self.clients:
            owners[torch.as_tensor(c.train)] = c.client_id
        return owners


def _base_row(cfg: RunConfig, attack: str) -> Result:
    return Result(
        method=cfg.method,
        attack=attack,
        defense="+".join(cfg.defenses) or "none",
        threat=cfg.attack.threat,
        dataset=cfg.dataset,
        partition=cfg.partition,
        model=cfg.model,
        algorithm=cfg.fed.algorithm,
        seed=cfg.seed,
        rounds=cfg.fed.rounds,
        clients=cfg.fed.clients,
        clients_per_round=cfg.fed.clients_per_round,
        attack_round=cfg.attack.round,
        victims=cfg.attack.victims,
        attack_batch=cfg.attack.batch,
        victim_steps=cfg.attack.steps,
        config_hash=cfg.hash(),
        versions=versions(),
        config=cfg.to_dict(),
    )


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def run(config: RunConfig, *, store: ResultStore | None = None, model=None, data=None) -> Results:
    """Train once, run every configured attack, return (and store) one row per attack.

    Configuration errors raise before anything runs. A failure during training or an
    attack becomes a row with ``status="error"`` and the message, never silence.
    """
    t0 = time.perf_counter()
    exp = Experiment(config, model=model, data=data)  # raises PrivbenchError on bad input
    cfg = exp.cfg
    names = cfg.attack.names or ("none",)
    rows = Results(_base_row(cfg, n) for n in names)
    try:
        outcome = exp.train()
    except Exception as err:  # a failed trial is a row, not silence
        return fail_rows(rows, err, store, t0)
    return finish_rows(exp, outcome, rows, store, t0)


def fail_rows(rows: Results, err: Exception, store: ResultStore | None, t0: float) -> Results:
    """Training failed: every row becomes an error row with the message (and is stored)."""
    for row in rows:
        row.status, row.error = "error", _error_text(err)
        row.wall_s = time.perf_counter() - t0
    _log_traceback(err)
    if store is not None:
        store.append(rows)
    return rows


def finish_rows(
    exp: Experiment,
    outcome: TrainingOutcome,
    rows: Results,
    store: ResultStore | None,
    t0: float,
) -> Results:
    """Fill the rows from a finished training run, run each attack, store the rows."""
    u = outcome.utility
    for row in rows:
        row.accuracy, row.client_acc_mean, row.client_acc_var = (
            u.accuracy,
            u.client_acc_mean,
            u.client_acc_var,
        )
        row.class_acc_var, row.macro_f1 = u.class_acc_var, u.macro_f1
        row.bytes_up, row.bytes_down = outcome.channel.bytes_up, outcome.channel.bytes_down
        row.bytes_by_kind = outcome.channel.bytes_by_kind()
        row.epsilon, row.delta, row.accountant = outcome.spend
        row.history = outcome.history
        row.synthetic_share = outcome.synthetic_share
        row.train_s = outcome.seconds
        if row.attack == "none":
            continue
        ta = time.perf_counter()
        try:
            score, row.label_dist_error, path = exp.attack(row.attack, outcome, store)
            if score is not None:  # None: a label-distribution attack, no images
                row.psnr, row.ssim, row.mse = score.psnr, score.ssim, score.mse
                row.label_acc, row.n_images = score.label_acc, score.num_images
            row.reconstruction_file = path
        except Exception as err:  # record the failed attack as an error row
            row.status, row.error = "error", _error_text(err)
            _log_traceback(err)
        row.attack_s = time.perf_counter() - ta
    wall = time.perf_counter() - t0
    for row in rows:
        row.wall_s = wall
    if store is not None:
        store.append(rows)
    return rows


def _log_traceback(err: BaseException) -> None:
    if isinstance(err, PrivbenchError):
        return  # a known, explained failure: the row's message says it all

    # The row carries the message; the traceback goes to stderr for whoever debugs it.
    log.warning("trial failed:\n%s", traceback.format_exc())
