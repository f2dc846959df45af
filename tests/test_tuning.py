"""Learning rates tuned without peeking: the validation split never holds a test image,
the defaults are the search's winners (re-derived here from the committed rows), an
explicit --lr wins, and a first run on MNIST without --lr learns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import privbench
from benchmarks import tune
from privbench import FedConfig, RunConfig
from privbench.cli import main
from privbench.data.datasets import load_dataset
from privbench.errors import ParameterError
from privbench.tuning import FALLBACK_LR, default_lr, defaults_table, tuned

ROOT = Path(__file__).resolve().parents[1]
TABLE = {"lr": {"mnist/cnn": {"lr": 0.03}, "fashionmnist/cnn": {"lr": 0.1}}}


@pytest.fixture
def fake_tuning(monkeypatch):
    monkeypatch.setattr("privbench.tuning.tuned", lambda: TABLE)


def test_the_validation_split_is_carved_from_train_per_class_and_drops_the_test_set():
    data = load_dataset("digits")
    val = data.validation_split(0.2, seed=3)
    assert len(val.x_train) + len(val.x_test) == len(data.x_train)
    # every held-out image is a training image, and no test image is anywhere
    train_rows = {tuple(x.flatten().tolist()) for x in data.x_train}
    test_rows = {tuple(x.flatten().tolist()) for x in data.x_test}
    held = {tuple(x.flatten().tolist()) for x in val.x_test}
    kept = {tuple(x.flatten().tolist()) for x in val.x_train}
    assert held <= train_rows and not (held | kept) & (test_rows - train_rows)
    per_class = torch.bincount(data.y_train, minlength=10)
    assert torch.bincount(val.y_test, minlength=10).tolist() == [
        round(0.2 * int(n)) for n in per_class
    ]
    assert torch.equal(val.y_test, data.validation_split(0.2, seed=3).y_test)
    assert not torch.equal(val.x_test, data.validation_split(0.2, seed=4).x_test)
    with pytest.raises(ParameterError, match="'fraction' parameter must be > 0 and < 1"):
        data.validation_split(1.0)


def test_default_lr_tuned_then_same_model_then_the_historical_default(fake_tuning):
    assert default_lr("mnist", "cnn")[0] == 0.03
    assert default_lr("fashionmnist", "cnn")[0] == 0.1
    lr, source = default_lr("cifar10", "cnn")  # not tuned: the most conservative cnn value
    assert lr == 0.03 and "mnist/cnn" in source
    assert default_lr("digits", "cnn")[0] == FALLBACK_LR  # embedded: unchanged numbers
    assert default_lr("mnist", "resnet")[0] == FALLBACK_LR
    assert default_lr("mnist", "cnn", provided=True)[0] == FALLBACK_LR
    # A split of a registered dataset trains at its dataset's rate (a search on
    # mnist:validation and the final run on mnist, one rate); other names do not.
    assert default_lr("mnist:validation", "cnn", provided=True)[0] == 0.03
    assert default_lr("mine:validation", "cnn", provided=True)[0] == FALLBACK_LR
    assert default_lr("digits:validation", "cnn", provided=True)[0] == FALLBACK_LR
    assert defaults_table()["mnist/cnn"]["lr"] == 0.03


def test_the_resolved_config_carries_the_default_and_an_explicit_lr_wins(fake_tuning):
    assert RunConfig(dataset="mnist", model="cnn").resolve().fed.lr == 0.03
    assert RunConfig(dataset="mnist", model="cnn", fed=FedConfig(lr=0.2)).resolve().fed.lr == 0.2
    digits = RunConfig().resolve()
    explicit = RunConfig(fed=FedConfig(lr=0.5)).resolve()
    assert digits.fed.lr == 0.5 and digits.hash() == explicit.hash()
    with pytest.raises(
        privbench.PrivbenchError, match=r"'lr' parameter .* must be a finite number"
    ):
        RunConfig(fed=FedConfig(lr=float("inf"))).resolve()


def test_list_shows_the_tuned_defaults(fake_tuning, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mnist/cnn: 0.03  (tuned on a validation split of mnist for cnn)" in out
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["default_lr"]["mnist/cnn"]["lr"] == 0.03


def test_choose_takes_the_best_mean_and_the_smaller_step_on_a_tie():
    def row(lr, acc, seed, status="ok"):
        return {
            "dataset": "mnist:validation",
            "model": "cnn",
            "status": status,
            "accuracy": acc,
            "config": {"fed": {"lr": lr}},
            "seed": seed,
        }

    rows = [row(0.1, 0.9, 0), row(0.1, 0.8, 1), row(0.3, 0.95, 0), row(0.3, None, 1, "error")]
    rows += [row(0.03, 0.85, 0), row(0.03, 0.85, 1)]
    got = tune.choose(rows)["mnist/cnn"]
    assert got["lr"] == 0.03  # 0.85 ties 0.1's mean 0.85; a diverged run scores 0 for 0.3
    assert got["validation_accuracy"]["0.3"] == [0.95, 0.0]


def test_the_committed_defaults_are_the_winners_of_the_committed_search():
    record = tuned()
    rows_path = ROOT / record.get("rows", "benchmarks/results/tuning/results.jsonl")
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    assert record["lr"] == tune.choose(tune.searched(rows))
    assert {"mnist/cnn", "fashionmnist/cnn"} <= set(record["lr"])


def test_the_search_runs_end_to_end_and_writes_the_defaults(tmp_path):
    out, written = tmp_path / "runs", tmp_path / "tuned.json"
    args = ["--datasets", "digits", "--models", "cnn", "--seeds", "1", "--grid", "0.05", "0.5"]
    args += ["--rounds", "1", "--out", str(out), "--tuned", str(written)]
    tune.main(args)
    record = json.loads(written.read_text())
    assert set(record["lr"]["digits/cnn"]["validation_accuracy"]) == {"0.05", "0.5"}
    # The protocol stays the CLI's search; this entry's own fields say it ran otherwise.
    assert record["protocol"] == tune.PROTOCOL and record["protocol"]["rounds"] == 3
    assert record["lr"]["digits/cnn"]["rounds"] == [1]
    n_rows = len((out / "results.jsonl").read_text().splitlines())
    tune.main(args)  # resumes: nothing measured twice
    assert len((out / "results.jsonl").read_text().splitlines()) == n_rows == 2


@pytest.mark.slow
def test_a_first_mnist_run_without_lr_learns(data_root):
    cmd = [sys.executable, "-m", "privbench", "run", "fedavg", "--dataset", "mnist"]
    cmd += ["--model", "cnn", "--partition", "iid", "--clients", "10", "--rounds", "1"]
    cmd += ["--train-size", "12000", "--test-size", "2000", "--data-root", data_root]
    cmd += ["--json", "--no-save", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    (row,) = json.loads(proc.stdout)
    assert row["config"]["fed"]["lr"] == default_lr("mnist", "cnn")[0] != FALLBACK_LR
    assert row["accuracy"] > 0.8  # 0.89 measured (He init, 0.03); 0.5 stays at chance


def test_the_docs_table_is_the_committed_tuning():
    import re

    import numpy as np

    from tests.test_docs import render

    text = render("cli.md")
    lr = tuned()["lr"]
    header = next(x for x in text.splitlines() if x.startswith("| dataset | `"))
    models = re.findall(r"`([a-z-]+)`", header)
    seen = 0
    for dataset in dict.fromkeys(k.split("/")[0] for k in lr):
        (line,) = [x for x in text.splitlines() if x.startswith(f"| `{dataset}` | ")]
        cells = line.split(" | ")[1:]
        for model, cell in zip(models, cells, strict=True):
            entry = lr.get(f"{dataset}/{model}")
            if entry is None:
                assert cell.strip(" |") == "-"
                continue
            value, acc, rounds, setup = re.fullmatch(
                r"([\d.]+) \(val\. acc ([\d.]+), ([\d/]+) rounds((?:, [^,)]+)*)\) ?\|?",
                cell.strip(),
            ).groups()
            assert float(value) == entry["lr"] and rounds == "/".join(map(str, entry["rounds"]))
            assert setup == "".join(f", {x}" for x in entry.get("setup", []))
            mean = np.mean(entry["validation_accuracy"][f"{entry['lr']:g}"])
            assert acc == f"{mean:.2f}"
            seen += 1
    assert seen == len(lr)
