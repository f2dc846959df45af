"""The round loop: sampling, the method's messages, local training, aggregation and
evaluation, every message through the channel. The engine owns this loop (a template, in
the spirit of Flower's strategies); it calls the method's client and server roles
(:mod:`privbench.engine.method`) and the defenses at fixed points.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from privbench.engine.channel import SERVER, Channel, PublicContext
from privbench.engine.checkpoint import RoundCheckpoint
from privbench.engine.client import ClientWork
from privbench.engine.federated import check_finite_state, clone_state
from privbench.engine.method import PREPARE_ROUND, ClientState, Reply, run_prepare_phase
from privbench.engine.outcome import TrainingOutcome, Victim
from privbench.engine.seeding import derive_seed, torch_generator
from privbench.errors import DivergedError
from privbench.progress import bar


class Experiment(ClientWork):
    """One resolved configuration, ready to train (:meth:`train`); the evaluation attacks
    and scores the outcome (:func:`privbench.evaluation.attacking.attack_victims`).

    ``checkpoint``: where the round loop saves its state between rounds and resumes
    from (:mod:`privbench.engine.checkpoint`); None, the default, saves nothing."""

    checkpoint: RoundCheckpoint | None = None
    # False: the channel counts bytes but keeps no observation (the pipeline's runs that
    # attack nothing); True, the default, for whoever attacks the outcome afterwards.
    records_observations: bool = True

    def train(self) -> TrainingOutcome:
        cfg, fed, atk = self.cfg, self.cfg.fed, self.cfg.attack
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, 0))
        global_model = self.build_model()
        parts = self.make_parts(channel=Channel(self.threat, record=self.records_observations))
        self.parts = parts  # the run's live roles (the engine's side; never an attack's)
        client, server, channel = parts.client, parts.server, parts.channel
        algorithm, defenses = parts.algorithm, parts.defenses
        states = {
            c.client_id: ClientState(c.client_id, *self.client_data(c.client_id))
            for c in self.clients
        }
        victim_ids = self.victim_ids()
        victims: dict[int, Victim] = {}
        self._training_sets: dict[int, tuple[int, int]] = {}  # cid -> (real, synthetic)
        rng = np.random.default_rng([cfg.seed, 3])
        history: list[dict[str, float]] = []
        start, u = 0, None
        saved = self.checkpoint.load(self) if self.checkpoint is not None else None
        if saved is None:
            self._prepare(global_model, states, parts)
        else:  # the prepare phase and rounds < start happened before the checkpoint
            global_model.load_state_dict(saved["model"])
            parts, states, victims = saved["parts"], saved["states"], saved["victims"]
            self.parts = parts
            client, server, channel = parts.client, parts.server, parts.channel
            algorithm, defenses = parts.algorithm, parts.defenses
            self._training_sets, rng, history = (
                saved["training_sets"],
                saved["rng"],
                saved["history"],
            )
            start, u, t0 = saved["next_round"], saved["utility"], t0 - saved["seconds"]

        def outcome(utility) -> TrainingOutcome:  # what the run has produced so far
            return TrainingOutcome.finish(
                channel,
                victims,
                utility,
                history,
                defenses,
                time.perf_counter() - t0,
                self._training_sets,
            )

        with bar(fed.rounds, "rounds", initial=start) as pbar:
            for rnd in range(start, fed.rounds):
                sampled = self.sample_clients(rng, rnd)
                global_state = clone_state(global_model)
                # 1. Shared artifacts (client -> server), before local training.
                for cid in server.share_clients(rnd, sampled, list(range(fed.clients))):
                    self.send_artifacts(rnd, cid, client.share(rnd, states[cid]), parts)
                # 2. Broadcasts (server -> client): the model, then the method's extras.
                for cid in sampled:
                    channel.send(rnd, SERVER, cid, "model", global_state)
                    for kind, payload in server.broadcast(rnd, cid).items():
                        states[cid].received[kind] = channel.send(rnd, SERVER, cid, kind, payload)
                # Client-side work on the received model (Fed-ZDAC generates data from it).
                client.begin_round(rnd, [states[c] for c in sampled], self.model_from(global_state))
                # 3. Local training and uploads.
                attacked = {c for c in sampled if rnd == atk.round and c in victim_ids}
                done = self.vectorised_updates(
                    rnd, [states[c] for c in sampled if c not in attacked], global_state, parts
                )
                results = []
                for cid in sampled:
                    results.append(
                        self._client_round(
                            rnd,
                            states[cid],
                            global_state,
                            parts,
                            victims,
                            is_victim=cid in attacked,
                            local=done.get(cid),
                        )
                    )
                # A Poisson round may be empty: the model stays (the defenses still act).
                new_state = (
                    algorithm.aggregate(global_state, results, fed.lr)
                    if results
                    else clone_state(global_model)
                )
                for d in defenses:
                    new_state = d.privatize_aggregate(rnd, global_state, new_state, len(results))
                try:
                    check_finite_state(new_state, rnd, fed.lr)
                except DivergedError as err:  # the victims' messages, once sent, stay attackable
                    if victims:
                        err.outcome = outcome(None)
                    raise
                global_model.load_state_dict(new_state)
                server.after_aggregate(
                    rnd,
                    global_model,
                    functools.partial(self.client_models, global_state, results),
                )
                if self.evaluates_after(rnd + 1):
                    u = self.evaluate(global_model)
                    history.append(self.history_entry(rnd + 1, u, channel))
                if self.checkpoint is not None and rnd + 1 < fed.rounds and self.checkpoint.due():
                    self.checkpoint.save(
                        self,
                        {
                            "next_round": rnd + 1,
                            "model": global_model.state_dict(),
                            "parts": parts,
                            "states": states,
                            "victims": victims,
                            "training_sets": self._training_sets,
                            "rng": rng,
                            "history": history,
                            "utility": u,
                            "seconds": time.perf_counter() - t0,
                        },
                    )
                pbar.update(1)
        self.global_model = global_model
        return outcome(u)

    def model_from(self, state):
        """A builder of the model with weights ``state`` (built only if called)."""

        def build() -> torch.nn.Module:
            model = self.build_model()
            model.load_state_dict(state)
            return model

        return build

    def _prepare(self, global_model, states, parts) -> None:
        """The method's phase before round 0 (:func:`run_prepare_phase`), delivered by
        calling each client role. Client replies pass the run's artifact defenses; every
        message is counted in round ``PREPARE_ROUND``."""
        seed, channel = self.cfg.seed, parts.channel
        recipe = []  # the public recipe attached to the server's messages, built once

        def exchange(step, outgoing):
            if not recipe:
                recipe.append(self._prepare_context(global_model, 0, parts))
            replies = {}
            for cid, messages in outgoing.items():
                state = states[cid]
                got = {}
                for kind, payload in messages.items():
                    got[kind] = channel.send(
                        PREPARE_ROUND, SERVER, cid, kind, payload, context=recipe[0]
                    )
                    state.received[kind] = got[kind]
                answer = parts.client.prepare(step, state, got, torch_generator(seed, 5, cid))
                context = self._prepare_context(global_model, len(state.y), parts)
                sent = {}
                for kind, payload in answer.items():
                    for d in parts.defenses:
                        payload = d.privatize_artifact(PREPARE_ROUND, cid, kind, payload)
                    sent[kind] = channel.send(
                        PREPARE_ROUND, cid, SERVER, kind, payload, context=context
                    )
                replies[cid] = Reply(sent, len(state.y))
            return replies

        run_prepare_phase(
            parts.server, sorted(states), global_model, exchange, lambda: torch_generator(seed, 6)
        )

    def _prepare_context(self, global_model, num_images: int, parts) -> PublicContext:
        return self.public_context(
            clone_state(global_model),
            steps=0,
            batch=num_images,
            num_images=num_images,
            algorithm=parts.algorithm,
            received={},
            defenses=parts.defenses,
        )

    def client_models(self, global_state, results) -> dict[int, torch.nn.Module]:
        """Each client's model as the server received it: broadcast weights + update."""
        models = {}
        for r in results:
            model = self.build_model()
            model.load_state_dict({k: v + r.delta[k].to(v.dtype) for k, v in global_state.items()})
            models[r.client_id] = model
        return models
