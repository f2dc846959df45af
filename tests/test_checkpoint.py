"""A run killed between rounds resumes from its checkpoint and writes the row an
uninterrupted run writes: every method, algorithm and defense carries its state across."""

from __future__ import annotations

import json
import os
import threading

import pytest

import privbench
from privbench import AttackConfig, FedConfig, ResultStore, RunConfig
from privbench.engine import checkpoint as ckpt_mod

TIMINGS = {"wall_s", "train_s", "attack_s", "timestamp", "reconstruction_file"}


class Killed(BaseException):
    """What a SIGKILL looks like to the round loop: nothing after it runs."""


def _kill_after_first_save(monkeypatch):
    saved = []
    real = ckpt_mod.RoundCheckpoint.save

    def save(self, experiment, state):
        real(self, experiment, state)
        saved.append(state["next_round"])
        if len(saved) == 1:
            raise Killed

    monkeypatch.setattr(ckpt_mod.RoundCheckpoint, "save", save)
    return saved


def _comparable(row) -> dict:
    d = json.loads(json.dumps(row.to_dict(), default=str))
    return {k: v for k, v in d.items() if k not in TIMINGS}


# Killed after round 1's save, resumed for the rest. fedavg (the quick case) and the
# round-2 attack run 3 rounds, so the resumed run saves again after round 2; the others
# run 2, enough to carry every piece of state across one resume.
CASES = {
    **{
        m: RunConfig(
            method=m, fed=FedConfig(rounds=3 if m == "fedavg" else 2, clients=4, fraction=0.5)
        )
        for m in privbench.registries()["method"].names()
    },
    "fedprox": RunConfig(fed=FedConfig(rounds=2, clients=4, algorithm="fedprox")),
    "qffl": RunConfig(fed=FedConfig(rounds=2, clients=4, algorithm="qffl")),
    "dp-sgd": RunConfig(defenses=("dp-sgd",), fed=FedConfig(rounds=2, clients=4)),
    "client-dp+poisson": RunConfig(
        defenses=("client-dp",),
        fed=FedConfig(rounds=2, clients=4, fraction=0.5, client_sampling="poisson"),
    ),
    "artifact-noise+prune": RunConfig(
        method="fedmix", defenses=("artifact-noise", "prune"), fed=FedConfig(rounds=2, clients=4)
    ),
    "attack in round 2": RunConfig(
        fed=FedConfig(rounds=3, clients=4),
        attack=AttackConfig(names=("idlg",), round=2, params={"idlg": {"iters": 5}}),
    ),
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n == "fedavg" else pytest.mark.slow) for n in sorted(CASES)],
)
def test_a_killed_run_resumes_to_the_uninterrupted_row(name, tmp_path, monkeypatch):
    cfg = CASES[name]
    straight = privbench.run(cfg)[0]
    store = ResultStore(str(tmp_path))
    saved = _kill_after_first_save(monkeypatch)
    with pytest.raises(Killed):
        privbench.run(cfg, out=store, checkpoint_every=0)
    assert saved == [1] and store.read() == []
    path = ckpt_mod.RoundCheckpoint.in_store(store.directory, cfg.resolve().hash()).path
    assert os.path.exists(path)
    resumed = privbench.run(cfg, out=store, checkpoint_every=0)[0]
    assert _comparable(resumed) == _comparable(straight)
    # It went on from round 1 (a restart from round 0 would save round 1 again) and saved
    # after each later round but the last.
    assert saved == list(range(1, cfg.fed.rounds))
    assert not os.path.exists(path), "a finished run leaves no checkpoint"


def test_a_checkpoint_of_other_versions_is_not_used(tmp_path, monkeypatch, caplog):
    cfg = RunConfig(fed=FedConfig(rounds=3, clients=4))
    store = ResultStore(str(tmp_path))
    _kill_after_first_save(monkeypatch)
    with pytest.raises(Killed):
        privbench.run(cfg, out=store, checkpoint_every=0)
    monkeypatch.setattr(ckpt_mod, "FORMAT", ckpt_mod.FORMAT + 1)
    (row,) = privbench.run(cfg, out=store, checkpoint_every=1e9)
    assert "starting again from round 0" in caplog.text
    (straight,) = privbench.run(cfg)
    assert _comparable(row) == _comparable(straight)


def test_short_runs_write_no_checkpoint(tmp_path):
    store = ResultStore(str(tmp_path))
    privbench.run(RunConfig(fed=FedConfig(rounds=2, clients=4)), out=store)
    assert not os.path.exists(os.path.join(store.directory, "checkpoints")) or not os.listdir(
        os.path.join(store.directory, "checkpoints")
    )


def test_state_that_cannot_be_saved_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    from privbench.engine.experiment import Experiment

    real = Experiment.make_parts

    def make_parts(self, **kw):
        parts = real(self, **kw)
        parts.server.lock = threading.Lock()  # a plugin's server role holding a lock
        return parts

    monkeypatch.setattr(Experiment, "make_parts", make_parts)
    cfg = RunConfig(fed=FedConfig(rounds=3, clients=4))
    (row,) = privbench.run(cfg, out=ResultStore(str(tmp_path)), checkpoint_every=0)
    assert row.status == "ok"
    assert "no checkpoints for this run: its state cannot be saved" in caplog.text
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_a_negative_interval_is_one_clear_error(tmp_path, capsys):
    from privbench.cli.main import main

    code = main(
        ["run", "fedavg", "--rounds", "1", "--out", str(tmp_path), "--checkpoint-every", "-1"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "checkpoint_every: given -1.0; allowed: seconds >= 0" in err
    assert len(err.strip().splitlines()) == 1


def test_the_cli_resumes_a_killed_run(tmp_path, monkeypatch, capsys):
    from privbench.cli.main import main

    argv = ["run", "fedavg", "--rounds", "3", "--clients", "4", "--out", str(tmp_path), "--json"]
    _kill_after_first_save(monkeypatch)
    with pytest.raises(Killed):
        main([*argv, "--checkpoint-every", "0"])
    capsys.readouterr()
    assert main([*argv, "--checkpoint-every", "0"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "ok" and row["rounds"] == 3
    assert len(ResultStore(str(tmp_path)).read()) == 1


def test_an_edit_to_any_source_file_changes_the_code_digest(tmp_path, monkeypatch):
    pkg = tmp_path / "pb_fake_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ckpt_mod, "CODE_PACKAGES", ("pb_fake_pkg",))
    ckpt_mod.code_digest.cache_clear()
    before = ckpt_mod.code_digest()
    (pkg / "sub" / "mod.py").write_text("x = 2\n")
    ckpt_mod.code_digest.cache_clear()
    assert ckpt_mod.code_digest() != before
    ckpt_mod.code_digest.cache_clear()  # the real packages' digest for later tests


def test_an_unreadable_checkpoint_starts_the_run_again(tmp_path, caplog):
    cfg = RunConfig(fed=FedConfig(rounds=2, clients=4))
    store = ResultStore(str(tmp_path))
    path = ckpt_mod.RoundCheckpoint.in_store(store.directory, cfg.resolve().hash()).path
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as fh:
        fh.write(b"\x80\x05 not a pickle")
    (row,) = privbench.run(cfg, out=store)
    assert row.status == "ok" and "cannot be read" in caplog.text
    (straight,) = privbench.run(cfg)
    assert _comparable(row) == _comparable(straight)


def test_a_failed_write_costs_the_checkpoints_not_the_run(tmp_path, monkeypatch, caplog):
    def full_disk(self, buf):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.RoundCheckpoint, "_write", full_disk)
    cfg = RunConfig(fed=FedConfig(rounds=3, clients=4))
    (row,) = privbench.run(cfg, out=ResultStore(str(tmp_path)), checkpoint_every=0)
    assert row.status == "ok"
    assert "no more checkpoints for this run" in caplog.text and "No space left" in caplog.text
