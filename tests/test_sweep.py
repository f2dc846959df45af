"""Sweeps: grid validation lists every problem before anything runs; points expand to the
same configs as the CLI; a 2 x 2 x 2 grid runs with the local backend (and a local Ray
instance), survives kill -9 and resumes with no lost or duplicated rows."""

import os
import signal
import subprocess
import sys
import time

import pytest

from privbench.errors import ParameterError, PrivbenchError
from privbench.results import ResultStore
from privbench.results.sweep import expand, pending, run_sweep

FAST = {
    "dataset": "digits",
    "partition": "iid",
    "clients": 4,
    "rounds": 1,
    "local_epochs": 1,
    "batch_size": 16,
    "iters": 2,
    "no_progress": True,
}
GRID = {
    "sweep": FAST,
    "grid": {
        "method": ["fedavg", "naivemix"],
        "attack": ["dlg"],
        "defense": ["none", "prune"],
        "prune": [0.5],
        "seed": [0, 1],
    },
}


def test_grid_expands_to_cli_configs_and_drops_flags_a_point_cannot_take():
    points, problems = expand(GRID)
    assert problems == [] and len(points) == 8
    first = points[0]
    assert first.argv[:2] == ["run", "fedavg"] and "--prune" not in first.argv  # defense none
    assert "--prune" in points[2].argv and points[2].config.defense_params == {
        "prune": {"prune": 0.5}
    }
    assert len({p.config_hash for p in points}) == 8


def test_invalid_grid_lists_every_problem_at_once():
    grid = {
        "sweep": {**FAST, "no_such_option": 1},
        "grid": {"method": ["fedavg"], "seed": []},
        "extra": {},
    }
    points, problems = expand(grid)
    assert points == [] and len(problems) == 2  # structure first: section, empty list
    _, problems = expand({"sweep": {**FAST, "no_such_option": 1}, "grid": {"method": ["x"]}})
    assert problems == ["'no_such_option' is not an option of `privbench run`."]
    _, problems = expand(
        {"sweep": {**FAST, "checkpoint_every": 10}, "grid": {"method": ["fedavg"]}}
    )
    assert problems == [
        "'checkpoint_every' is not a sweep option: every point checkpoints its rounds every "
        "300 s and resumes on a rerun."
    ]
    _, problems = expand(
        {"sweep": FAST, "grid": {"method": ["fedavgg", "fedmix"], "lam": [-1.0], "sigma": [0.1]}}
    )
    text = "\n".join(problems)
    assert "Unknown method 'fedavgg'" in text or "fedavgg" in text
    assert "'lam' parameter" in text
    assert "'sigma' applies to no point" in text
    with pytest.raises(PrivbenchError, match="invalid grid"):
        run_sweep({"grid": {"method": ["nope"]}}, out="unused")


def _statuses(store):
    rows = store.read()
    return [(r["config_hash"], r["attack"], r["status"]) for r in rows]


@pytest.mark.slow
def test_kill_9_loses_only_points_in_flight_and_resume_completes(tmp_path):
    """kill -9 mid-sweep (CLI, one worker) keeps the rows written; the local backend
    (API, two workers) runs only the rest; a rerun of the finished sweep runs nothing."""
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(
        "[sweep]\n"
        + "".join(f"{k} = {_toml(v)}\n" for k, v in FAST.items())
        + '[grid]\nmethod = ["fedavg", "naivemix"]\nattack = ["dlg"]\n'
        + 'defense = ["none", "prune"]\nprune = [0.5]\nseed = [0, 1]\n'
    )
    out = str(tmp_path / "sweep")
    cmd = [sys.executable, "-m", "privbench", "sweep", str(grid_file), "--out", out]
    proc = subprocess.Popen(cmd + ["--workers", "1"], start_new_session=True)
    store = ResultStore(out)
    deadline = time.time() + 300
    while time.time() < deadline and len(store.read()) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-run
    proc.wait()
    before = store.read()
    assert 1 <= len(before) < 8
    # Resumed through the API's local backend: it runs exactly the points not done.
    summary = run_sweep(GRID, out=out, workers=2)
    assert (summary.points, summary.ran, summary.failed) == (8, 8 - len(before), 0)
    rows = _statuses(store)
    assert len(rows) == 8 and len(set(rows)) == 8  # none lost, none duplicated
    assert all(s == "ok" for *_, s in rows)
    points, _ = expand(GRID)
    assert pending(points, out) == []
    # A finished sweep rerun (from the CLI) skips every point and writes nothing.
    again = subprocess.run(cmd + ["--workers", "2"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "8 points: 8 already done, 0 run, 0 with error rows" in again.stdout
    assert len(store.read()) == 8


def _toml(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) else str(v)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one local Ray instance at a time (with test_flower's)
def test_ray_backend_runs_the_grid_on_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    out = str(tmp_path / "ray")
    grid = {**GRID, "grid": {**GRID["grid"], "seed": [0]}}  # 4 points: the backend, not the grid
    summary = run_sweep(grid, out=out, backend="ray", workers=2)
    assert (summary.ran, summary.failed) == (4, 0)
    rows = _statuses(ResultStore(out))
    assert len(rows) == 4 and len(set(rows)) == 4


def test_exclude_skips_matching_points_and_names_unknown_keys():
    grid = {**GRID, "exclude": [{"method": "naivemix", "defense": "prune"}]}
    points, problems = expand(grid)
    assert problems == [] and len(points) == 6
    assert not any(
        p.options["method"] == "naivemix" and p.options["defense"] == "prune" for p in points
    )
    _, problems = expand({**GRID, "exclude": [{"attack": "dlg"}]})
    assert problems == ["[[exclude]] removes every point of the grid: nothing would run."]
    _, problems = expand({**GRID, "exclude": [{"model": "cnn"}]})
    assert problems == ["[[exclude]] names 'model', which none of [sweep], [grid], [[case]] sets."]


def test_cases_pair_options_and_cross_the_grid_axes():
    """Each [[case]] is one choice of the options it names (a method with its own attack
    list), crossed with the [grid] axes innermost; exclusions see case keys too."""
    fast = {k: v for k, v in FAST.items() if k != "iters"}
    grid = {
        "sweep": {**fast, "dlg.iters": 2, "idlg.iters": 2},
        "grid": {"seed": [0, 1], "defense": ["none", "prune"], "prune": [0.5]},
        "case": [
            {"method": "fedavg", "attack": ["dlg", "idlg"]},
            {"method": "naivemix", "attack": ["dlg", "averaged-data"], "naivemix.lam": 0.1},
        ],
        "exclude": [{"method": "naivemix", "defense": "prune"}],
    }
    points, problems = expand(grid)
    assert problems == []
    # seed-major: seed 0's three points come first
    assert [(p.options["seed"], p.config.method, p.config.defenses) for p in points] == [
        (0, "fedavg", ()),
        (0, "naivemix", ()),
        (0, "fedavg", ("prune",)),
        (1, "fedavg", ()),
        (1, "naivemix", ()),
        (1, "fedavg", ("prune",)),
    ]
    assert {p.attacks for p in points if p.config.method == "fedavg"} == {("dlg", "idlg")}
    naive = next(p for p in points if p.config.method == "naivemix")
    assert naive.attacks == ("dlg", "averaged-data")
    assert naive.config.method_params["lam"] == 0.1
    # The same point written with [grid] and [[exclude]] hashes the same.
    plain = {
        "sweep": {**fast, "dlg.iters": 2, "idlg.iters": 2, "attack": ["dlg", "idlg"]},
        "grid": {"method": ["fedavg"], "seed": [0]},
    }
    (same,), _ = expand(plain)
    assert same.config_hash == points[0].config_hash
    _, problems = expand({**grid, "case": [{"method": "fedavg", "seed": 3}]})
    assert problems == ["'seed' is set both by [[case]] and by [grid]: set it once."]
    _, problems = expand({**grid, "case": [{}]})
    assert problems == [
        "[[case]] entries must be non-empty tables of option = value.",
        "no 'method' given (in [sweep], [grid] or [[case]]).",
    ]
    _, problems = expand({**grid, "case": [{"method": "fedavg", "bogus": 1}]})
    assert problems == ["'bogus' is not an option of `privbench run`."]


def test_headline_grid_is_valid():
    from privbench.results.sweep import load_grid

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    points, problems = expand(load_grid(os.path.join(root, "benchmarks", "headline.toml")))
    # 5 methods x 4 defenses x 3 seeds, less LocalMix and FedMix under DP-SGD and FedAvg
    # and LocalMix under artifact noise (they share no artifact): 48 points, each with its
    # IG companion
    assert problems == [] and len(points) == 2 * 48


def test_the_other_methods_headline_grid_is_valid_and_covers_them_all():
    from privbench import registries
    from privbench.results.sweep import load_grid

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    first, _ = expand(load_grid(os.path.join(root, "benchmarks", "headline.toml")))
    points, problems = expand(load_grid(os.path.join(root, "benchmarks", "headline_more.toml")))
    # 8 methods x 4 defenses x 3 seeds, less Fed-ZDAC/ZDAS under either DP defense (their
    # BatchNorm), FedAvP under DP-SGD (privbench refuses the pair) and the four methods
    # that share no artifact under artifact noise: 69 points, and FedAvg on cnn-bn (their
    # baseline) without a defense at 3 seeds: 72, each with its IG companion.
    assert problems == [] and len(points) == 2 * 72
    assert {p.config.defenses for p in points if p.config.model == "cnn-bn"} == {()}
    present = {(p.config.method, p.config.defenses) for p in points}
    assert ("fedavp", ("dp-sgd",)) not in present and ("fedavp", ("client-dp",)) in present
    covered = {p.config.method for p in first} | {p.config.method for p in points}
    assert covered == set(registries()["method"].names())  # all 13 methods
    per_method = {}
    for p in points:
        per_method.setdefault(p.config.method, set()).add(p.attacks)
    # one attacker per method: the DLG family, and its IG companion
    assert all(len(lists) == 2 for lists in per_method.values())


def test_cli_rejects_bad_grids_before_running(tmp_path, capsys):
    from privbench.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[grid]\nmethod = ["fedavgg"]\nseed = []\n')
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "invalid grid" in err and "'seed' is an empty list" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[grid\n")
    assert main(["sweep", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing ran, nothing written


@pytest.mark.slow
def test_killed_and_rerun_sweeps_leave_exactly_one_ok_row_per_point(tmp_path):
    """The issue's sequence, three times, each kill at a random time in its own third
    of a sweep's life (0.5-5 s: start-up, workers busy, rows being written), so every
    phase is hit without six full reruns: SIGTERM the sweep (its
    workers are not signalled), rerun and SIGKILL it, rerun to the end. Workers die with
    their sweep and a worker never writes a row for a point that already has an ok row,
    so every point ends with exactly one row, ok."""
    import random

    grid_file = tmp_path / "grid.toml"
    fast = {k: v for k, v in FAST.items() if k != "iters"} | {"clients": 2}  # no attack
    grid_file.write_text(
        "[sweep]\n"
        + "".join(f"{k} = {_toml(v)}\n" for k, v in fast.items())
        + '[grid]\nmethod = ["fedavg"]\nseed = [0, 1, 2, 3]\n'
    )
    rnd = random.Random(7)
    for trial in range(3):
        out = str(tmp_path / f"sweep{trial}")
        cmd = [sys.executable, "-m", "privbench", "sweep", str(grid_file), "--out", out]
        cmd += ["--workers", "2"]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(0.5 + 1.5 * trial, 2.0 + 1.5 * trial))
            proc.send_signal(sig)  # the sweep process only, never its workers
            proc.wait()
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        time.sleep(1.0)  # an orphaned worker would append its late row now
        rows = ResultStore(out).read()
        keys = [(r["config_hash"], r["attack"]) for r in rows]
        assert len(keys) == len(set(keys)) == 4, (trial, keys)
        assert all(r["status"] == "ok" for r in rows), trial


def _spawned_workers(parent: int) -> list[int]:
    """Pids of the multiprocessing workers whose parent is ``parent`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # the process ended while we looked
        if ppid == parent and b"spawn_main" in cmd:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_sweep_workers_die_with_their_sweep(tmp_path, sig):
    """An orphaned worker would finish its point and append a late row; a rerun that
    started meanwhile runs the point again: two rows. Workers must end with the sweep."""
    grid_file = tmp_path / "grid.toml"
    slow = {k: v for k, v in FAST.items() if k != "iters"} | {"clients": 2, "rounds": 400}
    grid_file.write_text(
        "[sweep]\n"
        + "".join(f"{k} = {_toml(v)}\n" for k, v in slow.items())
        + '[grid]\nmethod = ["fedavg"]\nseed = [0, 1]\n'
    )
    out = str(tmp_path / "sweep")
    cmd = [sys.executable, "-m", "privbench", "sweep", str(grid_file), "--out", out]
    proc = subprocess.Popen(cmd + ["--workers", "2"], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(workers := _spawned_workers(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert len(workers) == 2, "the sweep did not start its workers"
    time.sleep(2.0)  # the workers are inside their points now
    proc.send_signal(sig)  # the sweep only
    proc.wait()
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)  # do not leave them running after a failure
    assert alive == [], "workers outlived their sweep"
    assert not ResultStore(out).read()  # and no late row


def test_threads_per_point_default_to_the_cores_shared_by_the_workers(tmp_path, monkeypatch):
    from privbench.results import sweep

    seen = []
    monkeypatch.setattr(sweep, "_run_local", lambda todo, **kw: seen.append(kw["threads"]) or 0)
    run_sweep(GRID, out=str(tmp_path), workers=2)
    run_sweep(GRID, out=str(tmp_path), workers=2, threads=1)
    assert seen == [max(1, (os.cpu_count() or 1) // 2), 1]
    with pytest.raises(ParameterError, match="The 'threads' parameter must be >= 1. Got 0"):
        run_sweep(GRID, out=str(tmp_path), threads=0)


def test_a_diverged_point_is_settled_and_any_other_error_is_retried(tmp_path):
    """A diverged run diverges again (CPU training is deterministic): a rerun skips it
    instead of writing a second error row; a dead worker's point runs again."""
    from privbench.results.store import diverged, settled

    points, _ = expand(GRID)
    a, b, c = points[:3]
    store = ResultStore(str(tmp_path))

    def rows(point, status, error=None):
        return [
            {"method": "m", "attack": n, "status": status, "error": error}
            | {"config_hash": point.config_hash}
            for n in point.attacks
        ]

    store.append(rows(a, "ok"))
    store.append(rows(b, "error", "DivergedError: Training diverged in round 0 at lr 1"))
    store.append(rows(c, "error", "worker failed: BrokenProcessPool: a worker died"))
    assert pending(points[:3], str(tmp_path)) == [c]
    assert store.finished_hashes() == {a.config_hash, b.config_hash}
    assert not settled({"status": "error", "error": "UserCodeError: DivergedError: no"})
    assert not settled({"status": "error"}) and not settled("ok") and settled({"status": "ok"})
    # diverged: the settled errors that are a training divergence, nothing else
    assert diverged(store.read()[len(a.attacks)])
    assert not diverged({"status": "ok"}) and not diverged(store.read()[-1])
    assert not diverged({"status": "error", "error": "UserCodeError: DivergedError: no"})


def test_an_attack_whose_every_restart_diverged_settles_its_point(caplog):
    """Its starts and the message are deterministic, so a rerun diverges again: the row
    settles (as written now, and as written before the error had a type of its own),
    and it is not a training divergence; any other RuntimeError is retried. The row's
    message says it all: no traceback is logged for it."""
    from privbench.errors import ATTACK_DIVERGED, AttackDivergedError
    from privbench.pipeline import _error_text, _log_traceback

    _log_traceback(AttackDivergedError(f"dlg: {ATTACK_DIVERGED}"))
    assert not caplog.records
    try:
        raise RuntimeError("dlg: out of memory")
    except RuntimeError as err:
        _log_traceback(err)
    assert "trial failed" in caplog.text
    from privbench.results.store import diverged, settled

    def row(error):
        return {"status": "error", "attack": "dlg@sample", "attack_round": 3, "error": error}

    now = row(_error_text(AttackDivergedError(f"dlg: {ATTACK_DIVERGED}")))
    assert now["error"].startswith("AttackDivergedError: dlg: every restart diverged")
    before = row("RuntimeError: dlg: every restart diverged (non-finite loss)")
    assert settled(now) and settled(before) and not diverged(now) and not diverged(before)
    assert not settled(row("RuntimeError: dlg: out of memory"))
    assert not settled(row("RuntimeError: dlg: every restart diverged (non-finite loss); x"))


def test_grid_rows_keep_the_points_of_the_grid_and_the_cli_filters_with_grid(tmp_path, capsys):
    """``--grid`` tables, plots, baselines and checks the rows of a grid's points only:
    a run of an earlier version of the grid in the same store is left out."""
    import json

    from privbench.cli import main
    from privbench.results.report import grid_rows

    points, _ = expand(GRID)
    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[sweep]\ndataset = "digits"\npartition = "iid"\nclients = 4\nrounds = 1\n'
        "local_epochs = 1\nbatch_size = 16\niters = 2\nno_progress = true\n"
        '[grid]\nmethod = ["fedavg", "naivemix"]\nattack = ["dlg"]\n'
        'defense = ["none", "prune"]\nprune = [0.5]\nseed = [0, 1]\n'
    )

    def row(h, method, acc):
        return {
            "config_hash": h,
            "method": method,
            "attack": "dlg",
            "defense": "none",
            "seed": 0,
            "status": "ok",
            "accuracy": acc,
            "psnr": 20.0,
            "config": {},
        }

    rows = [row(points[0].config_hash, "fedavg", 0.5), row("0" * 16, "fedavg", 0.1)]
    assert grid_rows(rows, [str(grid)]) == [rows[0]]
    with pytest.raises(ParameterError, match="None of the 1 rows is a point of"):
        grid_rows(rows[1:], [str(grid)])
    store = tmp_path / "results.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["table", str(store), "--grid", str(grid), "--metrics", "accuracy"]) == 0
    out = capsys.readouterr().out
    assert "0.500" in out and "0.100" not in out
    assert main(["table", str(store), "--metrics", "accuracy"]) == 0
    assert "0.300 ± 0.200" in capsys.readouterr().out  # both rows without --grid
