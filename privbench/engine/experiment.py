"""The round loop: sampling, the method's messages, local training, aggregation and
evaluation, every message through the channel. The engine owns this loop; a method and
the defenses only fill in hooks.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from privbench.engine.case import TrainingOutcome, Victim
from privbench.engine.channel import SERVER, Channel, PublicContext
from privbench.engine.client import ClientWork
from privbench.engine.federated import clone_state
from privbench.engine.method import PREPARE_ROUND, Augmenter, ClientState, Preparation
from privbench.engine.seeding import derive_seed, torch_generator
from privbench.progress import bar


class Experiment(ClientWork):
    """One resolved configuration, ready to train (:meth:`train`); the evaluation attacks
    and scores the outcome (:func:`privbench.evaluation.attacking.attack_victims`)."""

    def train(self) -> TrainingOutcome:
        cfg, fed, atk = self.cfg, self.cfg.fed, self.cfg.attack
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(cfg.seed, 0))
        global_model = self.build_model()
        parts = self.make_parts(channel=Channel(self.threat))
        augmenter, defenses, channel = parts.method, parts.defenses, parts.channel
        algorithm = parts.algorithm
        self.augmenter = augmenter  # the run's live method object (the engine's side)
        states = {
            c.client_id: ClientState(c.client_id, *self.client_data(c.client_id))
            for c in self.clients
        }
        victim_ids = list(range(atk.victims)) if atk.names else []
        victims: dict[int, Victim] = {}
        self._prepare(global_model, states, parts)
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
                    self.send_artifacts(rnd, cid, augmenter.share(rnd, states[cid]), parts)
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

    def _prepare(self, global_model, states, parts) -> None:
        """The method's phase before round 0 (a federated generator, a pre-trained
        classifier); its messages are counted in round ``PREPARE_ROUND``."""
        augmenter, algorithm, defenses, channel = (
            parts.method,
            parts.algorithm,
            parts.defenses,
            parts.channel,
        )
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
