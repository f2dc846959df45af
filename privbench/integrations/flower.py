"""Flower adapter: a real Flower run of any privbench method, its messages through
privbench's channel.

``FlowerBench(config)`` gives the Flower pieces of one privbench experiment:

- :meth:`FlowerBench.client_app`: a ``ClientApp`` whose nodes are privbench's clients,
  each running the method's client role (:mod:`privbench.integrations.flower_client`);
- :meth:`FlowerBench.strategy`: wraps any message-API Flower strategy (FedAvg by
  default) with the method's server role: the clients sampled as ``privbench run``
  samples them, the method's broadcasts added to each train message, its shares asked
  for before training, its uploads taken from the replies before the inner strategy
  aggregates, then the defenses' aggregate step and the server role's own work;
- :meth:`FlowerBench.server_app`, and :meth:`FlowerBench.run_simulation` that runs
  Flower's simulation runtime and returns privbench result rows.

Every message (model, averaged data, policy, generator, label counts, update) is a
Flower record; the channel counts Flower's own serialised bytes and the threat model's
observations carry the public context an attacker needs. Clients reply with their new
weights, so a FedSGD victim's message is the one-step update (the attack rescales it by
-1/lr to the gradient, the same information). Defenses run where they belong: record
and update privatisers and artifact noise in the client, the aggregate step and the
accountants in the server (DP-SGD's clients report their mechanism). Needs ``pip
install 'privbench[flower]'``.
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage reports from a benchmark
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402  (flwr's torch helpers need torch imported first)

# flower_client raised a clear ImportError above when Flower is missing.
from flwr.app import (  # noqa: E402
    ArrayRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg, Strategy  # noqa: E402

from privbench.config import RunConfig  # noqa: E402
from privbench.engine.channel import SERVER, Channel  # noqa: E402
from privbench.engine.experiment import Experiment  # noqa: E402
from privbench.engine.federated import check_finite_state, clone_state  # noqa: E402
from privbench.engine.method import (  # noqa: E402
    PREPARE_ROUND,
    ClientState,
    Reply,
    run_prepare_phase,
)
from privbench.engine.outcome import TrainingOutcome, Victim  # noqa: E402
from privbench.engine.seeding import derive_seed, torch_generator  # noqa: E402
from privbench.errors import DivergedError, IncompatibleError  # noqa: E402
from privbench.integrations.flower_client import (  # noqa: E402
    client_app,
    from_records,
    query_message,
    record_reports,
)
from privbench.integrations.flower_strategy import PrivbenchStrategy  # noqa: E402
from privbench.pipeline import base_row, finish_rows, training_failed  # noqa: E402
from privbench.results import Results  # noqa: E402


class FlowerBench:
    """One privbench experiment run on Flower (see the module docstring)."""

    def __init__(self, config: RunConfig, *, model: Any = None, data: Any = None):
        self.exp = Experiment(config, model=model, data=data)
        self.cfg = self.exp.cfg
        if self.cfg.fed.algorithm != "fedavg":
            raise IncompatibleError(
                f"The Flower adapter does not support algorithm '{self.cfg.fed.algorithm}' "
                "(pass the matching Flower strategy to FlowerBench.strategy instead)"
            )
        self._config, self._model, self._data = config, model, data
        # As in privbench run: a run no attack reads keeps no observations.
        self.channel = Channel(self.exp.threat, record=bool(self.cfg.attack.names))
        parts = self.exp.make_parts(channel=self.channel)
        self.server, self.defenses, self.algorithm = parts.server, parts.defenses, parts.algorithm
        self.victims: dict[int, Victim] = {}
        self.history: list[dict[str, float]] = []
        self.errors: list[str] = []
        self.received: dict[int, dict[str, Any]] = {}  # what the server sent each client
        self.deltas: dict[int, dict[str, torch.Tensor]] = {}  # this round's updates
        self.training_sets: dict[int, tuple[int, int]] = {}
        self.nodes: dict[int, int] = {}  # client id -> Flower node id
        self.cids: dict[int, int] = {}  # Flower node id -> client id
        self.final_state: dict[str, torch.Tensor] | None = None
        self.diverged: DivergedError | None = None  # set by the round that diverged
        self.utility = None  # the last evaluation's
        self.strategy_name = "FedAvg"
        self._rng = np.random.default_rng([self.cfg.seed, 3])  # privbench run's sampler

    # -- the round's parts ----------------------------------------------------------------

    def sample(self, rnd: int) -> list[int]:
        """The clients ``privbench run`` samples in round ``rnd`` (victims forced in)."""
        return self.exp.sample_clients(self._rng, rnd)

    def context(self, before, *, steps, batch, num_images, num_synthetic=0, received=None):
        return self.exp.public_context(
            before,
            steps=steps,
            batch=batch,
            num_images=num_images,
            num_synthetic=num_synthetic,
            algorithm=self.algorithm,
            received=received or {},
            defenses=self.defenses,
        )

    def ask(self, grid: Grid, messages: list[Message]) -> list[Message]:
        """Send query messages, return the replies (an error reply fails the run)."""
        replies = list(grid.send_and_receive(messages))
        failed = [r.error.reason for r in replies if r.has_error()]
        if failed or len(replies) != len(messages):
            raise RuntimeError("Flower clients failed: " + " | ".join(failed[:3] or ["no reply"]))
        return replies

    def uploads(self, rnd: int, cid: int, content: RecordDict, context) -> dict[str, Any]:
        """The method's messages in a client's reply, through the channel."""
        got = {}
        for kind, (payload, nbytes) in from_records(content).items():
            got[kind] = self.channel.send(
                rnd, cid, SERVER, kind, payload, context=context, encoding="flower", nbytes=nbytes
            )
        return got

    def whoami(self, grid: Grid) -> None:
        """Which node plays which client (not privbench traffic: not counted)."""
        fed = self.cfg.fed
        ids = list(grid.get_node_ids())
        while len(ids) < fed.clients:
            time.sleep(0.1)
            ids = list(grid.get_node_ids())
        replies = self.ask(grid, [query_message(n, "whoami", {}) for n in ids])
        for r in replies:
            cid = int(r.content["metrics"]["partition-id"])
            self.nodes[cid], self.cids[int(r.metadata.src_node_id)] = (
                int(r.metadata.src_node_id),
                cid,
            )

    def prepare(self, grid: Grid, model: torch.nn.Module) -> None:
        """The method's phase before round 0 (:func:`run_prepare_phase`), delivered as
        Flower query messages."""
        recipe = []  # the public recipe attached to the server's messages, built once

        def exchange(step, outgoing):
            if not recipe:
                recipe.append(self.context(clone_state(model), steps=0, batch=0, num_images=0))
            messages = []
            for cid, msgs in outgoing.items():
                msg = query_message(self.nodes[cid], "prepare", msgs, step=step)
                for kind, (payload, nbytes) in from_records(msg.content).items():
                    self.received.setdefault(cid, {})[kind] = self.channel.send(
                        PREPARE_ROUND,
                        SERVER,
                        cid,
                        kind,
                        payload,
                        context=recipe[0],
                        encoding="flower",
                        nbytes=nbytes,
                    )
                messages.append(msg)
            replies = {}
            for r in self.ask(grid, messages):
                cid = int(r.content["metrics"]["partition-id"])
                n = int(r.content["metrics"]["num-examples"])
                ctx = self.context(clone_state(model), steps=0, batch=n, num_images=n)
                replies[cid] = Reply(self.uploads(PREPARE_ROUND, cid, r.content, ctx), n)
            return replies

        run_prepare_phase(
            self.server,
            sorted(self.nodes),
            model,
            exchange,
            lambda: torch_generator(self.cfg.seed, 6),
        )

    def share(self, rnd: int, sampled: list[int], grid: Grid) -> None:
        """The clients the server role asks to share before training this round."""
        asked = self.server.share_clients(rnd, sampled, list(range(self.cfg.fed.clients)))
        if not asked:
            return
        replies = self.ask(
            grid, [query_message(self.nodes[c], "share", {}, round=rnd) for c in asked]
        )
        for r in sorted(replies, key=lambda r: int(r.content["metrics"]["partition-id"])):
            cid = int(r.content["metrics"]["partition-id"])
            for kind, got in self.uploads(rnd, cid, r.content, None).items():
                self.server.receive(rnd, cid, kind, got)

    def receive_update(self, rnd: int, before, reply: Message) -> Message:
        """A client's train reply through the channel; returns what the inner strategy
        aggregates (the weights, weighted as privbench weights them)."""
        metrics = reply.content["metrics"]
        cid = int(metrics["partition-id"])
        record = reply.content["arrays"]
        new = record.to_torch_state_dict()
        delta = {k: new[k] - before[k] for k in before}
        self.deltas[cid] = delta
        n, synthetic = int(metrics["num-examples"]), int(metrics["num-synthetic"])
        context = self.context(
            before,
            steps=int(metrics["local-steps"]),
            batch=int(metrics["batch-size"]),
            num_images=n,
            num_synthetic=synthetic,
            received=self.received.get(cid, {}),
        )
        self.channel.send(
            rnd,
            cid,
            SERVER,
            "update",
            delta,
            context=context,
            encoding="flower",
            nbytes=record.count_bytes(),
        )
        for kind, got in self.uploads(rnd, cid, reply.content, context).items():
            self.server.receive(rnd, cid, kind, got)
        record_reports(self.defenses, cid, metrics)
        if int(metrics["victim"]):
            # Ground truth for the metrics only, drawn as the client drew it.
            x, y = self.exp.victim_batch(rnd, ClientState(cid, *self.exp.client_data(cid)))
            self.victims[cid] = Victim(cid, x.clone(), y.clone())
        else:
            self.training_sets[cid] = (n, synthetic)
        weight = float(n)
        for d in self.defenses:
            weight = d.aggregation_weight(cid, weight)
        content = RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": weight})})
        return Message(content=content, reply_to=reply)

    # -- the Flower apps ------------------------------------------------------------------

    def client_app(self):
        return client_app(self._config, self._model, self._data)

    def strategy(self, inner: Strategy | None = None) -> PrivbenchStrategy:
        # Under Poisson sampling a round has any number of clients (even none).
        m = self.cfg.fed.clients_per_round if self.cfg.fed.client_sampling == "fixed" else 1
        inner = inner or FedAvg(
            fraction_train=1.0,  # of the clients privbench sampled (SampledGrid)
            fraction_evaluate=0.0,
            min_train_nodes=m,
            min_evaluate_nodes=0,
            min_available_nodes=m,
        )
        self.strategy_name = type(inner).__name__
        return PrivbenchStrategy(self, inner)

    def _evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        state = arrays.to_torch_state_dict()
        try:  # the built-in loop's check: a diverged run is an error row, not an accuracy
            check_finite_state(state, server_round - 1, self.cfg.fed.lr)
        except DivergedError as err:
            if self.victims:  # their messages were sent: the attacks run on them
                err.outcome = self.outcome(0.0)
            self.diverged = err
            raise
        model = self.exp.build_model()
        model.load_state_dict(state)
        self.final_state = clone_state(model)
        if not self.exp.evaluates_after(server_round):
            return None
        u = self.utility = self.exp.evaluate(model)
        self.history.append(self.exp.history_entry(server_round, u, self.channel))
        return MetricRecord({"accuracy": float(u.accuracy)})

    def server_app(self, strategy: Strategy | None = None) -> ServerApp:
        app = ServerApp()
        strategy = strategy if isinstance(strategy, PrivbenchStrategy) else self.strategy(strategy)

        @app.main()
        def main(grid: Grid, context: Context) -> None:
            try:
                torch.manual_seed(derive_seed(self.cfg.seed, 0))  # the built-in loop's init
                model = self.exp.build_model()
                self.whoami(grid)
                self.prepare(grid, model)
                strategy.start(
                    grid=grid,
                    initial_arrays=ArrayRecord(model.state_dict()),
                    num_rounds=self.cfg.fed.rounds,
                    evaluate_fn=self._evaluate,
                )
            except Exception as err:  # reported by run_simulation as the row's error
                self.errors.append(f"{type(err).__name__}: {err}")
                raise

        return app

    def outcome(self, seconds: float) -> TrainingOutcome:
        return TrainingOutcome.finish(
            self.channel,
            self.victims,
            self.utility,
            self.history,
            self.defenses,
            seconds,
            self.training_sets,
        )

    def run_simulation(
        self,
        *,
        strategy: Strategy | None = None,
        out: str | None = None,
        backend_config: dict | None = None,
    ) -> Results:
        """Run Flower's simulation runtime (Ray) on this experiment; return its rows."""
        from flwr.simulation import run_simulation

        from privbench.results import ResultStore

        t0 = time.perf_counter()
        store = ResultStore(out) if out else None
        rows = Results(base_row(self.cfg, n) for n in (self.cfg.attack.names or ("none",)))
        server = self.server_app(strategy)
        for row in rows:
            row.algorithm = f"flower-{self.strategy_name}"
        workers = max(1, min(self.cfg.fed.clients, os.cpu_count() or 1))
        config = backend_config or {
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": workers, "include_dashboard": False},
        }
        try:
            run_simulation(
                server_app=server,
                client_app=self.client_app(),
                num_supernodes=self.cfg.fed.clients,
                backend_config=config,
            )
            if self.diverged is not None:
                raise self.diverged
            if self.errors:
                raise RuntimeError("Flower clients failed: " + " | ".join(self.errors[:3]))
            if self.final_state is None:
                raise RuntimeError("the Flower run finished no round")
            outcome = self.outcome(time.perf_counter() - t0)
        except Exception as err:  # a failed trial is an error row, as in privbench run
            return training_failed(self.exp, err, rows, store, t0)
        return finish_rows(self.exp, outcome, rows, store, t0)
