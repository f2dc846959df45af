"""The MNIST headline grid: valid, every method, and DP knobs that are the validation
search's winners (benchmarks/headline_dp.py), not typed-in values."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from privbench import registries
from privbench.results import ResultStore
from privbench.results.report import is_default_run
from privbench.results.sweep import expand, load_grid

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "benchmarks" / "headline_mnist.toml"
sys.path.insert(0, str(ROOT / "benchmarks"))

import headline_dp  # noqa: E402


def test_mnist_headline_covers_every_method_with_the_dlg_family_and_its_ig_companion():
    points, problems = expand(load_grid(GRID))
    assert problems == []
    assert {p.config.method for p in points} == set(registries()["method"].names())
    assert {p.config.dataset for p in points} == {"mnist"}
    assert {p.options["seed"] for p in points} == {0, 1, 2}
    attackers: dict[tuple, set] = {}
    for p in points:
        attackers.setdefault((p.config.method, p.config.model), set()).add(p.attacks)
    assert all(len(a) == 2 for a in attackers.values())  # the DLG family and its IG companion
    # FedAvg on cnn-bn, Fed-ZDAC/ZDAS's like-for-like baseline, runs without a defense
    assert {p.config.defenses for p in points if p.config.model == "cnn-bn"} == {()}
    # seed-major: a grid cut short covers every cell with seed 0 first
    seeds = [p.options["seed"] for p in points]
    assert seeds == sorted(seeds)
    # both DP defenses are calibrated to the same target
    dp = [p.config.defense_params for p in points if p.config.defenses in (("dp-sgd",),)]
    assert dp and all(d["dp-sgd"]["target_epsilon"] == headline_dp.TARGET_EPSILON for d in dp)


@pytest.mark.parametrize(
    "grids", [("headline_mnist.toml",), ("headline.toml", "headline_more.toml")]
)
def test_every_headline_point_has_an_ig_companion_of_the_same_training(grids):
    from headline_ig import ig_family, is_companion

    from privbench.results.companions import training_key

    points = [p for g in grids for p in expand(load_grid(ROOT / "benchmarks" / g))[0]]
    companion = [p for p in points if is_companion(p.attacks)]
    first = [p for p in points if p not in companion]
    assert len(companion) == len(first)

    def key(p):
        return training_key({"config": p.config.resolve().to_dict()})

    by_training = {key(p): p for p in companion}
    for p in first:
        twin = by_training[key(p)]  # the same run, seed and attacked round
        assert twin.attacks == ig_family(list(p.attacks))


@pytest.mark.parametrize(
    "dataset, grids",
    [("mnist", ("headline_mnist.toml",)), ("digits", ("headline.toml", "headline_more.toml"))],
)
def test_headline_dp_knobs_are_the_validation_searchs_winners(dataset, grids):
    rows = [r for r in ResultStore(headline_dp.OUT).read() if is_default_run(r)]
    grid = headline_dp.searched(dataset)
    assert {headline_dp.knobs(r, dataset) for r in rows} & grid == grid  # all of it is in
    best = headline_dp.winners(rows, dataset)
    points = [p for g in grids for p in expand(load_grid(ROOT / "benchmarks" / g))[0]]
    assert {p.config.dataset for p in points} == {dataset}
    for defense, key in (("dp-sgd", "max_grad_norm"), ("client-dp", "clip")):
        runs = [p.config for p in points if p.config.defenses == (defense,)]
        assert {c.defense_params[defense][key] for c in runs} == {best[defense][0]}
        assert {c.defense_params[defense]["target_epsilon"] for c in runs} == {8.0}
    record = [p.config for p in points if p.config.defenses == ("dp-sgd",)]
    assert {c.fed.batch_size for c in record} == {best["dp-sgd"][1]}
    others = [p.config for p in points if p.config.defenses != ("dp-sgd",)]
    assert {c.fed.batch_size for c in others} == {10}


def test_headline_dp_winner_rule_on_hand_made_rows():
    """Best validation accuracy wins, a failed run scores 0, a tie takes the smaller C,
    and rows outside the search (test-set runs, other budgets) are ignored."""

    def row(defense, clip, acc, batch=10, status="ok", dataset="mnist:validation", eps=8.0):
        key = "max_grad_norm" if defense == "dp-sgd" else "clip"
        return {
            "dataset": dataset,
            "status": status,
            "accuracy": acc,
            "config": {
                "defenses": [defense],
                "defense_params": {defense: {key: clip, "target_epsilon": eps}},
                "fed": {"batch_size": batch},
            },
        }

    rows = [
        row("dp-sgd", 0.1, 0.5),
        row("dp-sgd", 1.0, 0.7, batch=50),
        row("dp-sgd", 3.0, 0.9, status="error"),
        row("dp-sgd", 0.3, 0.99, dataset="mnist"),  # a test-set run: not the search
        row("dp-sgd", 0.3, 0.99, eps=3.0),  # another budget
        row("client-dp", 1.0, 0.4),
        row("client-dp", 0.3, 0.4),
    ]
    assert headline_dp.winners(rows, "mnist") == {"dp-sgd": (1.0, 50), "client-dp": (0.3,)}
    # a batch outside the dataset's search (digits: 10 and 32) does not compete
    digits = [{**r, "dataset": "digits:validation"} for r in rows[:2]]
    assert headline_dp.winners(digits, "digits") == {"dp-sgd": (0.1, 10)}
    assert headline_dp.winners(rows, "digits") == {}


def _grid_points(*grids: str):
    return [p for g in grids for p in expand(load_grid(ROOT / "benchmarks" / g))[0]]


def _check_clients_take_the_batches(points) -> int:
    """Build each distinct (data, partition, seed, batch) case of the grid: a batch larger
    than a client's data is refused there, at run time in the sweep."""
    from privbench.engine.case import Case

    seen = set()
    for p in points:
        c = p.config
        key = (c.dataset, str(c.dataset_params), c.partition, c.seed, c.fed.batch_size)
        if key not in seen:
            seen.add(key)
            Case(c)  # raises ParameterError when a client is smaller than the batch
    return len(seen)


def test_every_client_of_the_digits_headline_takes_its_batch():
    assert _check_clients_take_the_batches(_grid_points("headline.toml", "headline_more.toml"))


def test_every_client_of_the_mnist_headline_takes_its_batch(data_root, monkeypatch):
    monkeypatch.setenv("PRIVBENCH_DATA_ROOT", data_root)
    assert _check_clients_take_the_batches(_grid_points("headline_mnist.toml")) == 6


def test_the_ig_form_of_a_dlg_family_list_by_hand():
    from headline_ig import ig_family

    assert ig_family(["dlg", "idlg", "averaged-data"]) == ("ig",)
    assert ig_family(["dlg", "idlg", "dlg@enumerate", "averaged-data"]) == ("ig", "ig@enumerate")
    fedavp = ["dlg@sigmoid", "idlg@sigmoid", "dlg@identity", "dlg@sample", "policy-inference"]
    assert ig_family(fedavp) == ("ig", "ig@identity", "ig@sample")  # IG has its own box
    assert ig_family(["generator", "synthetic-nn"]) == ()


def test_the_progress_table_counts_a_training_a_case_and_its_companion_shared_once(
    tmp_path, monkeypatch
):
    """A sweep trains a case and its companion once, and both rows report that
    training's ``train_s``: the compute column counts it once, with the case."""
    import pages

    from privbench import ResultStore

    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[sweep]\ndataset = "digits"\nrounds = 1\nclients = 4\npartition = "iid"\n'
        '[grid]\nseed = [0]\n[[case]]\nmethod = "fedavg"\nattack = ["dlg"]\n'
        '[[case]]\nmethod = "fedavg"\nattack = ["ig"]\n'
        '[[case]]\nmethod = "localmix"\nattack = ["ig"]\n'
    )
    points = expand(load_grid(grid))[0]
    # hours: (wall, train); the first two shared one training, the third trained alone
    timings = [(1.0, 0.5), (0.7, 0.5), (0.3, 0.1)]
    rows = [
        {
            "method": p.config.method,
            "attack": name,
            "seed": 0,
            "status": "ok",
            "config_hash": p.config_hash,
            "config": p.config.to_dict(),
            "wall_s": wall * 3600,
            "train_s": train * 3600,
        }
        for p, (wall, train) in zip(points, timings, strict=True)
        for name in p.attacks
    ]
    ResultStore(str(tmp_path / "results" / "mine")).append(rows)
    monkeypatch.setattr(pages, "RESULTS", tmp_path / "results")
    monkeypatch.setitem(pages.HEADLINE_GRIDS, "mine", (grid,))
    table = pages.headline_progress("mine")()
    assert "| DLG family and artifact attacks | 1 of 1 | 1.0 h |" in table
    assert "| IG companions | 2 of 2 | 0.5 h |" in table  # 0.7 - 0.5 shared, + 0.3


def test_the_headline_table_counts_the_victims_each_cell_rebuilt_above_30_db(tmp_path, monkeypatch):
    """One victim per run: a cell of three seeds at 40, 10 and 31 dB rebuilt two; a victim
    rebuilt as the augmented view it trained on (12 dB as is, 45 dB so) counts; a run
    whose attack reports no PSNR is out of the count, and a cell of none says '-'."""
    import pages

    from privbench import ResultStore

    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[sweep]\ndataset = "digits"\nrounds = 1\nclients = 4\npartition = "iid"\n'
        '[grid]\nseed = [0, 1, 2]\n[[case]]\nmethod = "fedavg"\nattack = ["dlg"]\n'
        '[[case]]\nmethod = "localmix"\nattack = ["dlg"]\n'
        '[[case]]\nmethod = "randaugment"\nattack = ["dlg"]\n'
    )
    points = expand(load_grid(grid))[0]
    psnr = {("fedavg", 0): 40.0, ("fedavg", 1): 10.0, ("fedavg", 2): 31.0}
    psnr.update({("randaugment", s): 12.0 for s in range(3)})
    seen = {("randaugment", 0): 45.0, ("randaugment", 1): 14.0, ("randaugment", 2): 9.0}
    rows = [
        {
            "method": p.config.method,
            "model": p.config.model,
            "defense": "none",
            "attack": "dlg",
            "seed": p.config.seed,
            "status": "ok",
            "config_hash": p.config_hash,
            "config": p.config.to_dict(),
            "accuracy": 0.5,
            "psnr": psnr.get((p.config.method, p.config.seed)),
            "psnr_augmented": seen.get((p.config.method, p.config.seed)),
        }
        for p in points
    ]
    ResultStore(str(tmp_path / "results" / "mine")).append(rows)
    monkeypatch.setattr(pages, "RESULTS", tmp_path / "results")
    monkeypatch.setitem(pages.HEADLINE_GRIDS, "mine", (grid,))
    lines = pages.headline_table("mine")().splitlines()
    assert "| victims > 30 dB | runs |" in lines[0]
    assert lines[2].startswith("| fedavg | lenet-sigmoid | none | dlg | 2/3 | 3 | 0 |")
    assert lines[3].startswith("| localmix | lenet-sigmoid | none | dlg | - | 3 | 0 |")
    assert lines[4].startswith("| randaugment | lenet-sigmoid | none | dlg | 1/3 | 3 |")
