"""MkDocs hooks: the generated parts of the docs site.

A page line ``<!-- privbench:NAME -->`` is replaced when the site is built: ``cli-reference``
and ``plugin-reference`` come from the parser and the registries
(:mod:`privbench.catalogue`), ``metrics`` from the table command's metric registry, and
``results:*`` from the committed result stores (:mod:`benchmarks.pages`). The figures of
``benchmarks.pages.FIGURES`` are drawn from the stores into the site. An unknown name
fails the build.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!-- privbench:([a-z][a-z0-9:-]*) -->")


def _pages():
    """``benchmarks/pages.py`` (MkDocs restores ``sys.path`` after loading a hook, so the
    benchmark folder is put on it when the pages are needed)."""
    for path in (ROOT, ROOT / "benchmarks"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import pages

    return pages


def generators() -> dict:
    pages = _pages()

    from privbench.catalogue import cli_reference, plugin_reference
    from privbench.results.report import METRICS

    found = {
        "cli-reference": cli_reference,
        "plugin-reference": plugin_reference,
        "metrics": lambda: ", ".join(f"`{m}`" for m in METRICS),
    }
    found.update(pages.TABLES)
    return found


def render(markdown: str, where: str = "page") -> str:
    """``markdown`` with every generated block filled in."""
    found = generators()

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in found:
            raise PluginError(
                f"{where}: unknown generated block '{name}'; known: {', '.join(sorted(found))}"
            )
        return found[name]()

    return MARK.sub(fill, markdown)


def on_page_markdown(markdown, page, config, files):
    return render(markdown, page.file.src_uri)


def on_files(files, config):
    pages = _pages()

    out = Path(tempfile.mkdtemp(prefix="privbench-docs-"))
    for uri, draw in pages.FIGURES.items():
        target = out / uri
        target.parent.mkdir(parents=True, exist_ok=True)
        draw(str(target))
        files.append(File.generated(config, uri, abs_src_path=str(target)))
    return files
