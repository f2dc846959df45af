"""A client's side of a round: its local computation (one by one, or many clients as one
vectorised computation), the defenses on its message, the upload through the channel."""

from __future__ import annotations

import functools

import torch

from privbench.engine.case import Case, RunParts
from privbench.engine.channel import SERVER
from privbench.engine.federated import (
    ClientResult,
    can_vectorise,
    clone_state,
    mean_loss,
    state_delta,
    vectorised_local_train,
)
from privbench.engine.method import ClientState
from privbench.engine.outcome import LocalUpdate, Victim
from privbench.engine.seeding import torch_generator
from privbench.engine.training import LocalTask
from privbench.nn.stacked import stacked_forward


class ClientWork(Case):
    """The clients' work on a case (the round loop calls it for every sampled client)."""

    def round_generator(self, rnd: int, cid: int) -> torch.Generator:
        """Client ``cid``'s generator for round ``rnd``: its attacked batch and its local
        SGD shuffles (one-by-one and vectorised training draw from it alike)."""
        return torch_generator(self.cfg.seed, 1, rnd, cid)

    def private_generator(self, rnd: int, cid: int) -> torch.Generator:
        """Client ``cid``'s private randomness for its method in round ``rnd`` (which
        X_g entry FedMix mixes with, FedAvP's op pairs, ...)."""
        return torch_generator(self.cfg.seed, 4, rnd, cid)

    @staticmethod
    def loss_at_global(model, state, loss_fn, algorithm) -> float:
        """F_k(w^t), the client's loss at the global weights: only q-FFL needs it."""
        if not algorithm.needs_loss:
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

    def local_update(self, rnd, state, global_state, parts: RunParts, *, is_victim) -> LocalUpdate:
        """One client's local computation from the global weights: what it would send
        (before any defense touches the message) and its public recipe."""
        fed, atk = self.cfg.fed, self.cfg.attack
        method, client, algorithm = parts.method, parts.client, parts.algorithm
        model = self.build_model()
        model.load_state_dict(global_state)
        gen = self.round_generator(rnd, state.client_id)
        private = self.private_generator(rnd, state.client_id)  # the method's randomness
        loss_fn = self._own_loss(method, state, private)
        loss_at_global = self.loss_at_global(model, state, loss_fn, algorithm)
        victim = None
        if is_victim:
            x, y = self.victim_batch(rnd, state, gen)
            victim = Victim(state.client_id, x.clone(), y.clone())
            real = len(y)
            x, y = client.training_data(rnd, state, x, y)
            steps, batch = atk.steps, len(y)
            kind = "gradient" if steps == 1 else "update"
        else:
            real = len(state.y)
            x, y = client.training_data(rnd, state, state.x, state.y)
            steps, batch = None, fed.batch_size
            kind = "update"
        training = parts.training  # plain SGD, or what replaces it
        task = LocalTask(
            round=rnd,
            client=state,
            x=x,
            y=y,
            loss_fn=loss_fn,
            epochs=steps if steps else fed.local_epochs,
            batch_size=batch,
            lr=fed.lr,
            generator=gen,
            private=private,
            algorithm=algorithm,
            num_records=len(state.y),
            per_sample=method.per_sample_grads,
            fixed_batch=is_victim,
            optimizer=fed.optimizer,
            weight_decay=fed.weight_decay,
        )
        if kind == "gradient":  # FedSGD: one gradient at the global weights
            payload = training.gradient(model, task)
        else:
            taken = training.train(model, task)
            steps = steps or taken
            payload = state_delta(clone_state(model), global_state)
        return LocalUpdate(kind, payload, steps, batch, real, victim, loss_at_global, len(y) - real)

    def vectorises(self, parts: RunParts) -> bool:
        """Whether this run's clients can train as one computation: plain local SGD on a
        loss that is the same function for every client (the method declares
        ``plain_loss``; its client role may change the data via ``training_data``), no
        defense replacing local training, no randomness inside the model."""
        method = parts.method
        return (
            self.cfg.fed.vectorise
            and self.cfg.fed.plain_sgd
            and (
                method.plain_loss
                or method.mixes_batches
                or (method.draws_per_step and self._model_stacks)
            )
            and parts.training.is_plain
            and self._model_vectorises
        )

    @functools.cached_property
    def _model_vectorises(self) -> bool:
        return can_vectorise(self.build_model())

    @functools.cached_property
    def _model_stacks(self) -> bool:
        """The model trains vectorised without ``vmap`` (:mod:`privbench.nn.stacked`). The
        probe's model is built on a forked RNG: asking must not move the run's draws."""
        with torch.random.fork_rng(devices=[]):
            model = self.build_model()
        return stacked_forward(model) is not None and not list(model.buffers())

    @staticmethod
    def _own_loss(method, state, private):
        """The client's local loss: its method's, with what it received and its private
        generator."""

        def loss(mdl, x, y):
            return method.local_loss(mdl, x, y, received=state.received, generator=private)

        return loss

    @staticmethod
    def _has_draw(method, state) -> bool:
        """Whether the client's loss draws this round (a probe on a throwaway generator)."""
        return method.step_draw(state.received, torch.Generator().manual_seed(0)) is not None

    @staticmethod
    def _mixer(method, state, private):
        def mix(x, y):
            return method.mixed_batch(x, y, received=state.received, generator=private)

        return mix

    def vectorised_updates(
        self, rnd, clients, global_state, parts: RunParts
    ) -> dict[int, LocalUpdate]:
        """:meth:`local_update` for ``clients`` (none of them attacked) as one vectorised
        computation, when :meth:`vectorises`; {} otherwise (they train one by one)."""
        if len(clients) < 2 or not self.vectorises(parts):
            return {}
        method, client, algorithm = parts.method, parts.client, parts.algorithm
        draws = method.draws_per_step
        if draws and not all(self._has_draw(method, s) for s in clients):
            return {}  # a client with nothing to draw from trains on another loss
        fed = self.cfg.fed
        model = self.build_model()
        model.load_state_dict(global_state)

        # The base loss reads neither the client's received messages nor its private
        # generator: one function serves every client. A method that mixes batches
        # trains on that loss too, after each client mixes its own batch.
        def loss_fn(mdl, x, y):
            return method.local_loss(mdl, x, y, received={})

        datasets, generators, losses, mixers, drawers = [], [], [], [], []
        for state in clients:
            private = self.private_generator(rnd, state.client_id)
            own = method.mixes_batches or draws
            own_loss = self._own_loss(method, state, private) if own else loss_fn
            losses.append(self.loss_at_global(model, state, own_loss, algorithm))
            generators.append(self.round_generator(rnd, state.client_id))
            datasets.append(client.training_data(rnd, state, state.x, state.y))
            if method.mixes_batches:
                mixers.append(self._mixer(method, state, private))
            if draws:
                drawers.append(functools.partial(method.step_draw, state.received, private))
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
            batch_mean_loss=True,  # the base cross-entropy
            mixers=mixers or None,
            drawers=drawers or None,
            drawn_loss=method.drawn_loss if draws else None,
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

    @staticmethod
    def send_artifacts(rnd, cid, messages, parts: RunParts, *, context=None):
        """Client ``cid``'s artifacts to the server: each defense privatises them, the
        channel counts and records them, the method's server role receives them."""
        for kind, payload in messages.items():
            for d in parts.defenses:
                payload = d.privatize_artifact(rnd, cid, kind, payload)
            got = parts.channel.send(rnd, cid, SERVER, kind, payload, context=context)
            parts.server.receive(rnd, cid, kind, got)

    def _client_round(
        self,
        rnd,
        state,
        global_state,
        parts: RunParts,
        victims,
        *,
        is_victim,
        local: LocalUpdate | None = None,
    ) -> ClientResult:
        """One client's round: local computation (unless ``local`` was computed already,
        vectorised with others), defenses, the upload through the channel."""
        fed, defenses = self.cfg.fed, parts.defenses
        if local is None:
            local = self.local_update(rnd, state, global_state, parts, is_victim=is_victim)
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
            algorithm=parts.algorithm,
            received=state.received,
            defenses=defenses,
        )
        encoding, nbytes = "dense", None
        for d in defenses:  # the last defense that re-encodes the payload decides
            encoded = d.encoding(kind, payload)
            if encoded is not None:
                encoding, nbytes = encoded
        got = parts.channel.send(
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
            rnd, state.client_id, parts.client.upload(rnd, state), parts, context=context
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
