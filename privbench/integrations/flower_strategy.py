"""The server side of the Flower adapter: any Flower strategy, wrapped with the
method's server role (see :mod:`privbench.integrations.flower`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: I001
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from privbench.engine.channel import SERVER
from privbench.engine.federated import clone_state
from privbench.integrations.flower_client import ATTACK_KEY, from_records, to_records


class SampledGrid:
    """A grid that shows the inner strategy only the nodes privbench sampled this round,
    so any strategy trains exactly the clients ``privbench run`` trains."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid, self._ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class PrivbenchStrategy(Strategy):
    """Any Flower strategy, with the method's server role around it and all traffic
    passed through a privbench channel."""

    def __init__(self, bench: Any, inner: Strategy):
        self.bench, self.inner = bench, inner
        self._global: dict[int, dict[str, torch.Tensor]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        bench, rnd = self.bench, server_round - 1
        sampled = bench.sample(rnd)
        bench.share(rnd, sampled, grid)
        state = clone_state(arrays.to_torch_state_dict())
        self._global[rnd] = state
        config = ConfigRecord(dict(config))
        config[ATTACK_KEY] = int(bool(bench.cfg.attack.names) and rnd == bench.cfg.attack.round)
        if not sampled:  # an empty Poisson round: nobody trains, the defenses still act
            return []
        view = SampledGrid(grid, [bench.nodes[c] for c in sampled])
        out = []
        # In client order, as privbench run broadcasts (a server role may draw per call).
        inner = self.inner.configure_train(server_round, arrays, config, view)
        for m in sorted(inner, key=lambda m: bench.cids[int(m.metadata.dst_node_id)]):
            dst = int(m.metadata.dst_node_id)
            cid = bench.cids[dst]
            extras = bench.server.broadcast(rnd, cid)
            records = dict(m.content.items())
            records.update(to_records(extras))
            msg = Message(content=RecordDict(records), dst_node_id=dst, message_type="train")
            bench.channel.send(
                rnd,
                SERVER,
                cid,
                "model",
                state,
                encoding="flower",
                nbytes=m.content["arrays"].count_bytes(),
            )
            for kind, (payload, nbytes) in from_records(msg.content).items():
                got = bench.channel.send(
                    rnd, SERVER, cid, kind, payload, encoding="flower", nbytes=nbytes
                )
                bench.received.setdefault(cid, {})[kind] = got
            out.append(msg)
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        bench, rnd = self.bench, server_round - 1
        before = self._global.pop(rnd)
        kept, failed = [], []
        for r in replies:
            (failed if r.has_error() else kept).append(r)
        bench.errors += [f"round {server_round}: {r.error.reason}" for r in failed]
        # In client order, as privbench run aggregates (replies arrive in any order, and
        # a float sum depends on its order).
        kept.sort(key=lambda r: int(r.content["metrics"]["partition-id"]))
        kept = [bench.receive_update(rnd, before, r) for r in kept]
        if kept:
            new, metrics = self.inner.aggregate_train(server_round, kept)
            if new is None:
                return new, metrics
            state = new.to_torch_state_dict()
            state = {k: v.to(before[k].dtype) for k, v in state.items()}
        elif failed:
            return None, None
        else:  # an empty Poisson round: the model stays
            state, metrics = {k: v.clone() for k, v in before.items()}, None
        for d in bench.defenses:
            state = d.privatize_aggregate(rnd, before, state, len(kept))
        model = bench.exp.build_model()
        model.load_state_dict(state)

        def client_models():
            return {
                cid: bench.exp.model_from({k: v + delta[k] for k, v in before.items()})()
                for cid, delta in bench.deltas.items()
            }

        bench.server.after_aggregate(rnd, model, client_models)
        bench.deltas = {}
        return ArrayRecord(model.state_dict()), metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
