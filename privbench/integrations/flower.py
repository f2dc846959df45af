"""Flower adapter: a real Flower run whose messages pass through privbench's channel.

``FlowerBench(config)`` gives the three Flower pieces of one privbench experiment:

- :meth:`FlowerBench.client_app`: a ``ClientApp`` whose nodes are privbench's clients
  (``node_config["partition-id"]`` = client id) and train with privbench's local recipe
  (the method's loss, local epochs, batch size, lr; in the attacked round the victims
  train on their attacked batch, exactly as in ``privbench run``);
- :meth:`FlowerBench.strategy`: wraps any message-API Flower strategy (FedAvg by
  default). Every model it sends and every reply it receives goes through privbench's
  :class:`~privbench.engine.channel.Channel`: bytes are Flower's own serialised array bytes,
  and the threat model's observations carry the public context an attacker needs;
- :meth:`FlowerBench.server_app`, and :meth:`FlowerBench.run_simulation` that runs
  Flower's simulation runtime and returns privbench result rows (accuracy, PSNR/SSIM
  of the configured attacks, bytes up/down).

Scope: methods that share nothing besides the model (``fedavg``, ``localmix``,
plugins alike), no defenses, the ``server`` threat model. Clients reply with their new
weights, so a FedSGD victim's message is the one-step update (the attack rescales it by
-1/lr to the gradient, the same information). Needs ``pip install 'privbench[flower]'``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage reports from a benchmark
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402  (flwr's torch helpers need torch imported first)

from privbench.config import RunConfig  # noqa: E402
from privbench.engine.case import TrainingOutcome, Victim  # noqa: E402
from privbench.engine.channel import SERVER, Channel  # noqa: E402
from privbench.engine.experiment import Experiment  # noqa: E402
from privbench.engine.federated import clone_state  # noqa: E402
from privbench.engine.method import (
    Augmenter,  # noqa: E402
    ClientState,  # noqa: E402
)
from privbench.engine.seeding import derive_seed  # noqa: E402
from privbench.errors import IncompatibleError  # noqa: E402
from privbench.pipeline import base_row, fail_rows, finish_rows  # noqa: E402
from privbench.results import Results  # noqa: E402

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg, Strategy
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "privbench.integrations.flower needs Flower with its simulation runtime: "
        "pip install 'privbench[flower]'"
    ) from err

ATTACK_KEY = "privbench-attack"  # train config: 1 in the attacked round


def _check_scope(exp: Experiment) -> None:
    cfg = exp.cfg
    factory = exp.regs["method"].entry(cfg.method).factory
    shares = getattr(factory, "shares", ())
    problems = []
    if shares:
        problems.append(
            f"method '{cfg.method}' shares {'/'.join(shares)} besides the model; the adapter "
            "carries models and updates only"
        )
    # Hooks the adapter's Flower apps do not call (Fed-ZDAC/ZDAS, the CVAE family).
    hooks = [
        h
        for h in ("prepare", "begin_round", "after_aggregate")
        if isinstance(factory, type) and getattr(factory, h) is not getattr(Augmenter, h)
    ]
    if hooks and not shares:
        problems.append(
            f"method '{cfg.method}' runs {'/'.join(hooks)} around training, which the "
            "adapter does not call"
        )
    if cfg.defenses:
        problems.append("defenses are not applied inside Flower clients yet")
    if cfg.attack.threat != "server":
        problems.append(f"threat model '{cfg.attack.threat}' (only 'server' is observed)")
    if cfg.fed.algorithm != "fedavg":
        problems.append(
            f"algorithm '{cfg.fed.algorithm}' (pass the matching Flower strategy instead)"
        )
    if problems:
        raise IncompatibleError("The Flower adapter does not support: " + "; ".join(problems))


def _client_app(config: RunConfig, model: Any, data: Any) -> ClientApp:
    app = ClientApp()
    cache: dict[str, Any] = {}

    def experiment() -> Experiment:
        if "exp" not in cache:  # once per Flower worker process
            exp = Experiment(config, model=model, data=data)
            cache.update(exp=exp, parts=exp.make_parts(defenses=()))
        return cache["exp"]

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        exp = experiment()
        cid = int(context.node_config["partition-id"])
        conf = msg.content["config"]
        rnd = int(conf["server-round"]) - 1
        is_victim = bool(conf.get(ATTACK_KEY, 0)) and cid < exp.cfg.attack.victims
        global_state = clone_state(msg.content["arrays"].to_torch_state_dict())
        state = ClientState(cid, *exp.client_data(cid))
        local = exp.local_update(rnd, state, global_state, cache["parts"], is_victim=is_victim)
        if local.kind == "gradient":  # Flower replies carry weights: one SGD step
            new = dict(global_state)
            for n, g in local.payload.items():
                new[n] = global_state[n] - exp.cfg.fed.lr * g
        else:
            new = {k: global_state[k] + local.payload[k] for k in global_state}
        metrics = MetricRecord(
            {
                "num-examples": local.num_images,
                "partition-id": cid,
                "local-steps": local.steps,
                "batch-size": local.batch,
                "victim": int(is_victim),
            }
        )
        reply = RecordDict({"arrays": ArrayRecord(new), "metrics": metrics})
        return Message(content=reply, reply_to=msg)

    return app


class PrivbenchStrategy(Strategy):
    """Any Flower strategy, with its traffic passed through a privbench channel."""

    def __init__(self, bench: FlowerBench, inner: Strategy):
        self.bench, self.inner = bench, inner
        self._global: dict[int, dict[str, torch.Tensor]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        bench, rnd = self.bench, server_round - 1
        state = clone_state(arrays.to_torch_state_dict())
        self._global[rnd] = state
        config = ConfigRecord(dict(config))
        config[ATTACK_KEY] = int(bool(bench.cfg.attack.names) and rnd == bench.cfg.attack.round)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        for m in messages:
            record = m.content["arrays"]
            bench.channel.send(
                rnd,
                SERVER,
                int(m.metadata.dst_node_id),
                "model",
                state,
                encoding="flower",
                nbytes=record.count_bytes(),
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        bench, rnd = self.bench, server_round - 1
        replies = list(replies)
        before = self._global.pop(rnd)
        for r in replies:
            if r.has_error():
                bench.errors.append(f"round {server_round}: {r.error.reason}")
                continue
            metrics = r.content["metrics"]
            cid = int(metrics["partition-id"])
            record = r.content["arrays"]
            new = record.to_torch_state_dict()
            delta = {k: new[k] - before[k] for k in before}
            context = bench.exp.public_context(
                before,
                steps=int(metrics["local-steps"]),
                batch=int(metrics["batch-size"]),
                num_images=int(metrics["num-examples"]),
                algorithm=bench.algorithm,
                received={},
                defenses=[],
            )
            bench.channel.send(
                rnd,
                cid,
                SERVER,
                "update",
                delta,
                context=context,
                encoding="flower",
                nbytes=record.count_bytes(),
            )
            if int(metrics["victim"]):
                # Ground truth for the metrics only, drawn as the client drew it.
                x, y = bench.exp.victim_batch(rnd, ClientState(cid, *bench.exp.client_data(cid)))
                bench.victims[cid] = Victim(cid, x.clone(), y.clone())
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


class FlowerBench:
    """One privbench experiment run on Flower (see the module docstring)."""

    def __init__(self, config: RunConfig, *, model: Any = None, data: Any = None):
        self.exp = Experiment(config, model=model, data=data)
        self.cfg = self.exp.cfg
        _check_scope(self.exp)
        self._config, self._model, self._data = config, model, data
        self.channel = Channel(self.exp.threat)
        self.victims: dict = {}
        self.history: list[dict[str, float]] = []
        self.errors: list[str] = []
        self.final_state: dict[str, torch.Tensor] | None = None
        self.algorithm = self.exp.make_algorithm()
        self.augmenter = self.exp.make_augmenter()
        self.strategy_name = "FedAvg"

    def client_app(self) -> ClientApp:
        return _client_app(self._config, self._model, self._data)

    def strategy(self, inner: Strategy | None = None) -> PrivbenchStrategy:
        fed = self.cfg.fed
        m = fed.clients_per_round
        inner = inner or FedAvg(
            fraction_train=fed.fraction,
            fraction_evaluate=0.0,
            min_train_nodes=m,
            min_evaluate_nodes=0,
            min_available_nodes=fed.clients,
        )
        self.strategy_name = type(inner).__name__
        return PrivbenchStrategy(self, inner)

    def _evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        model = self.exp.build_model()
        model.load_state_dict(arrays.to_torch_state_dict())
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
            torch.manual_seed(derive_seed(self.cfg.seed, 0))  # the built-in loop's init
            initial = ArrayRecord(self.exp.build_model().state_dict())
            strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=self.cfg.fed.rounds,
                evaluate_fn=self._evaluate,
            )

        return app

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
            if self.errors:
                raise RuntimeError("Flower clients failed: " + " | ".join(self.errors[:3]))
            if self.final_state is None:
                raise RuntimeError("the Flower run finished no round")
        except Exception as err:  # a failed trial is an error row, as in privbench run
            return fail_rows(rows, err, store, t0)
        outcome = TrainingOutcome(
            self.channel,
            self.victims,
            self.utility,
            self.history,
            (None, None, None),
            time.perf_counter() - t0,
        )
        return finish_rows(self.exp, outcome, rows, store, t0)
