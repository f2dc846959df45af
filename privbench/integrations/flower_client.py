"""The client side of the Flower adapter: privbench's client role inside a Flower
``ClientApp``, and the conversion between privbench messages and Flower records.

A node is one privbench client (``node_config["partition-id"]`` = client id). Whatever
the client keeps between calls (what it received, the method's private state for it) is
stored in the node's ``context.state``, so it lives where the client lives, whichever
Ray worker serves the call. Every message a method sends travels as an ``ArrayRecord``
named ``privbench.<kind>``; the reply's ``MetricRecord`` carries the public metadata
(partition id, example counts, local steps) and each defense's report for its server
side (DP-SGD's accounting).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from privbench.config import RunConfig
from privbench.engine.channel import SERVER, Payload
from privbench.engine.experiment import Experiment
from privbench.engine.federated import clone_state
from privbench.engine.method import PREPARE_ROUND, ClientState
from privbench.engine.seeding import torch_generator

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "privbench.integrations.flower needs Flower with its simulation runtime: "
        "pip install 'privbench[flower]'"
    ) from err

PHASE = "privbench-phase"  # config key: "whoami", "prepare", "share" or "train"
ATTACK_KEY = "privbench-attack"  # train config: 1 in the attacked round
PREFIX = "privbench."  # records carrying a method's messages: privbench.<kind>
REPORT = "privbench-report."  # metric keys of defense reports: <prefix><defense>.<key>
_RECEIVED = "privbench-received."  # node state: what the client holds, per kind
_PRIVATE = "privbench-private"  # node state: the method's private state for this client


def to_records(messages: Mapping[str, Payload]) -> dict[str, ArrayRecord]:
    """A method's messages as Flower records, one ``ArrayRecord`` per kind."""
    return {PREFIX + kind: ArrayRecord(dict(payload)) for kind, payload in messages.items()}


def from_records(content: RecordDict) -> dict[str, tuple[Payload, int]]:
    """The method's messages in a Flower message: kind -> (payload, Flower's bytes)."""
    out = {}
    for key, record in content.array_records.items():
        if key.startswith(PREFIX):
            out[key[len(PREFIX) :]] = (record.to_torch_state_dict(), record.count_bytes())
    return out


def defense_reports(defenses, client_id: int) -> dict[str, float]:
    """Each defense's report from its client side, as flat metric entries."""
    out: dict[str, float] = {}
    for d in defenses:
        for key, value in d.client_report(client_id).items():
            out[f"{REPORT}{d.name}.{key}"] = float(value)
    return out


def record_reports(defenses, client_id: int, metrics: Mapping[str, Any]) -> None:
    """Hand each defense's server side the report its client side sent."""
    for d in defenses:
        prefix = f"{REPORT}{d.name}."
        report = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        if report:
            d.record_report(client_id, report)


class NodeClient:
    """privbench's client side of one Flower worker process: the experiment (data,
    model, method roles, defenses) built once; each call restores one node's state."""

    def __init__(self, config: RunConfig, model: Any, data: Any):
        self.exp = Experiment(config, model=model, data=data)
        self.parts = self.exp.make_parts()

    def restore(self, cid: int, context: Context) -> ClientState:
        state = ClientState(cid, *self.exp.client_data(cid))
        for key, record in context.state.array_records.items():
            if key.startswith(_RECEIVED):
                state.received[key[len(_RECEIVED) :]] = record.to_torch_state_dict()
        self.parts.client.private.pop(cid, None)
        if _PRIVATE in context.state.array_records:
            self.parts.client.private[cid] = context.state[_PRIVATE].to_torch_state_dict()
        return state

    def keep(self, state: ClientState, context: Context) -> None:
        for kind, payload in state.received.items():
            context.state[_RECEIVED + kind] = ArrayRecord(dict(payload))
        private = self.parts.client.private.get(state.client_id)
        if private:
            context.state[_PRIVATE] = ArrayRecord(dict(private))
        elif _PRIVATE in context.state:  # the client dropped its state (Fed-ZDAC burn-in)
            del context.state[_PRIVATE]

    def artifacts(self, rnd: int, cid: int, messages: Mapping[str, Payload]):
        """A client's artifacts after the run's defenses, as records."""
        out = {}
        for kind, payload in messages.items():
            for d in self.parts.defenses:
                payload = d.privatize_artifact(rnd, cid, kind, payload)
            out[kind] = payload
        return to_records(out)

    def query(self, msg: Message, context: Context) -> Message:
        cid = int(context.node_config["partition-id"])
        conf = msg.content["config"]
        phase = str(conf[PHASE])
        metrics: dict[str, Any] = {"partition-id": cid}
        records: dict[str, ArrayRecord] = {}
        if phase != "whoami":
            state = self.restore(cid, context)
            metrics["num-examples"] = len(state.y)
            got = {kind: payload for kind, (payload, _) in from_records(msg.content).items()}
            if phase == "prepare":
                state.received.update(got)
                step = int(conf["step"])
                reply = self.parts.client.prepare(
                    step, state, got, torch_generator(self.exp.cfg.seed, 5, cid)
                )
                records = self.artifacts(PREPARE_ROUND, cid, reply)
            else:  # "share"
                rnd = int(conf["round"])
                records = self.artifacts(rnd, cid, self.parts.client.share(rnd, state))
            self.keep(state, context)
        content = RecordDict({**records, "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    def train(self, msg: Message, context: Context) -> Message:
        exp, parts = self.exp, self.parts
        cid = int(context.node_config["partition-id"])
        conf = msg.content["config"]
        rnd = int(conf["server-round"]) - 1
        is_victim = bool(conf.get(ATTACK_KEY, 0)) and cid < exp.cfg.attack.victims
        global_state = clone_state(msg.content["arrays"].to_torch_state_dict())
        state = self.restore(cid, context)
        state.received.update(
            {kind: payload for kind, (payload, _) in from_records(msg.content).items()}
        )
        parts.client.begin_round(rnd, [state], exp.model_from(global_state))
        local = exp.local_update(rnd, state, global_state, parts, is_victim=is_victim)
        kind, payload = local.kind, local.payload
        for d in parts.defenses:
            payload = d.privatize_update(rnd, cid, kind, payload)
        if kind == "gradient":  # Flower replies carry weights: one SGD step
            new = {k: v.clone() for k, v in global_state.items()}
            for n, g in payload.items():
                new[n] = global_state[n] - exp.cfg.fed.lr * g
        else:
            new = {k: global_state[k] + payload[k].to(global_state[k].dtype) for k in global_state}
        uploads = self.artifacts(rnd, cid, parts.client.upload(rnd, state))
        self.keep(state, context)
        metrics = MetricRecord(
            {
                "num-examples": local.num_images,
                "num-synthetic": local.num_synthetic,
                "partition-id": cid,
                "local-steps": local.steps,
                "batch-size": local.batch,
                "victim": int(local.victim is not None),
                **defense_reports(parts.defenses, cid),
            }
        )
        content = RecordDict({"arrays": ArrayRecord(new), **uploads, "metrics": metrics})
        return Message(content=content, reply_to=msg)


def client_app(config: RunConfig, model: Any, data: Any) -> ClientApp:
    """A Flower ``ClientApp`` whose nodes are privbench's clients."""
    app = ClientApp()
    cache: dict[str, NodeClient] = {}

    def node() -> NodeClient:
        if "node" not in cache:  # once per Flower worker process
            cache["node"] = NodeClient(config, model, data)
        return cache["node"]

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return node().query(msg, context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return node().train(msg, context)

    return app


def query_message(dst: int, phase: str, messages: Mapping[str, Payload], **config: int):
    """A server -> client query message of ``phase`` carrying the method's messages."""
    content = RecordDict({**to_records(messages), "config": ConfigRecord({PHASE: phase, **config})})
    return Message(content=content, dst_node_id=dst, message_type="query")


__all__ = [
    "ATTACK_KEY",
    "PHASE",
    "SERVER",
    "client_app",
    "from_records",
    "query_message",
    "record_reports",
    "to_records",
]
