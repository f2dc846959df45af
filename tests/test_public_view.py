"""Attacks get a public view, never private state (the design's "cannot cheat").

After a run of every registered method under both threat models, every object reachable
from every Observation the adversary kept (its context, the public method, the model
builder, closures, bound methods) is walked. Message payloads are what crossed the wire
and are the adversary's by right; everything else must hold no client's record, none of
the live method's state (synthetic sets, local policies, the server's inbox), no random
generator, and none of the engine's live objects.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping

import pytest
import torch
from torch import nn

import privbench
from privbench.attacks.base import ATTACKS, Attack, Reconstruction
from privbench.engine.case import Case
from privbench.engine.channel import Channel, Observation, PublicContext
from privbench.engine.experiment import Experiment
from privbench.engine.method import ClientState
from privbench.testing import tiny_config

FAST = {  # methods whose defaults take long on the tiny run
    "fedavp": {"expansion": 1},
    "zdac": {"zsdg_iters": 3, "start_round": 0},
    "zdas": {"zsdg_iters": 3, "start_round": 0},
    "cvae-uniform": {"cvae_rounds": 1, "cvae_epochs": 1, "k": 8},
    "cvae-minority": {"cvae_rounds": 1, "cvae_epochs": 1, "k": 8},
    "cvae-finetune": {"cvae_rounds": 1, "cvae_epochs": 1, "pretrain_epochs": 1},
}
FORBIDDEN = (Case, Channel, ClientState, torch.Generator)
ATOMS = (type(None), bool, int, float, complex, str, bytes, type, types.ModuleType)


def reachable(roots, *, opaque=()) -> tuple[list[object], list[torch.Tensor]]:
    """Every object reachable from ``roots`` and the tensors among them. Objects whose
    id is in ``opaque`` (message payloads) are not entered; module globals and classes
    are not entered (they are code, not what the attack was handed)."""
    seen, objects, tensors = set(), [], []
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, ATOMS) or id(obj) in opaque:
            continue
        seen.add(id(obj))
        objects.append(obj)
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
            continue
        if isinstance(obj, Mapping):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        if isinstance(obj, types.FunctionType):
            stack.extend(c.cell_contents for c in obj.__closure__ or () if _filled(c))
            stack.extend(obj.__defaults__ or ())
            stack.extend((obj.__kwdefaults__ or {}).values())
        if isinstance(obj, types.MethodType):
            stack.extend((obj.__self__, obj.__func__))
        if isinstance(obj, functools.partial):
            stack.extend((obj.func, *obj.args, *obj.keywords.values()))
        if isinstance(obj, nn.Module):
            stack.extend(obj.state_dict(keep_vars=True).values())
        stack.extend(getattr(obj, "__dict__", {}).values())
        for slot in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, slot):
                stack.append(getattr(obj, slot))
    return objects, tensors


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def payload_ids(observations) -> set[int]:
    """The wire: each observation's payload and the payloads its context received."""
    ids = set()
    for o in observations:
        ids.add(id(o.payload))
        if o.context is not None:
            ids.update(id(v) for v in o.context.received.values())
    return ids


def rows_of(t: torch.Tensor) -> set[bytes]:
    t = t.detach().float().contiguous()
    return {r.numpy().tobytes() for r in t.reshape(len(t), -1)} if t.ndim >= 1 and len(t) else set()


def private_state(exp: Experiment) -> tuple[set[bytes], set[int], list[object]]:
    """The clients' records (as row bytes), every tensor storage the run's live method
    and its client and server roles hold, and the live objects no attack may reach."""
    records = set()
    for c in exp.clients:
        records |= rows_of(exp.client_data(c.client_id)[0])
    live = [exp.parts.method, exp.parts.client, exp.parts.server]
    _, held = reachable([o.__dict__ for o in live])
    for t in held:
        if t.ndim == 4:  # synthetic images and the like: their values are private too
            records |= rows_of(t)
    storages = {t.untyped_storage().data_ptr() for t in held if t.numel()}
    return records, storages, [*live, exp]


def leaks(observations, exp: Experiment) -> list[str]:
    records, storages, live = private_state(exp)
    wire = payload_ids(observations)
    objects, tensors = reachable(observations, opaque=wire)
    found = [f"live object {type(o).__name__}" for o in objects if any(o is x for x in live)]
    # The public method was set up with the attacker's own seed: generators inside it are
    # the attacker's randomness. Outside it, none may be reachable.
    methods = {id(o.context.method) for o in observations if o.context is not None}
    outside, _ = reachable(observations, opaque=wire | methods)
    found += [f"forbidden {type(o).__name__}" for o in outside if isinstance(o, FORBIDDEN)]
    found += [
        f"forbidden {type(o).__name__}"
        for o in objects
        if isinstance(o, FORBIDDEN) and not isinstance(o, torch.Generator)
    ]
    for t in tensors:
        if t.numel() and t.untyped_storage().data_ptr() in storages:
            found.append(f"tensor {tuple(t.shape)} shares storage with the live method")
        elif t.ndim == 4 and rows_of(t) & records:
            found.append(f"tensor {tuple(t.shape)} holds a private record")
    return found


def _run(method: str, threat: str):
    cfg = tiny_config(
        method=method,
        method_params=FAST.get(method, {}),
        attack=dict(names=("dlg",), threat=threat, victims=1),
    )
    exp = Experiment(cfg)
    outcome = exp.train()
    return exp, outcome.channel.observations


def test_the_walk_finds_a_planted_leak():
    """The check can fail: a context that carries the live method (the old design) or a
    client's records is caught."""
    exp, observations = _run("zdac", "server")
    assert observations and not leaks(observations, exp)
    obs = next(o for o in observations if o.context is not None)
    cheat = Observation(
        obs.round,
        obs.sender,
        obs.receiver,
        obs.kind,
        obs.payload,
        PublicContext(**{**obs.context.__dict__, "method": exp.parts.client.method}),
    )
    assert any("live object" in f for f in leaks([cheat], exp))
    x0 = exp.client_data(0)[0]
    stash = PublicContext(**{**obs.context.__dict__, "public_data": (x0.clone(), None)})
    planted = Observation(obs.round, obs.sender, obs.receiver, obs.kind, obs.payload, stash)
    assert any("private record" in f for f in leaks([planted], exp))


@pytest.mark.slow
@pytest.mark.parametrize("threat", ["server", "client"])
@pytest.mark.parametrize("method", sorted(privbench.registries()["method"].names()))
def test_no_private_state_reaches_an_observation(method, threat):
    exp, observations = _run(method, threat)
    assert observations, f"{method}/{threat}: the adversary saw nothing"
    found = leaks(observations, exp)
    assert not found, f"{method}/{threat}: " + "; ".join(sorted(set(found))[:10])


class CheatProbe(Attack):
    """Tries every way into private state an attack could try from what it is handed;
    writes what it found to ``found``."""

    consumes = ("gradient", "update")
    found: list[str] = []

    def reconstruct(self, observation, *, generator, seen):
        ctx = observation.context
        for name in ("private", "synthetic", "_trained", "_inbox", "entries", "server_set"):
            if getattr(ctx.method, name, None):
                self.found.append(f"method.{name}")
        for name in ("client", "server", "parts"):  # no way back to the roles
            if getattr(ctx.method, name, None) is not None:
                self.found.append(f"method.{name}")
        if getattr(ctx.build_model, "__self__", None) is not None:
            self.found.append("build_model is bound to the engine")
        public = {id(o.context.method) for o in seen if o.context is not None}
        objects, _ = reachable([observation, *seen], opaque=payload_ids(seen) | public)
        self.found += [type(o).__name__ for o in objects if isinstance(o, FORBIDDEN)]
        shape = (ctx.num_images, *ctx.input_shape)
        return Reconstruction(torch.rand(shape, generator=generator), None)


@pytest.fixture
def cheat_probe():
    CheatProbe.found = []
    ATTACKS.register("cheat-probe", description="test attack that hunts for private state")(
        CheatProbe
    )
    yield CheatProbe
    del ATTACKS.entries["cheat-probe"]


@pytest.mark.parametrize("method", ["zdac", "fedavp", "fedmix"])
def test_a_cheating_attack_finds_no_private_state(cheat_probe, method):
    cfg = tiny_config(
        method=method,
        method_params=FAST.get(method, {}),
        attack=dict(names=("cheat-probe",), victims=1),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    assert cheat_probe.found == []
