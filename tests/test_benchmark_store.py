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
