"""The command line as a user meets it: run, list, --json, and one-line errors (exit 2)."""

import json
import subprocess
import sys

import pytest

from privbench import registries
from privbench.cli import main
from privbench.results import RESULT_FIELDS

FAST = [
    "--clients",
    "4",
    "--rounds",
    "1",
    "--partition",
    "iid",
    "--eval-every",
    "0",
    "--no-progress",
]


def test_run_json_prints_only_a_json_list(capsys, tmp_path):
    code = main(
        [
            "run",
            "fedavg",
            "--attack",
            "idlg",
            "--iters",
            "3",
            "--json",
            "--out",
            str(tmp_path),
            *FAST,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = json.loads(out)
    assert isinstance(rows, list) and len(rows) == 1
    assert set(RESULT_FIELDS) <= set(rows[0]) and rows[0]["status"] == "ok"
    assert rows[0]["psnr"] is not None and rows[0]["bytes_up"] > 0


def test_run_prints_a_table_and_stores_rows(capsys, tmp_path):
    assert (
        main(["run", "fedavg", "--attack", "idlg", "--iters", "2", "--out", str(tmp_path), *FAST])
        == 0
    )
    out = capsys.readouterr().out
    assert "PSNR dB" in out and "bytes by kind" in out
    assert (tmp_path / "results.jsonl").exists()


def test_list_is_built_from_the_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, reg in registries().items():
        assert f"{kind}s:" in out
        for name in reg.names():
            assert f"  {name} " in out
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["attack"]["dlg"]["params"]["iters"]["default"] == 300


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "fedmx"], "Unknown method 'fedmx'. Did you mean 'fedmix'? Valid methods:"),
        (["run", "fedavg", "--attack", "dgl"], "Did you mean 'dlg'?"),
        (
            ["run", "fedavg", "--alpha", "-1"],
            "The 'alpha' parameter of partition 'dirichlet' must be a finite number > 0. "
            "Got -1.0 instead.",
        ),
        (["run", "fedavg", "--batch-size", "5000"], "The 'batch_size' parameter must be <="),
        (["run", "fedavg", "--clients", "abc"], "invalid int value: 'abc'"),
        (["run", "fedavg", "--fraction", "1.5"], "The 'fraction' parameter must be > 0 and <= 1"),
        (["run", "fedavg", "--tv", "0.1", "--attack", "dlg"], "--tv is not a parameter"),
        (
            ["run", "fedavg", "--dataset", "mnist", "--data-root", "/nonexistent-privbench"],
            "Dataset 'mnist' not found: expected /nonexistent-privbench/MNIST/raw",
        ),
        (
            ["run", "fedavg", "--attack", "dlg", "--attack-round", "7", "--rounds", "2"],
            "The 'attack_round' parameter must be a round index",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, fragment):
    assert main([*argv, "--no-save"] if argv[0] == "run" else argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_several_problems_are_reported_together(capsys):
    assert main(["run", "fedavg", "--rounds", "0", "--lr", "-1", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert "'rounds'" in err and "'lr'" in err


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "privbench", "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0 and "methods:" in proc.stdout
