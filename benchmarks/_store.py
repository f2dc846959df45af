"""The resumable row store of the benchmark scripts: one JSON object per line, one line
per measured point, appended as it is measured, so a rerun skips what is there."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


class RowStore:
    """Rows of ``path`` keyed by ``key(row)``; ``add`` appends one line and flushes it to
    disk before returning, so a killed script loses at most the point in flight."""

    def __init__(self, path: Path, key: Callable[[dict], tuple]):
        self.path, self.key = Path(path), key
        self.rows: dict[tuple, dict] = {}
        if self.path.exists():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    # A line cut by a kill mid-write: the point is measured again.
                    print(f"  {self.path.name}:{n}: not a complete row, skipped", flush=True)
                    continue
                self.rows[key(row)] = row

    def __contains__(self, k: tuple) -> bool:
        return k in self.rows

    def __getitem__(self, k: tuple) -> dict:
        return self.rows[k]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows.values())

    def add(self, row: dict) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A line cut by a kill has no newline: start on a line of our own.
        cut = self.path.exists() and self.path.stat().st_size > 0
        if cut:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        with self.path.open("a") as f:
            f.write(("\n" if cut else "") + json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[self.key(row)] = row
        return row
