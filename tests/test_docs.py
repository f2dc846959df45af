"""The docs site: generated blocks resolve, the generated reference agrees with the
registries and the parser, the README stays short, and the site builds in strict mode."""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from privbench import registries
from privbench.catalogue import catalogue, cli_reference, plugin_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "tools/mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(page: str) -> str:
    return hooks().render((DOCS / page).read_text(), page)


def test_every_generated_block_names_a_generator():
    names = hooks().generators()
    for page in DOCS.rglob("*.md"):
        for name in hooks().MARK.findall(page.read_text()):
            assert name in names, f"{page}: unknown generated block {name}"


def test_an_unknown_generated_block_fails_the_build():
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match="unknown generated block 'nope'"):
        hooks().render("<!-- privbench:nope -->", "x.md")


def test_the_plugin_reference_lists_every_plugin_and_parameter():
    text = plugin_reference()
    for kind, reg in registries().items():
        for name in reg.names():
            assert f"### `{name}`" in text, (kind, name)
            for p in reg.entry(name).params:
                dashed = p.name.replace("_", "-")
                assert f"| `{p.name}` | `--{dashed}`, `--{name}.{dashed}` |" in text, (name, p)
                assert str(p.allowed()) in text


def test_the_plugin_reference_counts_match_the_catalogue():
    text = plugin_reference()
    data = catalogue()
    for kind in registries():
        assert f"{len(data[kind])} registered." in text


def test_the_cli_reference_lists_every_option_of_every_command():
    from privbench.cli.parser import build_parser

    text = cli_reference()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for flag in ("--version", "--traceback"):
        assert f"`{flag}`" in text
    for name, p in sub.choices.items():
        assert f"### `privbench {name}`" in text
        for action in p._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, (name, flag)


def test_list_json_is_the_catalogue(capsys):
    import json

    from privbench.cli.main import main

    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(catalogue(), default=str))


def test_version_flag(capsys):
    from privbench import __version__
    from privbench.cli.main import main

    with pytest.raises(SystemExit) as err:
        main(["--version"])
    assert err.value.code == 0
    assert capsys.readouterr().out.strip() == f"privbench {__version__}"


def test_the_results_pages_are_generated_from_the_stores():
    import warnings

    pages = sorted(p.relative_to(DOCS).as_posix() for p in (DOCS / "results").glob("*.md"))
    for page in pages:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a store line that is not a row is a failure
            text = render(page)
        assert "<!-- privbench:" not in text, page
    for page in ("results/headline.md", "results/defense-curve.md", "results/fedavp.md"):
        text = render(page)
        assert "<!-- privbench:" not in text
        assert re.search(r"^\| .* \|$", text, re.M), page


def test_the_readme_is_short_and_keeps_the_quickstart():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    install_run = (
        "python3 -m venv .venv && .venv/bin/pip install -e . && "
        ".venv/bin/python -m privbench run fedmix --attack dlg"
    )
    install_test = (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
        ".venv/bin/python -m pytest -q"
    )
    assert f"```bash\n{install_run}\n```" in text
    assert f"```bash\n{install_test}\n```" in text


def test_the_readme_reproduction_summary_is_the_stores_and_links_its_sections():
    pages = hooks()._pages()
    text = (ROOT / "README.md").read_text()
    start = text.index(pages.README_BEGIN) + len(pages.README_BEGIN)
    block = text[start : text.index(pages.README_END)].strip()
    assert block == pages.readme_verdicts(), "stale: run python benchmarks/pages.py --readme"
    # every source links a section of the reproductions page (MkDocs' and GitHub's slugs)
    headings = re.findall(r"^#+ (.+)$", (DOCS / "reproductions.md").read_text(), re.M)
    slugs = {re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower()) for h in headings}
    for name, (_, anchor) in pages.README_SOURCES.items():
        assert anchor in slugs, (name, anchor)
    assert set(pages.README_SOURCES) == set(pages.REPRODUCTIONS)


def test_the_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target


@pytest.mark.slow
def test_the_site_builds_in_strict_mode_with_the_generated_reference(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    reference = (site / "reference/plugins/index.html").read_text()
    for reg in registries().values():
        for name in reg.names():
            assert f"<code>{name}</code>" in reference, name
    cli = (site / "cli/index.html").read_text()
    assert "<code>--attack-round</code>" in cli
    assert (site / "figures/headline_frontier.png").stat().st_size > 1000
    api = (site / "reference/api/index.html").read_text()
    assert "attack_update" in api and "RunConfig" in api


def _cli_transcripts():
    """(page, argv, first printed line) of every ``$ python -m privbench ...`` line."""
    import shlex

    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("$ python -m privbench "):
                command = line.removeprefix("$ python -m privbench ").split(" | ")[0]
                following = lines[i + 1] if i + 1 < len(lines) else ""
                yield page.name, shlex.split(command), following


def test_every_cli_example_of_the_docs_is_a_valid_command(capsys):
    """Error transcripts are run and their message compared; the others (whose output
    has timings) must parse and resolve to a valid configuration."""
    from privbench.cli.main import main
    from privbench.cli.parser import build_parser, config_from_args

    seen = 0
    for page, argv, printed in _cli_transcripts():
        seen += 1
        if printed.startswith("privbench: error: "):
            assert main(argv) == 2, (page, argv)
            assert capsys.readouterr().err.strip() == printed, (page, argv)
        else:
            config_from_args(build_parser().parse_args(argv)).resolve()
    assert seen >= 10
