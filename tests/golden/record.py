"""Record the golden rows of every default command on this machine:

    python -m tests.golden.record

Writes ``tests/golden/default_rows.<fingerprint>.json`` (the commands are those of
``default_rows.json``), with the fingerprint it was recorded under. Record only on a
commit whose numbers are meant: this file is what later refactors are held to here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.golden.machine import HERE, LEGACY, fingerprint, key

UNTIMED = {"wall_s", "train_s", "attack_s", "versions"}
ROOT = Path(__file__).resolve().parents[2]


def rows(command: str) -> list[dict]:
    argv = [sys.executable, "-m", "privbench", *command.split()]
    argv += ["--json", "--no-save", "--no-progress"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed:\n{proc.stderr[-3000:]}")
    return [{k: v for k, v in r.items() if k not in UNTIMED} for r in json.loads(proc.stdout)]


def main() -> None:
    fp = fingerprint()
    commands = sorted(json.loads(LEGACY.read_text()))
    recorded = {}
    for command in commands:
        print(command, file=sys.stderr, flush=True)
        recorded[command] = rows(command)
    out = HERE / f"default_rows.{key(fp)}.json"
    out.write_text(json.dumps({"machine": fp, "rows": recorded}, indent=1, sort_keys=True) + "\n")
    print(out, file=sys.stderr)


if __name__ == "__main__":
    main()
