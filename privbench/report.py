"""Summaries of result rows over seeds, shared by the benchmark scripts and reports."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mean_std(values: Iterable[float | None]) -> str:
    """'mean ± std' over seeds (population std), the single value for one seed, '-' for none."""
    arr = np.array([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return "-"
    return f"{arr.mean():.2f} ± {arr.std():.2f}" if len(arr) > 1 else f"{arr[0]:.2f}"
