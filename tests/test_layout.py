"""The core's shape: small files, no plugin imports at module level, no import cycle.

The core is ``privbench/`` (the harness); the plugin folders ``augmenters/``, ``attacks/``
and ``defenses/`` install as ``privbench.augmenters`` etc. The core reaches them only
through the registries (``privbench.registries()`` imports them when first called).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "privbench"
PLUGINS = ("privbench.augmenters", "privbench.attacks", "privbench.defenses")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_level_imports(path: Path) -> set[str]:
    """Modules imported by statements that run on import (not inside a function)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if isinstance(node, ast.ClassDef):
                    visit(node.body)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit(getattr(node, field, []) or [])

    visit(tree.body)
    return found


CORE_FILES = sorted(CORE.rglob("*.py"))
CORE_MODULES = {module_name(p): p for p in CORE_FILES}


def test_no_core_file_is_over_the_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for p in CORE_FILES
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_core_imports_no_plugin_at_module_level():
    bad = {
        name: sorted(i for i in module_level_imports(path) if i.startswith(PLUGINS))
        for name, path in CORE_MODULES.items()
    }
    assert not {k: v for k, v in bad.items() if v}


def test_plugins_import_no_other_plugin_family():
    """An attack imports no method module and no defense; each family only the core and
    its own package (shared helpers live in the core)."""
    bad = {}
    for folder, own in (("augmenters", 0), ("attacks", 1), ("defenses", 2)):
        for path in sorted((ROOT / folder).glob("*.py")):
            others = [p for i, p in enumerate(PLUGINS) if i != own]
            hits = sorted(i for i in module_level_imports(path) if i.startswith(tuple(others)))
            if hits:
                bad[f"{folder}/{path.name}"] = hits
    assert not bad


def test_the_core_has_no_import_cycle():
    graph = {
        name: {m for m in CORE_MODULES if m != name and m in module_level_imports(path)}
        for name, path in CORE_MODULES.items()
    }
    # A package's __init__ runs when any of its modules is imported: an edge to a.b.c
    # also enters a.b.
    # (A package's own modules importing each other are inside it: no edge to itself.)
    for name, deps in graph.items():
        for m in list(deps):
            parts = m.split(".")
            deps.update(
                pkg
                for pkg in (".".join(parts[:i]) for i in range(2, len(parts)))
                if pkg in graph and not (name == pkg or name.startswith(pkg + "."))
            )
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, trail):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1 and not cycle:
                cycle.extend([*trail[trail.index(dep) :], dep] if dep in trail else [node, dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycle, " -> ".join(cycle)


def test_the_walk_sees_an_import():
    """The checks above can fail: the parser sees both import forms at module level."""
    imports = module_level_imports(CORE / "engine" / "experiment.py")
    assert "privbench.engine.client" in imports and "numpy" in imports


def test_no_hook_is_discovered_with_hasattr():
    """Every hook of a method, attack, defense or threat model is declared on its base
    class; the engine and the plugins call it, they do not probe for it."""
    folders = [CORE / "engine", CORE / "evaluation", ROOT / "attacks", ROOT / "augmenters"]
    files = [CORE / "pipeline.py", *(p for f in folders for p in sorted(f.glob("*.py")))]
    files += sorted((ROOT / "defenses").glob("*.py"))
    probing = [str(p.relative_to(ROOT)) for p in files if "hasattr(" in p.read_text()]
    assert not probing


def test_start_up_leaves_torchvision_scipy_and_scikit_image_until_a_run_needs_them():
    """``import privbench`` with every plugin registered pulls in none of the three
    (together about 3 s of every command's start, ``benchmarks/perf.py``'s start-up
    line); FedAvP's ops import torchvision's functionals on first use and are those."""
    import subprocess
    import sys

    probe = (
        "import sys, privbench\n"
        "privbench.registries()\n"
        "heavy = ('torchvision', 'torch._dynamo', 'scipy', 'skimage')\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "from privbench.augmenters.ops import F\n"
        "from torchvision.transforms.v2 import functional\n"
        "print(F.affine is functional.affine,\n"
        "      F.InterpolationMode is functional.InterpolationMode)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.splitlines()
    assert out == ["[]", "True True"]
