"""The Python examples of the README and the docs run as shown and print what the page
says they print. An example is a ```python block whose first line is
``# readme-example: NAME``, followed by a plain ``` block with its output."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(# readme-example: (\S+)\n.*?)```\n\n```\n(.*?)```", re.S)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLES = {
    m.group(2): (m.group(1), m.group(3)) for page in PAGES for m in BLOCK.finditer(page.read_text())
}


def test_the_docs_have_their_examples():
    assert set(EXAMPLES) == {"byo", "attack_update", "plugin", "api"}


def test_every_python_block_of_the_docs_is_an_example_or_says_why_not():
    """A ```python block either runs in a test (``# readme-example:``) or is a fragment
    that needs the reader's own objects (``# fragment:`` says which)."""
    for page in PAGES:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            first = block.splitlines()[0]
            assert first.startswith(("# readme-example:", "# fragment:")), (page.name, first)


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
    assert got == want, "docs output is out of date:\n" + proc.stdout
