"""A non-editable install must ship privbench.attacks/augmenters/defenses, not top-level
packages called ``attacks`` etc. Checked on a real wheel built from this tree."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_maps_plugin_folders_under_privbench(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("privbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "privbench/attacks/gradient.py",
        "privbench/augmenters/base.py",
        "privbench/defenses/base.py",
        "privbench/cli/main.py",
    ):
        assert module in names
    # Every core module on disk ships (a new sub-package must be listed in pyproject).
    core = {str(p.relative_to(ROOT)) for p in (ROOT / "privbench").rglob("*.py")}
    assert core <= set(names), sorted(core - set(names))
    assert not any(n.split("/")[0] in ("attacks", "augmenters", "defenses", "tests") for n in names)
    # Import the unpacked wheel from an unrelated folder, ahead of the editable install.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import privbench, privbench.attacks as a, privbench.pipeline; "
        "print(privbench.__file__); print(sorted(a.ATTACKS.names()))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=True,
    )
    first, second = proc.stdout.splitlines()
    assert first.startswith(str(site))
    assert "dlg" in second


def test_no_source_file_is_git_ignored():
    """CI runs on a fresh clone: a source file that .gitignore hides (a pattern like
    ``data/`` matching ``privbench/data/``) exists here and is missing there."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "*.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    hidden = [
        line for line in proc.stdout.splitlines() if not line.startswith((".venv/", "build/"))
    ]
    assert hidden == [], hidden
