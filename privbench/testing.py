"""Helpers for users' own test suites: fail a test when leakage rises or utility falls.

from privbench.testing import assert_no_leakage_regression

def test_my_fl_stack_does_not_leak_more():
    rows = privbench.run(my_config)
    assert_no_leakage_regression(rows, "tests/privacy-baseline.json", psnr_tol=1.0)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from privbench.report import check, load_rows


def assert_no_leakage_regression(
    results: str | os.PathLike | Sequence[Any],
    baseline: str | os.PathLike | Mapping[str, Any],
    *,
    psnr_tol: float = 1.0,
    ssim_tol: float = 0.02,
    acc_tol: float = 0.02,
) -> None:
    """Raise ``AssertionError`` with a readable diff when, against ``baseline`` (a file
    from ``privbench baseline`` or its dict), any experiment's mean PSNR or SSIM rose or
    its accuracy fell beyond the tolerance, or an experiment is missing or failed.

    ``results``: rows from :func:`privbench.run`, a result folder or a ``.jsonl`` file.
    """
    report = check(
        load_rows(results), baseline, psnr_tol=psnr_tol, ssim_tol=ssim_tol, acc_tol=acc_tol
    )
    if not report.ok:
        raise AssertionError("privacy/utility regression against the baseline:\n" + report.text())
