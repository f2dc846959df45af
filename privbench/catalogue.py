"""The machine-readable catalogue of everything registered, and the reference pages built
from it.

``privbench list --json`` prints :func:`catalogue`; the docs site's CLI and plugin
reference pages are :func:`cli_reference` and :func:`plugin_reference`, generated when
the site is built, so they cannot drift from the registries and the parser.
"""

from __future__ import annotations

import argparse
from typing import Any

from privbench import registries

KINDS_TITLE = {
    "method": "Methods (augmentation)",
    "attack": "Attacks",
    "defense": "Defenses",
    "dataset": "Datasets",
    "partition": "Partitions",
    "model": "Models",
    "algorithm": "Federated algorithms",
    "threat": "Threat models",
}


def describe(entry) -> dict[str, Any]:
    """One registry entry as plain data: description, origin, parameters, messages."""
    info: dict[str, Any] = {
        "description": entry.description,
        "origin": entry.origin,
        "params": {
            p.name: {"default": p.default, "allowed": p.allowed(), "help": p.help}
            for p in entry.params
        },
    }
    # What crosses the channel for this plugin: what a method shares, what an attack needs.
    for attr in ("shares", "consumes"):
        kinds = getattr(entry.factory, attr, None)
        if kinds:
            info[attr] = list(kinds)
    return info


def catalogue() -> dict[str, Any]:
    """Every registered plugin by kind, the tuned default learning rates and the plugins
    that failed to load: what ``privbench list --json`` prints."""
    from privbench.plugins import FAILED
    from privbench.tuning import defaults_table

    data: dict[str, Any] = {
        kind: {name: describe(reg.entry(name)) for name in reg.names()}
        for kind, reg in registries().items()
    }
    data["default_lr"] = defaults_table()
    data["failed_plugins"] = [f.__dict__ for f in FAILED]
    return data


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    return f"`{value}`" if value not in (None, "") else ""


def plugin_reference() -> str:
    """Markdown: one section per kind, one subsection per plugin with its parameters."""
    data = catalogue()
    out: list[str] = []
    for kind, title in KINDS_TITLE.items():
        entries = data[kind]
        out += [f"## {title}", "", f"{len(entries)} registered.", ""]
        for name, info in entries.items():
            out += [f"### `{name}`", "", _cell(info["description"]) + ".", ""]
            notes = []
            if info["origin"] != "privbench":
                notes.append(f"plugin from `{info['origin']}`")
            if "shares" in info:
                notes.append("shares " + ", ".join(f"`{k}`" for k in info["shares"]))
            if "consumes" in info:
                notes.append("needs " + ", ".join(f"`{k}`" for k in info["consumes"]))
            if notes:
                out += ["; ".join(notes).capitalize() + ".", ""]
            if not info["params"]:
                out += ["No parameters.", ""]
                continue
            out += ["| parameter | flag | default | allowed | meaning |", "|---|---|---|---|---|"]
            for pname, p in info["params"].items():
                dashed = pname.replace("_", "-")
                flag = f"`--{dashed}`, `--{name}.{dashed}`"
                out.append(
                    f"| `{pname}` | {flag} | {_code(p['default'])} | {_cell(p['allowed'])} "
                    f"| {_cell(p['help'])} |"
                )
            out.append("")
    lrs = data["default_lr"]
    out += [
        "## Default learning rates",
        "",
        "Used when a run gives no `--lr` (see [tuning](../cli.md#default-learning-rates)).",
        "",
        "| dataset/model | lr | source |",
        "|---|---|---|",
    ]
    out += [f"| `{k}` | {v['lr']:g} | {_cell(v['source'])} |" for k, v in lrs.items()]
    return "\n".join(out) + "\n"


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        out += [f"**{group.title}**", ""]
        if group.description:
            out += [_cell(group.description), ""]
        out += ["| option | default | meaning |", "|---|---|---|"]
        for a in actions:
            name = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.dest.upper()}`"
            default = a.default
            if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                default = "off"
            elif default in ([], None, argparse.SUPPRESS):
                default = None
            meaning = a.help or ""
            if a.choices:
                meaning = (
                    (meaning + "; " if meaning else "")
                    + "one of "
                    + ", ".join(f"`{c}`" for c in a.choices)
                )
            out.append(f"| {name} | {_code(default)} | {_cell(meaning)} |")
        out.append("")
    return out


def cli_reference() -> str:
    """Markdown: every subcommand of ``privbench`` with every option, from the parser."""
    from privbench.cli.parser import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out: list[str] = [
        "### `privbench`",
        "",
        "Options before (or, for `--traceback`, anywhere after) the command.",
        "",
    ]
    top = argparse.ArgumentParser(add_help=False)
    group = top.add_argument_group("options")
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            group._group_actions.append(action)
    out += _options(top)
    for name, p in sub.choices.items():
        usage = " ".join(p.format_usage().split())
        usage = usage.removeprefix("usage: ")
        out += [f"### `privbench {name}`", "", _cell(helps.get(name, "")) + ".", ""]
        if len(usage) < 200:
            out += ["```", usage, "```", ""]
        out += _options(p)
    return "\n".join(out)
