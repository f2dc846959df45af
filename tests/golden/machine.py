"""Which machine a set of golden rows was recorded on.

Float results are exact on one machine and move in the last bits on another: BLAS and
oneDNN pick their kernels by CPU vendor and instruction set, the sum order moves with
the thread count, and DLG's L-BFGS amplifies a last-bit difference into a different
reconstruction. Golden rows are therefore kept per machine: ``default_rows.json`` for
the machine they were first recorded on (before fingerprints existed) and
``default_rows.<fingerprint>.json`` for each machine recorded since
(``python -m tests.golden.record``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
LEGACY = HERE / "default_rows.json"
ROOT = HERE.parents[1]
UNTIMED = {"wall_s", "train_s", "attack_s", "versions"}  # fields no recording pins


def fingerprint() -> dict[str, str]:
    """What decides float results here: CPU vendor, model and instruction sets (the ones
    that decide which BLAS / oneDNN kernels run, ``privbench.results.machine.ISA``), torch's
    version and the thread count the commands run at (``PRIVBENCH_GOLDEN_THREADS``, which
    ``tests/conftest.py`` sets before it shares the cores among test workers, else
    ``OMP_NUM_THREADS``, else torch's default: the core count)."""
    import torch

    from privbench.results.machine import cpu

    model, isa = cpu()
    return {
        "cpu": model,
        "isa": isa,
        "torch": torch.__version__,
        "threads": golden_threads(),
    }


def golden_threads() -> str:
    """The thread count the golden commands run at: ``PRIVBENCH_GOLDEN_THREADS``, else
    ``OMP_NUM_THREADS``, else torch's default (the core count)."""
    import torch

    return (
        os.environ.get("PRIVBENCH_GOLDEN_THREADS")
        or os.environ.get("OMP_NUM_THREADS")
        or str(torch.get_num_threads())
    )


def key(fp: dict[str, str]) -> str:
    return hashlib.sha256(repr(sorted(fp.items())).encode()).hexdigest()[:12]


def rows_file(fp: dict[str, str] | None = None) -> Path:
    """This machine's golden rows, or the first machine's when it has none."""
    own = HERE / f"default_rows.{key(fp or fingerprint())}.json"
    return own if own.exists() else LEGACY


def golden_rows(path: Path) -> dict[str, list[dict]]:
    """{command: rows} of a recording (the first one holds them bare; later ones under
    ``rows``, beside the ``machine`` they were recorded on)."""
    loaded = json.loads(path.read_text())
    return loaded if path == LEGACY else loaded["rows"]


def run_command(command: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``python -m privbench COMMAND --json`` from the project's root: the process, and
    its rows without the untimed fields ([] when it failed)."""
    argv = [sys.executable, "-m", "privbench", *command.split()]
    argv += ["--json", "--no-save", "--no-progress"]
    # At the fingerprint's thread count, whatever the test worker runs at; threads that
    # wait sleep rather than spin, so a test beside it on the same cores does not stall
    # them (the wait policy decides no float).
    threads = golden_threads()
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    if proc.returncode != 0:
        return proc, []
    return proc, [{k: v for k, v in r.items() if k not in UNTIMED} for r in json.loads(proc.stdout)]


# Row fields added after the first recording, which the recordings do not hold: left out
# of the comparison (every recorded field still is). psnr_augmented was empty for every
# recorded command until FedAvP's rows began to score the copies its victim trained on;
# tests/test_fedavp.py checks that value against the copies recorded as the step ran.
LATER_FIELDS = ("psnr_augmented",)


def normalise(rows: list[dict]) -> list[dict]:
    """Rows as the recordings hold them: parameters added since at the value that
    reproduces the recording dropped from the config (as in the config hash), row fields
    added since dropped (:data:`LATER_FIELDS`). In place; returns ``rows``."""
    from privbench.confighash import drop_later_defaults

    for row in rows:
        drop_later_defaults(row["config"])
        for field in LATER_FIELDS:
            row.pop(field, None)
    return rows
