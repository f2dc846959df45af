"""The README's Python examples run as shown and print what the README says they print."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(# readme-example: (\S+)\n.*?)```\n\n```\n(.*?)```", re.S)
EXAMPLES = {
    m.group(2): (m.group(1), m.group(3)) for m in BLOCK.finditer((ROOT / "README.md").read_text())
}


def test_the_readme_has_its_examples():
    assert set(EXAMPLES) == {"byo", "attack_update", "plugin"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_runs_as_shown(name, tmp_path):
    code, expected = EXAMPLES[name]
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [line.rstrip() for line in proc.stdout.strip().splitlines()]
    want = [line.rstrip() for line in expected.strip().splitlines()]
    assert got == want, "README output is out of date:\n" + proc.stdout
