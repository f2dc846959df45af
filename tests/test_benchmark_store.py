"""The benchmark scripts' resumable row store (benchmarks/_store.py)."""

import importlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _store import RowStore  # noqa: E402


def test_a_rerun_sees_every_row_once_and_a_cut_line_is_measured_again(tmp_path):
    path = tmp_path / "rows.jsonl"
    store = RowStore(path, lambda r: (r["point"],))
    store.add({"point": 1, "psnr": 30.0})
    store.add({"point": 2, "psnr": 31.0})
    with path.open("a") as f:
        f.write('{"point": 3, "ps')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match=r"rows.jsonl: skipped 1 line.*line 3 \(torn"):
        again = RowStore(path, lambda r: (r["point"],))
    assert (1,) in again and (2,) in again and (3,) not in again
    again.add({"point": 3, "psnr": 32.0})  # starts on a line of its own
    with pytest.warns(UserWarning, match=r"rows.jsonl: skipped 1 line.*line 3 \(not JSON"):
        final = RowStore(path, lambda r: (r["point"],))
    assert [r["psnr"] for r in final] == [30.0, 31.0, 32.0]


def test_the_attack_band_harness_trains_once_attacks_per_variant_and_resumes(tmp_path):
    from attack_bands import Setting, measure, table

    settings = [Setting("tiny digits", "digits", "lenet-sigmoid", 1, 1, 1, 0, 2)]
    variants = {
        "idlg: 1 start": ("idlg", {"restarts": 1, "iters": 5}),
        "idlg: 2 restarts": ("idlg", {"restarts": 2, "iters": 5}),
    }
    store = tmp_path / "bands.jsonl"
    rows = measure(1, list(variants), settings, store, variants)
    assert [(r["variant"], r["victims"], r["label_acc"]) for r in rows] == [
        ("idlg: 1 start", 2, 1.0),  # iDLG's label rule is exact at B = 1
        ("idlg: 2 restarts", 2, 1.0),
    ]
    assert all(len(r["victim_psnr"]) == 2 and r["seed"] == 0 for r in rows)
    again = measure(1, list(variants), settings, store, variants)  # nothing to measure
    assert again == rows and len(store.read_text().splitlines()) == 2
    assert "| tiny digits | idlg: 1 start |" in table(rows)


def test_the_attack_band_harness_covers_every_setting_before_it_adds_a_seed(tmp_path):
    from attack_bands import Setting, measure

    settings = [
        Setting(f"tiny digits B={b}", "digits", "lenet-sigmoid", 1, b, 1, 0, 1) for b in (1, 2)
    ]
    variants = {"idlg": ("idlg", {"restarts": 1, "iters": 2})}
    store = tmp_path / "bands.jsonl"
    measure(2, list(variants), settings, store, variants)
    written = [json.loads(line) for line in store.read_text().splitlines()]
    assert [(r["setting"][-3:], r["seed"]) for r in written] == [
        ("B=1", 0),
        ("B=2", 0),
        ("B=1", 1),
        ("B=2", 1),
    ]


@pytest.mark.slow
def test_the_fedmix_reproduction_runs_every_method_once_and_resumes(tmp_path, monkeypatch):
    repro = _reproduction("fedmix")

    from privbench import ResultStore

    monkeypatch.setattr(repro, "LAMBDAS", (0.05,))
    todo = repro.points(["digits"], ["shards-2"], 1, rounds=2, train_size=0, clients=4)
    assert len(todo) == 1 + 4 * len(repro.LAMBDAS)  # FedAvg once, the others per λ
    store = ResultStore(str(tmp_path))
    repro.measure(todo, store)
    rows = store.read()
    assert len(rows) == len(todo) and all(r["status"] == "ok" for r in rows)
    repro.measure(todo, store)  # resumes: nothing to run
    assert len(store.read()) == len(todo)
    text = repro.table(rows)
    assert "| digits | shards-2 | fedmix | 0.05 | - | 1 |" in text
    assert "| digits | shards-2 | fedavg | - | - | 1 |" in text
    sweeps = repro.sweep_points(1, rounds=2, train_size=0)
    assert len(sweeps) == 2 * 2 + 2 * 2 + 3 and len({c.hash() for _, c in sweeps}) == 11
    prox = [c for label, c in sweeps if label[-1] == "fedprox"]
    assert all(c.fed.algorithm == "fedprox" for c in prox)
    swept = [
        {**r, "config": {**r["config"], "method_params": {"lam": 0.05, "mean_size": 10}}}
        for r in rows
        if r["method"] == "fedmix"
    ]
    assert "| fedmix | 0.05 | M_k 10 | 1 |" in repro.table(rows + swept)
    assert repro.verdicts(rows + swept) == repro.verdicts(rows)  # sweeps stay out of them


@pytest.mark.slow
def test_the_dp_reproduction_searches_on_validation_then_tests_the_best(tmp_path, monkeypatch):
    repro = _reproduction("dp")

    from privbench import ResultStore
    from privbench.data.datasets import load_dataset

    monkeypatch.setattr(repro, "EPSILONS", (8.0,))
    monkeypatch.setattr(
        repro, "RECORD_GRID", {"max_grad_norm": (1.0,), "lr": (0.05, 0.5), "batch_size": (32,)}
    )
    store = ResultStore(str(tmp_path))
    kw = {"rounds": 1, "train_size": 0}
    validation = load_dataset("digits").validation_split(0.1, seed=0)
    repro.measure(repro.search("record", "digits", **kw), store, validation)
    first = store.read()
    assert len(first) == 2 and all(r["dataset"] == "digits:validation" for r in first)
    # The widening: at the first stage's C, the learning rate x batch x rounds; the
    # point the first stage ran (lr 0.5, batch 32, 1 round) is not run again.
    monkeypatch.setattr(
        repro, "WIDE_GRID", {"lr": (0.5,), "batch_size": (32, 64), "rounds": (1, 2)}
    )
    wide = repro.widen(first, "digits", **kw)
    assert [k[2:] for k, _ in wide] == [(0.5, 32, 1), (0.5, 32, 2), (0.5, 64, 1), (0.5, 64, 2)]
    clip = repro.best(first)[("record", 8.0)][0]
    assert all(k[:2] == (8.0, clip) for k, _ in wide)
    repro.measure(wide, store, validation)
    searched = store.read()
    assert len(searched) == 5 and all(r["dataset"] == "digits:validation" for r in searched)
    scores = {repro._knobs(r)[2:]: r["accuracy"] for r in searched}
    chosen = repro.best(searched)
    assert list(chosen) == [("record", 8.0)]
    assert scores[chosen[("record", 8.0)]] == max(scores.values())
    # before its finals the winner is a table line with no runs, not a missing line
    assert "| 0 | (test runs to come) | - |" in repro.table(searched)
    # two learning rates were tried: whichever won sits at an end of the range
    (edge,) = repro.edges(searched)
    assert edge.startswith("- record level, target ε 8: ") and "lr " in edge
    assert "(largest of 0.05, 0.5)" in edge or "(smallest of 0.05, 0.5)" in edge
    repro.measure(repro.finals(searched, 2, "digits", **kw), store, None)
    final = [r for r in store.read() if r["dataset"] == "digits"]
    assert len(final) == 2 and all(r["epsilon_record"] <= 8.0 + 1e-6 for r in final)
    # the finals run the chosen schedule (rounds are a knob), not ``kw``'s
    assert {r["rounds"] for r in final} == {chosen[("record", 8.0)][3]}
    assert "| record | target ε 8 |" in repro.table(store.read())
    # Where the accuracy goes at ε 8: no DP, clipping alone, 10 clients, one client at
    # their batch and at the ten clients' batch together.
    repro.measure(repro.why_points(searched, 1, "digits", **kw), store, None)
    why = [line.split(" | ") for line in repro.why_table(store.read()).splitlines()[2:]]
    assert [cells[0] for cells in why] == [
        "| no DP (FedAvg at its tuned lr), 10 clients",
        "| clipping only (σ 0), 10 clients",
        "| DP-SGD ε 8, 10 clients",
        "| DP-SGD ε 8, 1 client",
        "| DP-SGD ε 8, 1 client, batch 320",
    ]
    # one client at batch 320 samples at the ten clients' rate for their steps: their σ
    assert why[4][4] == why[2][4] != why[3][4] and float(why[2][4]) > 0
    assert "| record | target ε 8 | C 1, lr" in repro.page(store.read())
    assert len(repro.table(store.read()).splitlines()) == 3  # the ablation stays out of it


def _reproduction(name: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module(name)


@pytest.mark.slow
def test_the_fedmix_m_k_sweep_shares_more_than_one_mean_per_client(data_root, monkeypatch):
    """Each swept M_k splits every client of the sweep into at least two means, so no
    sweep line is the grid's one mean per client again (M_k = 60 was, on clients of
    90-103 images); the means are what the clients upload."""
    import torch

    from privbench.augmenters.fedmix import chunk_means
    from privbench.engine.experiment import Experiment

    repro = _reproduction("fedmix")
    monkeypatch.setenv("PRIVBENCH_DATA_ROOT", data_root)
    swept = {
        label[-1]: cfg
        for label, cfg in repro.sweep_points(1, rounds=50, train_size=12000)
        if label[-1].startswith("M_k") and label[2] == "fedmix"
    }
    assert sorted(swept) == sorted(f"M_k {m}" for m in repro.SWEEP_MEAN_SIZES)
    for label, cfg in swept.items():
        exp = Experiment(cfg)
        m = cfg.method_params["mean_size"]
        for c in exp.clients:
            x, y = exp.client_data(c.client_id)
            xbar, _ = chunk_means(x, y, exp.data.num_classes, m, torch.Generator())
            assert len(xbar) >= 2, f"{label}: client {c.client_id} shares one mean"


@pytest.mark.slow
def test_the_fedzda_reproduction_covers_each_cell_then_resumes(tmp_path):
    from dataclasses import replace

    from privbench import ResultStore

    repro = _reproduction("fedzda")
    todo = [
        (label, replace(cfg, fed=replace(cfg.fed, clients=4, fraction=0.5, local_epochs=1)))
        for label, cfg in repro.points(["digits"], ["multimodal"], 2, rounds=2, train_size=0)
    ]
    assert [label[-1] for label, _ in todo] == [0, 0, 0, 1, 1, 1]  # every seed 0 first
    assert all(c.method_params == {"start_round": 1} for _, c in todo if c.method != "fedavg")
    store = ResultStore(str(tmp_path))
    repro.measure(todo[:3], store)
    rows = store.read()
    assert {r["method"] for r in rows} == {"fedavg", "zdac", "zdas"}
    repro.measure(todo[:3], store)  # resumes: nothing to run
    assert len(store.read()) == 3
    text = repro.table(rows)
    assert "| digits | multimodal | zdac | 1 |" in text
    fed = next(r for r in rows if r["method"] == "fedavg")
    assert f"{fed['client_acc_var'] * 1e4:.2f}" in text  # variance shown in %², as the paper
    assert len(repro.verdicts(rows)) == 2


@pytest.mark.slow
def test_the_fedavp_reproduction_records_curves_and_a_verdict(tmp_path):
    from privbench import ResultStore

    repro = _reproduction("fedavp")
    todo = repro.points(["digits"], 1, rounds=2, train_size=0)
    store = ResultStore(str(tmp_path))
    repro.measure(todo, store)
    rows = store.read()
    assert sorted(r["method"] for r in rows) == sorted(repro.METHODS)
    assert all(len(r["history"]) == 2 for r in rows)  # a curve: every round evaluated
    assert "| digits | fedavp | 1 | 2 |" in repro.table(rows)
    (verdict,) = repro.verdicts(rows)
    assert verdict.startswith("- digits, 2 rounds: FedAvP")  # not the grid's budget
    # The why ablation: FedAvP with the scores normalised in the loss, a line of its
    # own in the table and the curves, no vote in the verdict.
    (why,) = repro.why_points(1, dataset="digits", rounds=2, train_size=0)
    assert why[1].resolve().method_params["score_norm"] is True
    repro.measure([why], store)
    rows = store.read()
    assert "| digits | fedavp (score-normalised loss) | 1 | 2 |" in repro.table(rows)
    assert repro.verdicts(rows) == [verdict]
    lines = sorted((r["budget"], r["method"]) for r in repro.curve_rows(rows))
    assert lines == sorted(
        ("2 rounds", m) for m in [*repro.METHODS, "fedavp (score-normalised loss)"]
    )


def test_the_fedavp_reproduction_tables_each_budget_apart():
    """A longer run (``--rounds 1000``) is its own line and its own verdict, never
    averaged with the grid's 100-round runs."""
    repro = _reproduction("fedavp")

    def row(method, rounds, acc):
        history = [{"round": rounds, "accuracy": acc}]
        config = {"method_params": {}}
        return {
            "status": "ok",
            "dataset": "digits",
            "method": method,
            "rounds": rounds,
            "accuracy": acc,
            "macro_f1": acc,
            "history": history,
            "config": config,
        }

    rows = [row("fedavg", 100, 0.97), row("fedavp", 100, 0.95)]
    rows += [row("fedavg", 1000, 0.97), row("fedavp", 1000, 0.98)]
    table = repro.table(rows)
    assert "| digits | fedavp | 1 | 100 | 0.95 | -0.020 |" in table
    assert "| digits | fedavp | 1 | 1000 | 0.98 | +0.010 |" in table
    assert repro.verdicts(rows) == [
        "- digits: FedAvP 0.950 vs fedavg 0.970: **does not hold**",
        "- digits, 1,000 rounds: FedAvP 0.980 vs fedavg 0.970: **holds**",
    ]
    # --methods splits a long budget over processes: FedAvP alone, seed-major
    todo = repro.points(["digits"], 2, ("fedavp",), rounds=1000, train_size=0)
    assert [k for k, _ in todo] == [("digits", "fedavp", 0), ("digits", "fedavp", 1)]
    assert todo[0][1].fed.rounds == 1000
    # the curves: one panel per budget, the methods' lines in each
    assert {(r["budget"], r["method"]) for r in repro.curve_rows(rows)} == {
        ("100 rounds", "fedavg"),
        ("100 rounds", "fedavp"),
        ("1,000 rounds", "fedavg"),
        ("1,000 rounds", "fedavp"),
    }


@pytest.mark.slow
def test_the_cvae_reproduction_runs_the_thesis_protocols_and_resumes(tmp_path):
    repro = _reproduction("cvae")
    store = RowStore(tmp_path / "cvae.jsonl", repro.key)
    kw = {"rounds": 1, "train_size": 0, "dataset": "digits", "clients": 4}
    repro.measure([0.5], 1, store, **kw)
    rows = list(store)
    variants = {r["variant"] for r in rows}
    assert {"fedavg", "pre-trained", "local fine-tune", "cvae-finetune"} <= variants
    uniform = [r for r in rows if r["method"] == "cvae-uniform"]
    # k as a share of the mean client's real training images (the thesis' 100 / 500 of 600)
    assert sorted(r["k"] for r in uniform) == [48, 240]
    assert all(0 <= r["local_f1"] <= 1 for r in rows if "error" not in r)
    # each run's compute, for the cost table (the pre-trained model's is in its run's)
    timed = {r["variant"] for r in rows if r.get("wall_s", -1) > 0}
    assert timed == variants - {"pre-trained"}
    repro.measure([0.5], 1, store, **kw)  # resumes: nothing to run
    assert len(store.store.read(required=())) == len(rows) == 8
    assert "| digits | 0.5 | local fine-tune |" in repro.table(rows)
    (claims,) = repro.claims(rows)
    assert "minority − uniform" in claims


def test_the_fedmix_taylor_diagnostic_records_each_epoch_and_resumes(tmp_path):
    from privbench.tuning import default_lr

    repro = _reproduction("fedmix_taylor")
    out = tmp_path / "taylor.jsonl"
    args = ["--dataset", "digits", "--seeds", "1", "--epochs", "2", "--out", str(out)]
    repro.main([*args, "--lambdas", "0.05", "0.2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["lam"], len(r["history"])) for r in rows] == [(0.05, 3), (0.2, 3)]
    assert all(r["wall_s"] > 0 for r in rows)
    start = rows[0]["history"][0]
    # At a model's start the surrogate is its mixup loss to first order: they sit close.
    assert abs(start["surrogate"] - start["mixup_loss"]) < 0.05
    repro.main([*args, "--lambdas", "0.05", "0.2"])  # resumes: nothing measured twice
    assert len(out.read_text().splitlines()) == 2
    lines = repro.verdicts(rows)
    assert len(lines) == 2 and "dead network" in lines[1]
    # the rate of the FedMix reproduction's digits shards: never searched, the default
    assert {r["lr"] for r in rows} == {default_lr("digits", "cnn")[0]}
    assert f"| {rows[0]['lr']:g} | 0.2 | 0 | 2 |" in repro.table(rows)  # the last epoch shows
    repro.main([*args, "--lambdas", "0.05", "--lr", "0.01"])  # another rate: a row of its own
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["lam"], r["lr"]) for r in again[2:]] == [(0.05, 0.01)]
    assert (
        len(repro.verdicts(again)) == 3 and "λ = 0.05, lr 0.01 (1 seed," in repro.verdicts(again)[0]
    )
    # Hand-worked: an input gradient 2.0 -> 0.5 -> 1.0 ends at 0.5x its start, 2x its low.
    norms = [2.0, 0.5, 1.0]
    hist = [
        {"epoch": e, "surrogate": 0.1, "taylor": -0.2, "input_grad_norm": n, "mixup_loss": 0.4}
        for e, n in enumerate(norms)
    ]
    (line,) = repro.verdicts([{**rows[0], "history": hist}])
    assert "sits 0.300 below" in line and "0.5× its initial norm and 2× its lowest" in line


def test_reproductions_table_the_runs_of_todays_defaults_only(tmp_path):
    """A cnn row from before He init (its config carries weight_init = pytorch, or none)
    stays in the store but out of the tables, and its point runs again; the taylor
    diagnostic's own rows likewise by the init they record."""
    from privbench.testing import tiny_config

    common = _reproduction("_common")
    he = tiny_config(model="cnn").resolve()
    old = tiny_config(model="cnn", model_params={"weight_init": "pytorch"}).resolve()
    rows = [{"config": c.to_dict(), "config_hash": c.hash(), "status": "ok"} for c in (he, old)]
    older = json.loads(json.dumps(rows[1]))  # recorded before the option existed
    older["config"]["model_params"].pop("weight_init")
    assert common.current([*rows, older]) == rows[:1]
    taylor = _reproduction("fedmix_taylor")
    mine = [{"lam": 0.1, "weight_init": "he"}, {"lam": 0.1}, {"lam": 0.2, "weight_init": "pytorch"}]
    assert taylor.today(mine) == mine[:1]


@pytest.mark.slow
def test_the_fedmix_search_runs_on_validation_to_its_end_then_sets_the_grids_rate(
    tmp_path, monkeypatch
):
    from privbench import ResultStore
    from privbench.data.datasets import load_dataset

    repro = _reproduction("fedmix")
    monkeypatch.setattr(repro, "SEARCH_LRS", (0.03, 0.1))
    monkeypatch.setattr(repro, "SEARCH_SEEDS", 1)
    store = ResultStore(str(tmp_path))
    validation = load_dataset("digits").validation_split(0.1, seed=0)
    kw = {"rounds": 2, "train_size": 0, "clients": 4}
    steps = 0
    while todo := repro.search_points(["digits"], ["shards-2"], store.read(), **kw):
        repro.measure(todo, store, validation)
        steps += 1
        assert steps <= len(repro.LR_LADDER)  # the walk ends
    rows = store.read()
    assert {r["dataset"] for r in rows} == {"digits:validation"}
    (lr,) = repro.chosen_lrs(rows).values()
    grid = repro.points(["digits"], ["shards-2"], 1, repro.chosen_lrs(rows), **kw)
    assert {cfg.fed.lr for _, cfg in grid} == {lr}
    assert repro.search_points(["digits"], ["shards-2"], rows, **kw) == []
    assert "| digits | shards-2 |" in repro.page(rows)


def test_a_diverged_fedmix_run_makes_its_cell_not_hold():
    """FedMix that diverged at the shared learning rate left no model: its cell does not
    hold and says how many runs diverged; NaiveMix and FedAvg keep their means."""
    repro = _reproduction("fedmix")

    def row(method, lam, acc, status="ok", error=None, seed=0):
        return {
            "dataset": "fashionmnist",
            "method": method,
            "status": status,
            "error": error,
            "accuracy": acc,
            "seed": seed,
            "class_acc_var": 0.01,
            "config": {
                "partition": "dirichlet",
                "partition_params": {"alpha": 0.5},
                "method_params": {} if lam is None else {"lam": lam},
                "fed": {"algorithm": "fedavg"},
            },
        }

    diverged = "DivergedError: Training diverged in round 18"
    rows = [
        row("fedavg", None, 0.80),
        row("naivemix", 0.2, 0.82),
        row("fedmix", 0.2, None, "error", diverged),
        row("fedmix", 0.2, 0.85, seed=1),
        row("naivemix", 0.05, 0.81),
        row("fedmix", 0.05, 0.83),
        row("fedmix", 0.05, None, "error", "worker failed: killed", seed=1),  # retried
    ]
    lines = repro.verdicts(rows)
    assert lines[0] == (
        "- fashionmnist, dirichlet-0.5, λ = 0.05: FedMix 0.830, NaiveMix 0.810, "
        "FedAvg 0.800: **holds**"
    )
    assert lines[1] == (
        "- fashionmnist, dirichlet-0.5, λ = 0.2: FedMix diverged in 1 of 2 runs, "
        "NaiveMix 0.820, FedAvg 0.800: **does not hold**"
    )
    # A baseline with no finished run: named, no ordering read.
    alone = [row("fedavg", None, None, "error", diverged), row("naivemix", 0.05, 0.81)]
    assert repro.verdicts([*alone, row("fedmix", 0.05, 0.83)]) == [
        "- fashionmnist, dirichlet-0.5, λ = 0.05: FedAvg diverged in 1 of 1 run"
    ]
    # A baseline's diverged run is left out of its mean, and the line says so.
    lines = repro.verdicts([*rows, row("fedavg", None, None, "error", diverged, seed=1)])
    assert lines[0] == (
        "- fashionmnist, dirichlet-0.5, λ = 0.05: FedMix 0.830, NaiveMix 0.810, "
        "FedAvg 0.800 (diverged in 1 of 2 runs, left out): **holds**"
    )


def test_the_fedmix_learning_rate_search_walks_past_an_edge_and_picks_per_cell():
    """Hand-worked: per (dataset, partition), mean final validation accuracy over two
    seeds, a diverged run scoring 0, a tie to the smaller rate, one ladder rung past a
    winner at an end; the tables then hold each cell's runs at its chosen rate only."""
    repro = _reproduction("fedmix")
    parts = {
        "shards-2": ("shards", {"classes_per_client": 2}),
        "dirichlet-0.5": ("dirichlet", {"alpha": 0.5}),
    }

    def row(dataset, part, lr, seed, acc, method="fedavg"):
        kind, params = parts[part]
        return {
            "dataset": dataset,
            "method": method,
            "seed": seed,
            "status": "ok" if acc is not None else "error",
            "error": None if acc is not None else "DivergedError: Training diverged in round 3",
            "accuracy": acc,
            "config": {
                "partition": kind,
                "partition_params": params,
                "method_params": {},
                "fed": {"algorithm": "fedavg", "lr": lr},
            },
        }

    def search(part, scores, dataset="mnist"):
        return [
            row(f"{dataset}:validation", part, lr, seed, acc)
            for lr, accs in scores.items()
            for seed, acc in enumerate(accs)
        ]

    # shards: 0.01 -> 0.55, 0.03 -> 0.75, 0.1 -> (0.8 + diverged 0) / 2 = 0.4: 0.03 inside
    shards = search("shards-2", {0.01: [0.5, 0.6], 0.03: [0.7, 0.8], 0.1: [0.8, None]})
    assert repro.lrs_to_try(repro.search_scores(shards)[("mnist", "shards-2")]) == []
    # dirichlet: 0.01 ties 0.03 at the top, so 0.01 wins and 0.003 is owed below it
    tie = search("dirichlet-0.5", {0.01: [0.7, 0.8], 0.03: [0.8, 0.7], 0.1: [0.6, 0.6]})
    assert repro.lrs_to_try(repro.search_scores(tie)[("mnist", "dirichlet-0.5")]) == [0.003]
    one_seed = search("dirichlet-0.5", {0.003: [0.9]})  # one of its two seeds: still owed
    assert repro.lrs_to_try(repro.search_scores(tie + one_seed)[("mnist", "dirichlet-0.5")]) == [
        0.003
    ]
    todo = repro.search_points(
        ["mnist"], ["shards-2", "dirichlet-0.5"], shards + tie, rounds=2, train_size=0
    )
    assert [(label[1], label[3], cfg.dataset, cfg.fed.lr) for label, cfg in todo] == [
        ("dirichlet-0.5", 0.003, "mnist:validation", 0.003)
    ] * 2
    # a searched Dirichlet split (90% of the images) is redrawn to 13 images a client;
    # the grid's MNIST partitions keep their draws (and the hashes of their runs)
    kw = {"rounds": 2, "train_size": 0}
    searched = repro.config("mnist:validation", "dirichlet-0.2", "fedavg", 0.0, 0, **kw)
    assert searched.partition_params == {"alpha": 0.2, "min_size": 13}
    assert repro.config("mnist", "dirichlet-0.2", "fedavg", 0.0, 0, **kw).partition_params == {
        "alpha": 0.2
    }
    done = tie + search("dirichlet-0.5", {0.003: [0.6, 0.5]})
    assert repro.chosen_lrs(shards + done) == {
        ("mnist", "shards-2"): 0.03,
        ("mnist", "dirichlet-0.5"): 0.01,
    }
    assert "| mnist | shards-2 | 0.01: 0.550, 0.03: 0.750, 0.1: 0.400 | 0.03 |" in (
        repro.search_table(shards)
    )
    # the grid: runs at the chosen rate stay, runs at another rate and the search go out;
    # a cell whose search has not ended keeps the dataset's tuned default
    grid = [row("mnist", "shards-2", lr, 0, 0.9) for lr in (0.03, 0.1)]
    unsearched = [row("fashionmnist", "shards-2", lr, 0, 0.8) for lr in (0.03, 0.1)]
    held = repro.in_grid(shards + done + grid + unsearched)
    default = repro.default_lr("fashionmnist", "cnn")[0]
    assert [(r["dataset"], r["config"]["fed"]["lr"]) for r in held] == [
        ("mnist", 0.03),
        ("fashionmnist", default),
    ]


def test_fedavp_and_fedzda_reproductions_count_diverged_runs_not_drop_them():
    """A diverged run left no model: it is out of every mean, but the table's runs cell
    and the verdict say how many there were; the method's own diverged run fails its
    claim, a baseline's is named beside the baseline's mean."""
    diverged = "DivergedError: Training diverged in round 3"

    def avp(method, acc, status="ok", seed=0):
        return {
            "dataset": "digits",
            "rounds": 100,
            "method": method,
            "status": status,
            "error": diverged if status == "error" else None,
            "accuracy": acc,
            "macro_f1": acc,
            "seed": seed,
            "history": [{"round": 100, "accuracy": acc}] if acc else [],
            "config": {"method_params": {}},
        }

    fedavp = _reproduction("fedavp")
    rows = [avp("fedavg", 0.9), avp("fedavg", None, "error", 1), avp("fedavp", 0.8)]
    (line,) = fedavp.verdicts(rows)
    assert line == (
        "- digits: FedAvP 0.800 vs fedavg 0.900 (diverged in 1 of 2 runs, left out): "
        "**does not hold**"
    )
    assert "| digits | fedavg | 1 + 1 diverged | 100 | 0.90 |" in fedavp.table(rows)
    (line,) = fedavp.verdicts([*rows, avp("fedavp", None, "error", 1)])
    assert line.startswith("- digits: FedAvP diverged in 1 of 2 runs vs fedavg 0.900")
    assert line.endswith("**does not hold**")

    def zda(method, var, status="ok", seed=0):
        return {
            "dataset": "mnist",
            "method": method,
            "status": status,
            "error": diverged if status == "error" else None,
            "seed": seed,
            "client_acc_var": var,
            "client_acc_mean": 0.9 if var is not None else None,
            "accuracy": 0.9 if var is not None else None,
            "class_acc_var": var,
            "config": {"partition": "multimodal", "partition_params": {"classes_per_client": 2}},
        }

    fedzda = _reproduction("fedzda")
    rows = [zda("fedavg", 0.02), zda("zdac", 0.01), zda("zdas", None, "error")]
    lines = fedzda.verdicts(rows)
    assert lines == [
        "- mnist, multimodal, zdac: client variance 100.0 vs FedAvg 200.0 %², local "
        "accuracy 90.00 vs 90.00 % (1 vs 1 runs): **holds**",
        "- mnist, multimodal, zdas: diverged in 1 of 1 run (1 FedAvg runs): **does not hold**",
    ]
    assert "| mnist | multimodal | zdas | 0 + 1 diverged | - |" in fedzda.table(rows)
    # A baseline with no finished run: named (no ordering to read), never dropped.
    assert fedzda.verdicts([zda("fedavg", None, "error"), zda("zdac", 0.01)]) == [
        "- mnist, multimodal: FedAvg diverged in 1 of 1 run"
    ]
    (line,) = fedavp.verdicts([avp("fedavg", None, "error"), avp("fedavp", 0.8)])
    assert line == "- digits: FedAvP 0.800 vs fedavg diverged in 1 of 1 run: **not measured**"


def test_the_inversion_reproduction_keeps_reconstructions_and_draws_their_grid(
    tmp_path, monkeypatch
):
    """Each attack's private images and reconstructions are saved beside the rows (one
    file per setting, variant and seed) and the docs' grid is drawn from them."""
    import numpy as np
    from attack_bands import Setting, measure

    repro = _reproduction("gradient_inversion")
    tiny = Setting("tiny digits, B=1", "digits", "lenet-sigmoid", 1, 1, 1, 0, 2)
    monkeypatch.setattr(repro, "SETTINGS", [tiny])
    variants = {v: (v.split(":")[0], {"restarts": 1, "iters": 2}) for v in repro.GRID_VARIANTS}
    store, arrays = tmp_path / "gi.jsonl", tmp_path / "arrays"
    rows = measure(1, list(variants), [tiny], store, variants, arrays=arrays)
    files = [r["reconstruction_file"] for r in rows]
    assert len(set(files)) == len(variants)  # the variants share a training config, not a file
    with np.load(arrays / files[0]) as data:
        assert data["ground_truth"].shape == data["reconstruction"].shape == (2, 1, 1, 8, 8)
    out = repro.grid_figure(rows, arrays, str(tmp_path / "grid.png"))
    assert out and (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rows measured before reconstructions were kept: no grid, the page shows why
    old = [{k: v for k, v in r.items() if k != "reconstruction_file"} for r in rows]
    assert repro.grid_figure(old, arrays, str(tmp_path / "none.png")) is None


def test_the_inversion_reproduction_records_each_victims_message_size(tmp_path, monkeypatch):
    """The squared norm of every victim's gradient is kept once per (setting, seed), for
    settings attacked before too, and the page splits each attack's successes by it."""
    from attack_bands import Setting, measure

    repro = _reproduction("gradient_inversion")
    tiny = Setting("tiny digits, B=1", "digits", "lenet-sigmoid", 1, 1, 1, 0, 2)
    monkeypatch.setattr(repro, "SETTINGS", [tiny])
    variants = {"idlg: 1 start (paper)": ("idlg", {"restarts": 1, "iters": 2})}
    store, norms = tmp_path / "gi.jsonl", tmp_path / "norms.jsonl"
    rows = measure(1, list(variants), [tiny], store, variants)  # before norms were kept
    assert not norms.exists()
    measure(1, list(variants), [tiny], store, variants, norms=norms)  # trains, attacks nothing
    assert len(store.read_text().splitlines()) == 1
    (kept,) = [json.loads(line) for line in norms.read_text().splitlines()]
    assert kept["setting"] == tiny.label and len(kept["message_sq_norm"]) == 2
    # the same number from the channel's log, read directly: victim 0's round-0 gradient
    from attack_bands import config

    from privbench.engine.experiment import Experiment

    outcome = Experiment(config(tiny, 0, "idlg", {"restarts": 1, "iters": 2})).train()
    (sent,) = [
        o
        for o in outcome.channel.observations
        if o.sender == 0 and o.round == 0 and o.kind == "gradient"
    ]
    by_hand = sum(float((t.double() ** 2).sum()) for t in sent.payload.values())
    assert kept["message_sq_norm"][0] == pytest.approx(by_hand, rel=1e-9) and by_hand > 0
    lines = repro.tiny_messages(rows, [{**kept, "message_sq_norm": [1e-6, 5.0]}])
    assert lines[-1] == f"| {tiny.label} | idlg: 1 start (paper) | " + (
        f"{int(rows[0]['victim_psnr'][0] > 30)}/1 | {int(rows[0]['victim_psnr'][1] > 30)}/1 |"
    )
    assert repro.tiny_messages(rows, [kept | {"message_sq_norm": [5.0, 5.0]}]) == []


def test_the_cost_table_counts_a_scripts_own_rows_by_the_key_it_stores_them_by(
    tmp_path, monkeypatch
):
    """CVAE rows differ by β, not by a setting: each timed run counts once."""
    import pages

    monkeypatch.setattr(pages, "RESULTS", tmp_path)
    (tmp_path / "reproduce").mkdir()
    base = {"dataset": "mnist", "seed": 0, "method": "fedavg", "k": 0, "variant": "fedavg"}
    rows = [
        {**base, "beta": 0.1, "local_f1": 0.5, "wall_s": 60.0},
        {**base, "beta": 0.3, "local_f1": 0.6, "wall_s": 120.0},
        {**base, "beta": 0.5, "local_f1": 0.7},  # an early, untimed row
    ]
    (tmp_path / "reproduce" / "cvae.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = next(x for x in pages.reproduction_cost().splitlines() if x.startswith("| cvae "))
    assert line == "| cvae | 2 (+1 untimed rows) | 0.1 | 1.5 |"


def test_the_dp_search_walks_past_an_edge_its_winner_sits_on():
    repro = _reproduction("dp")

    def row(lr, batch, rounds, acc, eps=8.0, status="ok"):
        fed = {"lr": lr, "batch_size": batch, "rounds": rounds}
        return {
            "dataset": "mnist:validation",
            "status": status,
            "accuracy": acc,
            "config": {
                "defenses": ["dp-sgd"],
                "defense_params": {"dp-sgd": {"target_epsilon": eps, "max_grad_norm": 1.0}},
                "fed": fed,
            },
        }

    kw = {"rounds": 5, "train_size": 12000}
    # the longest schedule and the largest lr won: 3x the rounds, 4x the lr, one each
    rows = [row(0.5, 128, 5, 0.6), row(2.0, 128, 15, 0.8), row(0.5, 128, 15, 0.7)]
    steps = [k for k, _ in repro.extend(rows, **kw)]
    assert steps == [(8.0, 1.0, 2.0, 128, 45), (8.0, 1.0, 8.0, 128, 15)]
    (cfg,) = [c for k, c in repro.extend(rows, **kw) if k[-1] == 45]
    assert cfg.dataset == "mnist:validation" and cfg.fed.rounds == 45 and cfg.fed.lr == 2.0
    # both tried and lost (one failed): nothing more to try, the walk ends
    rows += [row(2.0, 128, 45, 0.75), row(8.0, 128, 15, 0.0, status="error")]
    assert repro.extend(rows, **kw) == []
    # ... and the winner is inside every range tried now
    assert repro.edges(rows) == []
    # client-level rows in the same list are not the record level's to walk
    client = {
        "dataset": "mnist:validation",
        "status": "ok",
        "accuracy": 0.5,
        "config": {
            "defenses": ["client-dp"],
            "defense_params": {"client-dp": {"noise_multiplier": 1.0, "clip": 0.05}},
            "fed": {},
        },
    }
    assert repro.extend([*rows, client], **kw) == []
    # an interior winner proposes nothing; at MAX_ROUNDS the schedule stops growing
    interior = [row(0.5, 128, 5, 0.5), row(2.0, 128, 15, 0.9), row(8.0, 128, 45, 0.1)]
    assert repro.extend(interior, **kw) == []

    # a clip or batch at the largest tried: 4x C (up to MAX_CLIP) at the same lr and at
    # the lr that keeps lr * C, 2x the batch up to a client's records; a clip
    # at the smallest: 1/4 of it, the same two ways
    def clipped(clip, batch, acc, lr=2.0):
        r = row(lr, batch, 15, acc)
        r["config"]["defense_params"]["dp-sgd"]["max_grad_norm"] = clip
        return r

    wide = [clipped(0.1, 128, 0.5), clipped(1.0, 512, 0.9), clipped(1.0, 128, 0.6)]
    steps = [k for k, _ in repro.extend(wide, client_records=1080, **kw)]
    clip4 = [(8.0, 4.0, 2.0, 512, 15), (8.0, 4.0, 0.5, 512, 15)]
    assert steps == [*clip4, (8.0, 1.0, 2.0, 1024, 15)]
    # past the largest batch that fits: a client's whole training set, then nothing
    capped = [k for k, _ in repro.extend(wide, client_records=1000, **kw)]
    assert capped == [*clip4, (8.0, 1.0, 2.0, 1000, 15)]
    assert [k for k, _ in repro.extend(wide, client_records=512, **kw)] == clip4
    lost = [clipped(4.0, 512, 0.1), clipped(4.0, 512, 0.2, lr=0.5)]
    # the same-lr step alone lost: its lr * C twin is still owed
    (owed,) = [k for k, _ in repro.extend([*wide, lost[0]], **kw) if k[1] == 4.0]
    assert owed == clip4[1]
    # both lost; lr 0.5 was tried on the way, so lr 2 is now the largest lr tried
    assert [k for k, _ in repro.extend([*wide, *lost], **kw)] == [(8.0, 1.0, 8.0, 512, 15)]
    low = [clipped(0.1, 128, 0.9), clipped(1.0, 128, 0.5)]
    steps = [k for k, _ in repro.extend(low, **kw)]
    assert steps == [(8.0, 0.025, 2.0, 128, 15), (8.0, 0.025, 8.0, 128, 15)]
    at_top = [clipped(repro.MAX_CLIP / 2, 128, 0.9), clipped(repro.MAX_CLIP, 128, 0.95)]
    assert repro.extend(at_top, **kw) == []
    # the client level walks its clip: 1/4 of the smallest, then nothing once it lost
    other = {**client, "accuracy": 0.4, "config": json.loads(json.dumps(client["config"]))}
    other["config"]["defense_params"]["client-dp"]["clip"] = 0.2
    ((knobs, cfg),) = repro.extend([client, other], rounds=30, train_size=12000)
    assert knobs == (1.0, 0.0125) and cfg.dataset == "mnist:validation"
    assert cfg.defense_params["client-dp"]["clip"] == 0.0125 and cfg.fed.rounds == 30
    smaller = {**client, "accuracy": 0.1, "config": json.loads(json.dumps(client["config"]))}
    smaller["config"]["defense_params"]["client-dp"]["clip"] = 0.0125
    assert repro.extend([client, other, smaller], rounds=30, train_size=12000) == []
    # the batch walk's ceiling is the smallest client training set a run accepts
    import privbench
    from privbench.data.datasets import load_dataset
    from privbench.errors import ParameterError

    validation = load_dataset("digits").validation_split(0.1, seed=0)
    most = repro.client_records(validation)
    cfg = repro.record_config(
        8.0, 1.0, 0.5, most + 1, 0, data="digits:validation", rounds=1, train_size=0
    )
    with pytest.raises(ParameterError, match=f"must be <= {most} "):
        privbench.run(cfg, data=validation)
    top = repro.MAX_ROUNDS
    longest = [row(0.5, 128, 5, 0.5), row(2.0, 128, top, 0.9), row(8.0, 128, 15, 0.1)]
    assert repro.extend(longest, **kw) == []
    assert repro.edges(longest) == [
        f"- record level, target ε 8: rounds {top} (largest of 5, 15, {top})"
    ]


def test_the_defense_curves_mnist_setup_leaves_the_committed_setups_rows_in_place():
    """Adding the MNIST setup changes no embedded setup's configuration: every committed
    photos row is still one of the curve's points; the MNIST points train on the
    reproductions' 12,000-image subset at the tuned rate, and no --setup runs only the
    setups that need no data root."""
    bench = _reproduction("defense_curve")

    from privbench import ResultStore
    from privbench.tuning import default_lr

    store = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "defense_curve"
    photos = {r["config_hash"] for r in ResultStore(str(store)).read() if r["dataset"] == "photos"}
    points = {
        bench.config("photos", p, seed).resolve().hash() for p in bench.POINTS for seed in range(3)
    }
    assert photos and photos <= points
    cfg = bench.config("mnist", bench.POINTS[0], 0)
    assert cfg.dataset_params == {"train_size": 12000} and cfg.model == "lenet-sigmoid"
    assert cfg.resolve().fed.lr == default_lr("mnist", "lenet-sigmoid")[0]
    assert "mnist" not in bench.EMBEDDED and set(bench.EMBEDDED) < set(bench.SETUPS)


def test_the_defense_curve_tables_a_diverged_training_as_an_error_not_a_crash(tmp_path):
    """A point whose training diverged has error rows only (no model, accuracy, ε or
    upload): its line says so in the errors column and '-' elsewhere; a point that trained
    beside it keeps its numbers. Where it diverged after the attacked round, its rows
    carry the attacks' scores (``pipeline.finish_rows``), and the line shows them."""
    bench = _reproduction("defense_curve")

    from privbench import ResultStore

    none_pt, dp_pt = bench.POINTS[0], next(p for p in bench.POINTS if p[0] == "client-dp")
    trained = bench.config("digits", none_pt, 0).resolve().hash()
    diverged = bench.config("digits", dp_pt, 0).resolve().hash()
    prune_pt = next(p for p in bench.POINTS if p[0] == "prune")
    attacked = bench.config("digits", prune_pt, 0).resolve().hash()
    rows = [
        {"method": "fedavg", "config_hash": trained, "attack": a, "status": "ok",
         "accuracy": 0.9, "psnr": 40.0,
         "epsilon_record": None, "epsilon_client": None, "bytes_up": 2**20}
        for a in ("dlg", "idlg", "ig")
    ] + [
        {"method": "fedavg", "config_hash": diverged, "attack": a, "status": "error",
         "accuracy": None,
         "epsilon_record": None, "epsilon_client": None, "bytes_up": None,
         "error": "DivergedError: Training diverged in round 2"}
        for a in ("dlg", "idlg", "ig")
    ] + [
        {"method": "fedavg", "config_hash": attacked, "attack": a, "status": "error",
         "accuracy": None, "psnr": psnr,
         "epsilon_record": None, "epsilon_client": None, "bytes_up": None,
         "error": "DivergedError: Training diverged in round 2 (the attacks ran on the "
                  "messages of round 0, sent before it)"}
        for a, psnr in (("dlg", 30.0), ("idlg", 20.0), ("ig", 50.0), ("worst-case", 50.0))
    ]  # fmt: skip
    store = ResultStore(str(tmp_path))
    store.append(rows)
    lines = {line.split(" | ")[2]: line for line in bench.table(1, store).splitlines()[2:]}
    trained_cells = "| 1 | none | none | 0.90 | 40.00 | - | - | 40.00 | 40.00 | 40.00 | - | 1.00 |"
    assert lines["none"].endswith(trained_cells + " 0 |")
    assert lines["client-dp"].endswith("| 1 |" + " - |" * 11 + " 1 / 1 seeds |")
    leak = "| 50.00 | - | - | 30.00 | 20.00 | 50.00 | - | - | 1 / 1 seeds |"
    assert lines["prune"].endswith("| 1 | - | - | - " + leak)


@pytest.mark.slow
def test_the_copies_weights_benchmark_weights_as_it_says_and_resumes(tmp_path):
    """benchmarks/fedavp_copies.py: its ``true`` weighting is the victim's own loss (on
    the copies the victim trained on, the view's message is the observed gradient, no
    solve), its ``solved`` one makes DLG solve too, every weighting is undone after
    use, and a rerun measures nothing again."""
    import fedavp_copies as bench
    import torch

    from privbench.attacks.gradient import VictimSimulator

    out, obs, views, true_scores = bench.victim(0)
    x = views.flatten(0, 1)
    y = out.victims[0].labels.repeat(len(views))
    from privbench.attacks.base import ATTACKS

    original = VictimSimulator.solves_weights
    with bench.weighting("solved", true_scores):  # DLG's solve is forced for the table
        assert ATTACKS.create("dlg").solves_weights
    assert not ATTACKS.create("dlg").solves_weights and ATTACKS.create("idlg").solves_weights
    with bench.weighting("true", true_scores):
        sim = VictimSimulator(obs.context, guess="copies")
        target = sim.target(obs)
        got = sim.message(obs.kind, x, y, create_graph=False, target=target)
    assert VictimSimulator.solves_weights is original
    for n in target:
        torch.testing.assert_close(got[n], target[n], rtol=1e-4, atol=1e-7)
    store = bench.RowStore(tmp_path / "copies.jsonl", lambda r: tuple(r[f] for f in bench.FIELDS))
    bench.measure(1, store, iters=1)
    rows = list(store)
    assert sorted((r["attack"], r["weights"]) for r in rows) == sorted(
        (a, w) for a, ws in bench.PLAN for w in ws
    )
    assert all(len(r["true_scores"]) == 2 and r["seed"] == 0 for r in rows)
    bench.measure(1, store, iters=1)
    assert len((tmp_path / "copies.jsonl").read_text().splitlines()) == len(rows)
    assert "| idlg@copies | solved | 1 |" in bench.table(rows)


def test_the_committed_stores_keep_exactly_the_reconstructions_their_rows_name():
    """Every committed sweep store's arrays and rows agree: each row's reconstruction is
    committed beside it, and no array is kept that no row names (the leftovers of a run
    killed between writing its arrays and its row would pass for measured data)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "benchmarks/results"], cwd=root, capture_output=True, text=True
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    tracked = set(listed.stdout.split())
    stores = sorted(f for f in tracked if f.endswith("/results.jsonl"))
    assert stores, "no committed sweep store"
    for store in stores:
        folder = store.rsplit("/", 1)[0]
        rows = [json.loads(line) for line in (root / store).read_text().splitlines() if line]
        named = {
            f"{folder}/{r['reconstruction_file']}" for r in rows if r.get("reconstruction_file")
        }
        kept = {f for f in tracked if f.startswith(f"{folder}/reconstructions/")}
        assert not named - kept, (store, sorted(named - kept)[:5])
        assert not kept - named, (store, sorted(kept - named)[:5])
