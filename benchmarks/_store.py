"""The resumable row store of the benchmark scripts: privbench's ResultStore (one JSON
object per line, appended under a lock and fsynced, a torn line skipped and measured
again) under the script's own file name, indexed by each row's point."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from privbench.results.store import ResultStore

RESULTS = Path(__file__).parent / "results"


class RowStore:
    """Rows of ``path`` keyed by ``key(row)``; ``add`` appends one row and returns once it
    is on disk, so a killed script loses at most the point in flight."""

    def __init__(self, path: Path, key: Callable[[dict], tuple]):
        path = Path(path)
        self.store, self.key = ResultStore(str(path.parent), path.name), key
        self.rows = {key(row): row for row in self.store.read(required=())}

    def __contains__(self, k: tuple) -> bool:
        return k in self.rows

    def __getitem__(self, k: tuple) -> dict:
        return self.rows[k]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows.values())

    def add(self, row: dict) -> dict:
        self.store.append([row])
        self.rows[self.key(row)] = row
        return row
