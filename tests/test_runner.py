"""The experiment loop: augmenter hooks, determinism, error rows, the result store."""

import json
import os
from dataclasses import replace

import pytest
import torch

import privbench
from privbench.attacks import ATTACKS, Attack
from privbench.augmenters import (
    AUGMENTERS,
    Augmenter,
    ClientRole,
    ServerRole,
    cross_entropy,
)
from privbench.results import RESULT_FIELDS, ResultStore
from tests.conftest import tiny_config


class ProbeClient(ClientRole):
    def share(self, round, client):
        self.method.calls["share"] += 1
        if round > 0:
            return {}
        return {"label_counts": {"h": torch.bincount(client.y, minlength=self.method.num_classes)}}

    def training_data(self, round, client, x, y):
        self.method.calls["data"] += 1
        assert "label_counts" in client.received
        return x, y


class ProbeServer(ServerRole):
    def __init__(self, method):
        super().__init__(method)
        self.histograms = {}

    def receive(self, round, sender, kind, payload):
        self.method.calls["receive"] += 1
        self.histograms[sender] = payload["h"]

    def broadcast(self, round, receiver):
        self.method.calls["broadcast"] += 1
        total = torch.stack(list(self.histograms.values())).sum(0)
        return {"label_counts": {"h": total}}

    def after_aggregate(self, round, model, client_models):
        self.method.calls["after"] += 1


class HookProbe(Augmenter):
    """Exercises every role: clients share label counts, the server broadcasts their sum,
    the loss smooths labels with it."""

    name = "hook-probe"
    shares = ("label_counts",)
    Client = ProbeClient
    Server = ProbeServer

    def __init__(self):
        super().__init__()
        self.calls = {"share": 0, "receive": 0, "broadcast": 0, "data": 0, "loss": 0, "after": 0}

    def local_loss(self, model, x, y, *, received, generator=None):
        self.calls["loss"] += 1
        prior = received["label_counts"]["h"].float()
        soft = (
            torch.nn.functional.one_hot(y, self.num_classes).float() * 0.9
            + 0.1 * prior / prior.sum()
            if not y.dtype.is_floating_point
            else y
        )
        return cross_entropy(model(x), soft)


@pytest.fixture
def probe():
    holder = {}

    def factory():
        holder["aug"] = HookProbe()
        return holder["aug"]

    AUGMENTERS.register("hook-probe", description="test augmenter")(factory)
    yield holder
    del AUGMENTERS.entries["hook-probe"]


def test_augmenter_hooks_are_real(probe):
    cfg = tiny_config(method="hook-probe", attack=dict(names=("idlg",), params={"iters": 2}))
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    calls = probe["aug"].calls
    n, rounds = cfg.fed.clients, cfg.fed.rounds
    assert calls["share"] == n * rounds and calls["receive"] == n
    assert calls["broadcast"] == n * rounds and calls["after"] == rounds
    assert calls["data"] == n * rounds and calls["loss"] > n * rounds
    # The shared histograms crossed the channel with exact bytes (10 int64 per message).
    assert row.bytes_by_kind["label_counts"] == {"up": n * 10 * 8, "down": n * rounds * 10 * 8}
    # The attack used the probe's loss (label smoothing by the broadcast prior): the victim
    # simulation is exact only with it, which the label inference and run both rely on.
    assert row.label_acc == 1.0


def _strip(row):
    d = row.to_dict()
    for k in ("wall_s", "train_s", "attack_s"):
        d.pop(k)
    return d


def test_same_seed_same_row_different_seed_different_row():
    cfg = tiny_config(attack=dict(names=("idlg",), params={"iters": 5}))
    a, b = privbench.run(cfg)[0], privbench.run(cfg)[0]
    assert _strip(a) == _strip(b)
    c = privbench.run(replace(cfg, seed=1))[0]
    assert c.config_hash != a.config_hash and c.psnr != a.psnr


def test_row_has_every_field_with_real_values(tmp_path):
    cfg = tiny_config(attack=dict(names=("dlg",), params={"iters": 3}))
    (row,) = privbench.run(cfg, out=str(tmp_path))
    d = row.to_dict()
    assert set(RESULT_FIELDS) <= set(d)
    assert d["status"] == "ok" and d["error"] is None
    assert 0.0 <= d["accuracy"] <= 1.0 and d["psnr"] > 0 and -1 <= d["ssim"] <= 1
    # Bytes: every sampled client gets the model each round and uploads one message.
    n_params = sum(
        p.numel() for p in privbench.engine.experiment.Experiment(cfg).build_model().parameters()
    )
    per_model = n_params * 4
    assert d["bytes_down"] == cfg.fed.clients * cfg.fed.rounds * per_model
    assert d["bytes_up"] == cfg.fed.clients * cfg.fed.rounds * per_model
    assert d["bytes_by_kind"]["gradient"]["up"] == per_model  # the victim's FedSGD step
    from importlib.metadata import version

    assert d["versions"]["torch"] == version("torch")
    stored = ResultStore(str(tmp_path)).read()
    assert stored == [json.loads(json.dumps(d))]
    arrays = os.path.join(str(tmp_path), d["reconstruction_file"])
    import numpy as np

    with np.load(arrays) as z:
        assert z["ground_truth"].shape == z["reconstruction"].shape == (1, 1, 1, 8, 8)


def test_failed_attack_is_an_error_row_not_silence(tmp_path):
    @ATTACKS.register("always-fails", description="test attack")
    class Boom(Attack):
        name = "always-fails"
        consumes = ("gradient",)

        def reconstruct(self, observation, *, generator, seen=()):
            raise RuntimeError("boom")

    try:
        cfg = tiny_config(attack=dict(names=("always-fails", "idlg"), params={"iters": 2}))
        rows = privbench.run(cfg, out=str(tmp_path))
    finally:
        del ATTACKS.entries["always-fails"]
    bad, good = rows
    assert bad.status == "error" and bad.error == "RuntimeError: boom" and bad.psnr is None
    assert good.status == "ok" and good.psnr is not None
    assert bad.accuracy == good.accuracy  # utility of the run is still reported
    assert [r["status"] for r in ResultStore(str(tmp_path)).read()] == ["error", "ok"]


def test_client_threat_cannot_run_gradient_attack():
    cfg = tiny_config(attack=dict(names=("dlg",), threat="client"))
    (row,) = privbench.run(cfg)
    assert row.status == "error" and "threat model 'client' never sees" in row.error


def _row(config_hash: str, **extra) -> dict:
    return {
        "method": "fedavg",
        "attack": "none",
        "status": "ok",
        "config_hash": config_hash,
        **extra,
    }


def test_store_skips_a_torn_last_line(tmp_path):
    store = ResultStore(str(tmp_path))
    store.append([_row("a")])
    with open(store.path, "a") as fh:
        fh.write('{"config_hash": "b", "sta')  # a writer killed mid-line
    with pytest.warns(UserWarning, match=r"line 2 \(torn: a writer was killed\)"):
        assert store.finished_hashes() == {"a"}
    store.append([_row("c")])  # not swallowed by the torn line
    with pytest.warns(UserWarning, match=r"skipped 1 line\(s\).*line 2 \(not JSON\)"):
        assert store.finished_hashes() == {"a", "c"}


def test_a_skip_done_store_never_writes_a_second_row_for_what_is_done(tmp_path):
    store = ResultStore(str(tmp_path), skip_done=True)
    store.append([_row("a"), _row("b", status="error")])
    store.append([_row("a"), _row("a", status="error"), _row("b")])  # a is done, b is not
    rows = ResultStore(str(tmp_path)).read()
    assert [(r["config_hash"], r["status"]) for r in rows] == [
        ("a", "ok"),
        ("b", "error"),
        ("b", "ok"),
    ]


def test_concurrent_appends_never_interleave(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = ResultStore(str(tmp_path)).read()
    assert len(rows) == 4 * 50
    assert all(len(r["pad"]) == 5000 for r in rows)


def _writer(folder, i):
    store = ResultStore(folder)
    for j in range(50):
        store.append([_row(f"{i}-{j}", pad="x" * 5000)])


@pytest.mark.parametrize("algorithm, params", [("fedprox", {"mu": 0.1}), ("qffl", {"q": 1.0})])
def test_other_trainers_run(algorithm, params):
    cfg = tiny_config(fed=dict(algorithm=algorithm, algorithm_params=params, rounds=2))
    (row,) = privbench.run(cfg)
    assert row.status == "ok" and row.algorithm == algorithm and row.accuracy is not None


def test_a_row_names_the_machine_its_floats_come_from():
    """Float results differ from one CPU to another: a row records which it ran on."""
    import torch

    from privbench.results.machine import ISA, cpu, versions

    model, isa = cpu()
    got = versions()
    assert got["cpu"].startswith(model) and set(isa.split()) <= set(ISA)
    assert got["threads"] == str(torch.get_num_threads())
