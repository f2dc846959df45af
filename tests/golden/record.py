"""Record the golden rows of every default command on this machine:

    python -m tests.golden.record

Writes ``tests/golden/default_rows.<fingerprint>.json`` (the commands are those of
``default_rows.json``), with the fingerprint it was recorded under. Record only on a
commit whose numbers are meant: this file is what later refactors are held to here.
"""

from __future__ import annotations

import json
import sys

from tests.golden.machine import HERE, LEGACY, fingerprint, golden_rows, key, normalise, run_command


def main() -> None:
    fp = fingerprint()
    recorded = {}
    for command in sorted(golden_rows(LEGACY)):
        print(command, file=sys.stderr, flush=True)
        proc, rows = run_command(command)
        if proc.returncode != 0:
            raise SystemExit(f"{command} failed:\n{proc.stderr[-3000:]}")
        recorded[command] = normalise(rows)
    out = HERE / f"default_rows.{key(fp)}.json"
    out.write_text(json.dumps({"machine": fp, "rows": recorded}, indent=1, sort_keys=True) + "\n")
    print(out, file=sys.stderr)


if __name__ == "__main__":
    main()
