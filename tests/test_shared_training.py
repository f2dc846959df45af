"""Points that differ only in their attacks train once (``pipeline.run_shared``; the
sweep groups them with ``sweep.together``) and write the rows separate runs write.

A headline grid pairs each case with a companion case (the same training, other
attacks): trained once, the pair costs one training instead of two. Nothing may move:
every field of every row but the timings equals the separate run's."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import privbench
from privbench import AttackConfig, ResultStore
from privbench.engine.experiment import Experiment
from privbench.errors import PrivbenchError
from privbench.pipeline import run_shared, training_hash
from privbench.testing import tiny_config

TIMINGS = {"wall_s", "train_s", "attack_s", "reconstruction_file"}
FAST = {"iters": 4, "restarts": 2}


CHEAP = {  # each attack at a few iterations
    **{n: FAST for n in ("dlg", "idlg", "ig")},
    "generator": {"iters": 3},
    "bn-inversion": {"iters": 3, "samples_per_class": 1},
    "policy-inference": {"aux_per_class": 8},
}


def _params(names) -> dict:
    return {n: dict(CHEAP.get(n.partition("@")[0], {})) for n in names}


def _with(cfg, *names: str):
    """``cfg`` attacked by ``names`` at a few iterations each."""
    return replace(cfg, attack=replace(cfg.attack, names=names, params=_params(names)))


def _comparable(row) -> dict:
    d = json.loads(json.dumps(row.to_dict(), default=str))
    return {k: v for k, v in d.items() if k not in TIMINGS}


# (the first run's attacks, its companion's): the DLG family and the artifact attacks,
# then Inverting Gradients in the forms the method's threat model allows.
CASES = {
    "fedavg": (tiny_config(), ("dlg", "idlg"), ("ig",)),
    "fedmix": (tiny_config(method="fedmix"), ("dlg@enumerate", "averaged-data"), ("ig@enumerate",)),
    "fedavp": (
        tiny_config(method="fedavp"),
        ("dlg@identity", "policy-inference"),
        ("ig@identity", "ig@sample"),
    ),
    "cvae-uniform": (
        tiny_config(method="cvae-uniform", method_params={"cvae_rounds": 1, "cvae_epochs": 1}),
        ("dlg", "generator"),
        ("ig",),
    ),
    "dp-sgd": (tiny_config(defenses=("dp-sgd",)), ("dlg",), ("ig",)),
    "zdac": (
        tiny_config(
            method="zdac",
            model="cnn-bn",
            method_params={"zsdg_iters": 5, "zsdg_per_class": 2},
            fed=dict(rounds=3),
            attack=dict(round=2),
        ),
        ("idlg", "bn-inversion"),
        ("ig",),
    ),
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n == "fedavg" else pytest.mark.slow) for n in CASES],
)
def test_runs_that_differ_in_their_attacks_train_once_and_write_the_separate_runs_rows(
    name, monkeypatch
):
    base, first, second = CASES[name]
    a, b = _with(base, *first), _with(base, *second)
    assert training_hash(a.resolve()) == training_hash(b.resolve())
    # The first configuration's attacks run as in a run of its own (same code, same
    # order); the companion's run after them, on the state they left: compared.
    apart = privbench.run(b)
    trainings = []
    real = Experiment.train
    monkeypatch.setattr(Experiment, "train", lambda self: trainings.append(1) or real(self))
    first_rows, companion = run_shared([a, b])
    assert trainings == [1]
    for rows in (first_rows, companion):
        assert [r.status for r in rows] == ["ok"] * len(rows), [r.error for r in rows]
    assert [_comparable(r) for r in companion] == [_comparable(r) for r in apart]
    assert {r.accuracy for r in first_rows} == {apart[0].accuracy}
    assert first_rows[0].train_s == companion[0].train_s  # one training, in both rows


def test_the_training_hash_sees_everything_but_the_attacks_names_and_parameters():
    def h(**kw):
        return training_hash(tiny_config(**kw).resolve())

    dlg = h(attack=dict(names=("dlg",)))
    assert dlg == h(attack=dict(names=("ig", "idlg"), params={"ig": {"iters": 3}}))
    assert dlg != h()  # no attack: no victims forced into the attacked round
    for other in (
        dict(attack=dict(names=("dlg",), round=1)),
        dict(attack=dict(names=("dlg",), victims=2)),
        dict(attack=dict(names=("dlg",), batch=2)),
        dict(attack=dict(names=("dlg",)), seed=1),
        dict(attack=dict(names=("dlg",)), method="fedmix"),
    ):
        assert h(**other) != dlg, other


def test_configurations_that_train_differently_are_refused():
    a = tiny_config(attack=dict(names=("dlg",)))
    with pytest.raises(PrivbenchError, match="train differently"):
        run_shared([a, replace(a, seed=1)])


def test_a_configuration_the_case_rejects_is_an_error_row_and_the_others_run(tmp_path):
    ok = _with(tiny_config(), "idlg")
    # BatchNorm inversion needs a BatchNorm model: the case refuses it before training.
    bad = replace(ok, attack=AttackConfig(names=("bn-inversion",)))
    store = ResultStore(str(tmp_path))
    rejected, ran = run_shared([bad, ok], store=store)
    assert [r.status for r in rejected] == ["error"]
    assert "BatchNorm" in rejected[0].error and rejected[0].attack == "bn-inversion"
    assert rejected[0].config_hash == bad.resolve().hash()
    assert [r.status for r in ran] == ["ok"]
    assert len(store.read()) == 2


def test_a_sweep_runs_a_case_and_its_companion_as_one_training(tmp_path):
    from privbench.results.sweep import expand, run_sweep, together

    grid = {
        "sweep": {"dataset": "digits", "rounds": 2, "clients": 4, "partition": "iid"},
        "grid": {"seed": [0]},
        "case": [
            {"method": "fedavg", "attack": ["idlg"], "idlg.iters": 3, "idlg.restarts": 1},
            {"method": "fedavg", "attack": ["ig"], "ig.iters": 3, "ig.restarts": 1},
            {"method": "localmix", "attack": ["idlg"], "idlg.iters": 3, "idlg.restarts": 1},
        ],
    }
    points, problems = expand(grid)
    assert not problems
    groups = together(points)
    assert [[p.index for p in g] for g in groups] == [[0, 1], [2]]
    summary = run_sweep(grid, out=str(tmp_path), workers=1, threads=1)
    assert (summary.ran, summary.failed) == (3, 0)
    rows = ResultStore(str(tmp_path)).read()
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    # One training per group: the companions' rows carry the same train_s, the other its own.
    train_s = {r["config_hash"]: r["train_s"] for r in rows}
    assert set(train_s) == {p.config_hash for p in points}
    case, companion, other = (train_s[p.config_hash] for p in points)
    assert case == companion != other
    again = run_sweep(grid, out=str(tmp_path), workers=1, threads=1)
    assert (again.ran, len(ResultStore(str(tmp_path)).read())) == (0, 3)


def test_a_killed_shared_training_resumes_for_whichever_point_is_rerun(tmp_path, monkeypatch):
    """The checkpoint is the training's: a sweep killed mid-training whose rerun holds
    only the companion (the case stored meanwhile by another sweep) resumes it."""
    from tests.test_checkpoint import Killed, _comparable, _kill_after_first_save

    base = tiny_config(fed=dict(rounds=3))
    a, b = _with(base, "idlg"), _with(base, "ig")
    straight = privbench.run(b)
    store = ResultStore(str(tmp_path))
    saved = _kill_after_first_save(monkeypatch)
    with pytest.raises(Killed):
        run_shared([a, b], store=store, checkpoint_every=0)
    assert saved == [1] and store.read() == []
    (resumed,) = run_shared([b], store=store, checkpoint_every=0)
    assert saved == [1, 2]  # went on from round 1
    assert [_comparable(r) for r in resumed] == [_comparable(r) for r in straight]
    assert not list((tmp_path / "checkpoints").iterdir())


def test_each_configurations_attacks_get_the_random_state_training_left():
    """A plugin attack may draw from torch's global generator: the companion's draws are
    those a run of its own gets, whatever the attacks before it drew (restored)."""
    import torch

    from privbench.attacks import Attack, Reconstruction

    @privbench.register_attack(
        "global-draw",
        params=(privbench.Param("draws", int, 1, "extra global draws first", low=0),),
        description="test: noise images from torch's global generator",
    )
    class GlobalDraw(Attack):
        consumes = ("gradient", "update")

        def reconstruct(self, observation, *, generator, seen=()):
            ctx = observation.context
            for _ in range(self.params["draws"]):
                torch.rand(100)
            lo, hi = ctx.value_range
            return Reconstruction(lo + (hi - lo) * torch.rand(ctx.num_images, *ctx.input_shape))

    try:
        base = tiny_config()
        a = replace(
            base, attack=AttackConfig(names=("global-draw",), params={"global-draw": {"draws": 7}})
        )
        b = replace(base, attack=AttackConfig(names=("global-draw",)))
        (apart,) = privbench.run(b)
        (first,), (companion,) = run_shared([a, b])
        assert companion.psnr == apart.psnr and companion.mse == apart.mse
        assert first.mse != apart.mse  # a's extra draws moved its own noise
    finally:
        privbench.registries()["attack"].entries.pop("global-draw")


@pytest.mark.slow
def test_rejoin_runs_a_pair_that_trained_apart_again_as_one_training(tmp_path, capsys):
    """A case and its companion run on machines whose float rounding differs train apart
    (their accuracies differ): the report cannot join their worst cases and says so;
    ``--rejoin`` runs the pair again as one training, whose rows replace the old."""
    import warnings

    from privbench.cli.main import main as cli
    from privbench.results.companions import split_trainings
    from privbench.results.report import latest, worst_case_view
    from privbench.results.sweep import expand, load_grid, run_sweep

    grid_text = """
[sweep]
dataset = "digits"
rounds = 2
clients = 4
partition = "iid"
"idlg.iters" = 3
"idlg.restarts" = 1
"ig.iters" = 3
"ig.restarts" = 1

[grid]
seed = [0]

[[case]]
method = "fedavg"
attack = ["idlg"]

[[case]]
method = "fedavg"
attack = ["ig"]
"""
    (tmp_path / "grid.toml").write_text(grid_text)
    out = tmp_path / "out"
    grid = load_grid(tmp_path / "grid.toml")
    case, companion = expand(grid)[0]
    # The case ran on one machine, the companion later on another (a changed accuracy).
    privbench.run(case.config, out=str(out))
    (row,) = privbench.run(companion.config)
    store = ResultStore(str(out))
    store.append([{**row.to_dict(), "accuracy": row.accuracy + 0.01}])
    assert split_trainings(store.read()) == {case.config_hash, companion.config_hash}
    with pytest.warns(UserWarning, match="--rejoin"):
        worst_case_view(store.read())
    assert run_sweep(grid, out=str(out), workers=1, threads=1).ran == 0  # both settled

    argv = ["sweep", str(tmp_path / "grid.toml"), "--out", str(out), "--dry-run", "--rejoin"]
    assert cli(argv) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["again"] * 2
    summary = run_sweep(grid, out=str(out), workers=1, threads=1, rejoin=True)
    assert (summary.ran, summary.failed) == (2, 0)
    rows = store.read()
    assert len(rows) == 4  # the old rows stay in the store; the new ones replace them
    new = latest(rows)
    assert len({r["accuracy"] for r in new}) == 1 and len({r["train_s"] for r in new}) == 1
    assert not split_trainings(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (joined,) = worst_case_view(rows)
    assert joined["merged_runs"] == sorted([case.config_hash, companion.config_hash])
    assert run_sweep(grid, out=str(out), workers=1, threads=1, rejoin=True).ran == 0
    # A stored run of the same training under a configuration the grid no longer holds
    # (another attack list, trained on another machine) cannot be rejoined: it sends
    # nothing round again.
    stale = {**new[0], "config_hash": "f" * 16, "attack": "dlg", "accuracy": 0.5}
    store.append([stale])
    assert split_trainings(store.read())
    assert run_sweep(grid, out=str(out), workers=1, threads=1, rejoin=True).ran == 0
