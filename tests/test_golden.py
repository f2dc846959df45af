"""Golden rows: the default commands give the rows recorded before the engine redesign.

``tests/golden/default_rows.json`` holds every field of each command's rows except the
timings (``wall_s``, ``train_s``, ``attack_s``) and the package versions, as printed by
``python -m privbench <command> --json`` on the commit before the redesign (then extended, values
unchanged, by the columns the adversary issue added: psnr_affine, guess_identified and
the per-level epsilons, and later by the local optimiser's fields, sgd and no decay).
Re-recorded when the strongest-adversary work moved the attack
numbers on purpose (4 batched restarts by default, FedAvP's expected view drawn before
the starts, client sampling and worst_of in the rows): accuracy, bytes and epsilon of
every row stayed the same. A refactor
of the engine, the roles or the public view must leave every one of these numbers
unchanged; a change that means to move a number re-records the file in the same commit
and says why. A plugin parameter added later (``privbench.confighash.LATER_DEFAULTS``) is
dropped from a row's config at the value every recorded row ran with, as in the config
hash: at that value it reproduces the recording, at any other it shows as a difference.

The rows are exact on the machine that recorded them only (``tests/golden/machine.py``
says why): a machine with its own recording (``default_rows.<fingerprint>.json``, from
``python -m tests.golden.record``) is held to it or to the first recording (the
fingerprint does not see every difference: a virtualised CPU reports a generic model
name, so two machines may share a fingerprint and still round apart), any other to the
first recording. A refactor that moves a number matches neither. A
change that moves a number on purpose re-records every machine's file it can reach and
deletes the others.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.golden.machine import (
    LEGACY,
    fingerprint,
    golden_rows,
    normalise,
    rows_file,
    run_command,
)

FINGERPRINT = fingerprint()
GOLDEN_FILE = rows_file(FINGERPRINT)
GOLDEN = golden_rows(GOLDEN_FILE)
# One command at a time, each at the fingerprint's threads (tests/golden/machine.py).
pytestmark = pytest.mark.xdist_group("golden")


def same(got, want, path="row") -> list[str]:
    """Every difference between ``got`` and ``want`` (floats to 1e-9 relative)."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{path}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in want for d in same(got[k], want[k], f"{path}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: {len(got)} items, want {len(want)}"]
        return [
            d
            for i, (g, w) in enumerate(zip(got, want, strict=True))
            for d in same(g, w, f"{path}[{i}]")
        ]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
            return []
    elif got == want and type(got) is type(want):
        return []
    return [f"{path}: {got!r}, want {want!r}"]


def test_same_compares_what_it_should():
    assert same({"a": [1.0, "x"]}, {"a": [1.0 + 1e-12, "x"]}) == []
    assert same({"a": 1.0}, {"a": 1.001}) and same({"a": 1}, {"b": 1})
    assert same({"a": None}, {"a": 0.0}) and same([1, 2], [1])


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(GOLDEN))
def test_default_command_rows_are_unchanged(command, tmp_path):
    proc, rows = run_command(command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    normalise(rows)  # parameters and fields added since, at their recorded value
    diffs = same(rows, GOLDEN[command])
    if diffs and GOLDEN_FILE != LEGACY and not same(rows, golden_rows(LEGACY)[command]):
        diffs = []  # a machine of this fingerprint that rounds as the first one did
    where = f"(against {GOLDEN_FILE.name}; this machine: {FINGERPRINT})"
    assert not diffs, f"{command}: {len(diffs)} fields changed {where}:\n" + "\n".join(diffs[:20])


def test_each_machine_recording_is_named_by_its_fingerprint_and_unknown_machines_fall_back():
    from tests.golden.machine import HERE, key

    for path in HERE.glob("default_rows.*.json"):
        machine = json.loads(path.read_text())["machine"]
        assert path.name == f"default_rows.{key(machine)}.json"
        # every machine's recording covers the same commands as the first
        assert sorted(golden_rows(path)) == sorted(golden_rows(LEGACY))
    other = {**FINGERPRINT, "cpu": "a CPU no recording was made on"}
    assert rows_file(other) == LEGACY and key(other) != key(FINGERPRINT)
    assert set(FINGERPRINT) == {"cpu", "isa", "torch", "threads"}


def test_commands_run_at_the_fingerprints_threads_whatever_the_worker_runs_at(monkeypatch):
    """Under pytest-xdist a worker runs at its share of the cores; the golden commands
    run at the machine's own count, the one their fingerprint names."""
    import os
    import subprocess

    from tests.golden import machine

    monkeypatch.setenv("PRIVBENCH_GOLDEN_THREADS", "7")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what a worker's commands inherit
    seen = {}

    def fake_run(argv, **kw):
        seen.update(kw["env"])
        return subprocess.CompletedProcess(argv, 1, "", "")

    monkeypatch.setattr(machine.subprocess, "run", fake_run)
    machine.run_command("run fedavg --attack dlg")
    assert machine.fingerprint()["threads"] == machine.golden_threads() == "7"
    assert seen["OMP_NUM_THREADS"] == seen["MKL_NUM_THREADS"] == "7"
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "1"
