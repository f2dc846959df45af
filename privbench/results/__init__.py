"""Results: rows and their atomic store, tables and regression gates (``report``), plots
and sweeps. Importing this package loads only the store."""

from privbench.results.machine import versions
from privbench.results.store import (
    RESULT_FIELDS,
    Result,
    Results,
    ResultStore,
    write_json_atomic,
)

__all__ = ["RESULT_FIELDS", "Result", "ResultStore", "Results", "versions", "write_json_atomic"]
