"""The benchmark scripts' resumable row store (benchmarks/_store.py)."""

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
    with pytest.warns(UserWarning, match="rows.jsonl:3: skipping an incomplete row"):
        again = RowStore(path, lambda r: (r["point"],))
    assert (1,) in again and (2,) in again and (3,) not in again
    again.add({"point": 3, "psnr": 32.0})  # starts on a line of its own
    with pytest.warns(UserWarning, match="rows.jsonl:3: skipping"):
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
