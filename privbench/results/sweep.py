"""Sweeps: a TOML grid of ``privbench run`` options, every point its own process (points
that differ only in their attacks: one process, one training), one result store,
resumable.

    [sweep]                     # options every point shares (``privbench run`` flags)
    dataset = "digits"
    rounds = 3

    [grid]                      # lists are crossed, in this order
    method = ["fedavg", "fedmix"]
    attack = ["dlg", ["dlg", "ig"]]     # a list inside the list: several attacks, one run
    defense = ["none", "dp-sgd"]
    noise_multiplier = [0.5, 1.0]       # plugin flags reach only points whose plugins have them
    seed = [0, 1, 2]

    [[exclude]]                 # skip points matching every key given (repeatable)
    method = "localmix"
    defense = "dp-sgd"

    [[case]]                    # optional: options that go together, one case per
    method = "fedmix"           # point, crossed with the [grid] axes (innermost)
    attack = ["dlg", "averaged-data"]

Every point is validated before anything runs (all problems listed at once). Rows are
appended to ``OUT/results.jsonl`` by each point when it finishes (one locked write), so
killing a sweep, even with ``kill -9``, loses only the points in flight; a rerun skips
points whose attacks all have a settled row for the same configuration hash: ``ok``, or
an error a rerun would repeat (training diverged; ``store.settled``).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from privbench.errors import ParameterError, PrivbenchError
from privbench.results.sweep_todo import pending, rejoined, settled_attacks, together

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the standard library's parser, backported
    import tomli as tomllib

REPEATABLE = ("attack", "defense")


@dataclass
class Point:
    index: int
    options: dict[str, Any]
    argv: list[str]
    config: Any  # RunConfig, resolved
    config_hash: str
    attacks: tuple[str, ...]


def load_grid(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as err:
        raise ParameterError(f"Cannot read grid '{path}': {err.strerror}.") from err
    except tomllib.TOMLDecodeError as err:
        raise ParameterError(f"Grid '{path}' is not valid TOML: {err}.") from err


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _key(key: str) -> str:
    """An option's name as the parser stores it: ``noise_multiplier``, ``dp-sgd.clip``."""
    plugin, dot, param = key.rpartition(".")
    return f"{plugin}.{param.replace('-', '_')}" if dot else key.replace("-", "_")


def _dotted(table: Mapping[str, Any]) -> dict[str, Any]:
    """TOML's nested tables (``fedmix.lam = 0.1`` is ``{"fedmix": {"lam": 0.1}}``) as
    dotted plugin parameters."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{p}": v for p, v in value.items()})
        else:
            out[key] = value
    return out


def _argv(options: Mapping[str, Any], no_value_flags: set[str]) -> list[str]:
    argv = ["run", str(options["method"])]
    for key, value in options.items():
        if key == "method":
            continue
        if "." in key:  # a namespaced plugin parameter
            text = str(value).lower() if isinstance(value, bool) else str(value)
            argv += ["--set", f"{key}={text}"]
        elif key in REPEATABLE:
            for v in [value] if isinstance(value, str) else value:
                argv += [_flag(key), str(v)]
        elif key.replace("-", "_") in no_value_flags:
            if value:
                argv.append(_flag(key))
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            argv += [_flag(key), text]
    return argv


def expand(grid: Mapping[str, Any]) -> tuple[list[Point], list[str]]:
    """Every point of the grid, resolved; and the problems found (empty when valid)."""
    from privbench import registries
    from privbench.cli.parser import UsageError, build_parser, config_from_args

    problems: list[str] = []
    plugins = {n: kind for kind, reg in registries().items() for n in reg.names()}
    unknown_sections = set(grid) - {"sweep", "grid", "exclude", "case"} - set(plugins)
    if unknown_sections:
        problems.append(
            f"unknown section(s) {', '.join(sorted(unknown_sections))}; "
            "use [sweep], [grid], [[case]], [[exclude]] and tables named after a plugin "
            "([fedmix] lam = 0.1)."
        )
    excludes = grid.get("exclude", [])
    if not isinstance(excludes, list) or not all(isinstance(e, dict) and e for e in excludes):
        problems.append("[[exclude]] entries must be non-empty tables of option = value.")
        excludes = []
    fixed = _dotted(grid.get("sweep", {}))
    for name in sorted(set(grid) & set(plugins)):  # [fedmix] lam = 0.1: fixed, namespaced
        table = grid[name]
        if not isinstance(table, Mapping):
            problems.append(f"'{name}' must be a table of its parameters ([{name}]).")
            continue
        fixed.update({f"{name}.{p}": v for p, v in table.items()})
    axes = _dotted(grid.get("grid", {}))
    for key, values in axes.items():
        if not isinstance(values, list):
            problems.append(f"grid '{key}' must be a list of values, got {values!r}.")
        elif not values:
            problems.append(f"grid '{key}' is an empty list: the sweep would have no points.")
    cases = grid.get("case", [])
    if not isinstance(cases, list) or not all(isinstance(c, dict) and c for c in cases):
        problems.append("[[case]] entries must be non-empty tables of option = value.")
        cases = []
    cases = [_dotted(c) for c in cases] or [{}]  # no [[case]]: one empty case
    case_keys = list(dict.fromkeys(k for c in cases for k in c))
    for key in case_keys:
        if key in fixed or key in axes:
            where = "[sweep]" if key in fixed else "[grid]"
            problems.append(f"'{key}' is set both by [[case]] and by {where}: set it once.")
    if "method" not in fixed and "method" not in axes and "method" not in case_keys:
        problems.append("no 'method' given (in [sweep], [grid] or [[case]]).")
    if problems:
        return [], problems
    parser = build_parser()
    run_parser = parser._subparsers._group_actions[0].choices["run"]
    known = {a.dest for a in run_parser._actions} | {"method"}
    no_value = {a.dest for a in run_parser._actions if a.nargs == 0}
    for key in list(fixed) + list(axes) + case_keys:
        plugin, dot, param = _key(key).rpartition(".")
        if dot:
            if plugin not in plugins:
                problems.append(f"'{key}': no plugin is named '{plugin}'.")
            elif not any(
                q.name == param
                for kind, reg in registries().items()
                if plugin in reg
                for q in reg.entry(plugin).params
            ):
                problems.append(
                    f"'{key}': {plugins[plugin]} '{plugin}' has no parameter '{param}'."
                )
        elif key == "checkpoint_every":
            problems.append(
                "'checkpoint_every' is not a sweep option: every point checkpoints its "
                "rounds every 300 s and resumes on a rerun."
            )
        elif _key(key) not in known or key in ("help", "json", "no_save", "out", "set"):
            problems.append(f"'{key}' is not an option of `privbench run`.")
    if problems:
        return [], problems
    keys = list(axes)
    points: list[Point] = []
    hashes: set[str] = set()
    used: dict[str, bool] = {}
    plugin_keys = {_key(k) for k in list(fixed) + keys + case_keys}
    for key in {k for e in excludes for k in e} - set(keys) - set(fixed) - set(case_keys):
        problems.append(f"[[exclude]] names '{key}', which none of [sweep], [grid], [[case]] sets.")
    for i, (*combo, case) in enumerate(itertools.product(*(axes[k] for k in keys), cases)):
        options = {**fixed, **dict(zip(keys, combo, strict=True)), **case}
        if any(all(options.get(k) == v for k, v in e.items()) for e in excludes):
            continue
        argv = _argv(options, no_value) + ["--no-save"]
        unused: set[str] = set()
        try:
            raw = config_from_args(parser.parse_args(argv), unused=unused)
            for k in plugin_keys:
                used[k] = used.get(k, False) or k not in unused
            cfg = raw.resolve()
        except (UsageError, PrivbenchError) as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
            problems.append(f"point {i} ({shown}): {err}")
            continue
        # The point's own command line, without flags none of its plugins take.
        argv = _argv({k: v for k, v in options.items() if _key(k) not in unused}, no_value)
        if cfg.hash() in hashes:  # e.g. a plugin axis crossed with points that lack it
            continue  # the same configuration once: a second copy would duplicate rows
        hashes.add(cfg.hash())
        points.append(Point(i, options, argv, cfg, cfg.hash(), cfg.attack.names or ("none",)))
    if not points and not problems:
        problems.append("[[exclude]] removes every point of the grid: nothing would run.")
    for k, ok in used.items():
        if not ok:
            problems.append(f"'{k}' applies to no point of the grid (no chosen plugin has it).")
    return points, problems


def _run_points(
    argvs: list[list[str]], out: str, threads: int, again: bool = False
) -> list[list[str]]:
    """Worker: points of one training (:func:`together`), their rows appended to
    ``out``; returns each point's row statuses. ``again`` (``--rejoin``): every point
    runs, its rows appended beside the ones they replace."""
    import torch

    from privbench import progress
    from privbench.cli.parser import build_parser, config_from_args
    from privbench.pipeline import run_shared
    from privbench.results import ResultStore

    torch.set_num_threads(threads)
    progress.set_enabled(False)
    cfgs = [config_from_args(build_parser().parse_args(a), unused=set()) for a in argvs]
    store = ResultStore(out, skip_done=not again)  # else never a second row for what is done
    ok, resolved = settled_attacks(out), [c.resolve() for c in cfgs]
    names = [c.attack.names or ("none",) for c in resolved]
    todo = [
        i for i, c in enumerate(resolved) if again or not set(names[i]) <= ok.get(c.hash(), set())
    ]
    statuses = [["ok"] * len(n) for n in names]  # finished meanwhile by another sweep
    for i, rows in zip(todo, run_shared([cfgs[i] for i in todo], store=store), strict=True):
        statuses[i] = [r.status for r in rows]
    return statuses


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a worker ends when the sweep that started it ends (SIGTERM,
    SIGKILL, a crash), so no orphan appends a late row for a point a rerun also runs."""
    import ctypes
    import signal

    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is not None:  # Linux; elsewhere the skip-done append alone prevents duplicates
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above ran
        os._exit(1)


def _record_crash(point: Point, out: str, err: BaseException) -> None:
    """A point whose process died (killed, out of memory) still leaves error rows."""
    from privbench.pipeline import base_row
    from privbench.results import ResultStore

    rows = []
    for name in point.attacks:
        row = base_row(point.config, name)
        row.status, row.error = "error", f"worker failed: {type(err).__name__}: {err}"
        rows.append(row)
    ResultStore(out, skip_done=True).append(rows)


@dataclass
class SweepSummary:
    points: int
    skipped: int
    ran: int
    failed: int


def run_sweep(
    grid: Mapping[str, Any],
    *,
    out: str,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    on_done: Callable[[Point, list[str]], None] | None = None,
    threads: int | None = None,
    rejoin: bool = False,
) -> SweepSummary:
    """Run ``grid``'s pending points into ``out``; ``rejoin``: also run again, as one
    training, the points of each training whose stored runs disagree (:func:`rejoined`)."""
    if backend not in ("local", "ray"):
        raise ParameterError(f"The 'backend' parameter must be local or ray. Got {backend!r}.")
    if workers < 1:
        raise ParameterError(f"The 'workers' parameter must be >= 1. Got {workers} instead.")
    if threads is not None and threads < 1:
        raise ParameterError(f"The 'threads' parameter must be >= 1. Got {threads} instead.")
    points, problems = expand(grid)
    if problems:
        raise PrivbenchError(
            f"invalid grid ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    waiting = {p.index for p in pending(points, out)}
    again = {p.index for p in rejoined(points, out)} if rejoin else set()
    todo = [p for p in points if p.index in waiting | again]
    if threads is None:  # the machine's cores shared among the workers
        threads = max(1, (os.cpu_count() or 1) // workers)
    runner = _run_local if backend == "local" else _run_ray
    tasks = [(g, any(p.index in again for p in g)) for g in together(todo)]
    failed = runner(
        tasks, out=out, workers=workers, threads=threads, address=address, on_done=on_done
    )
    return SweepSummary(len(points), len(points) - len(todo), len(todo), failed)


def _run_local(tasks, *, out, workers, threads, address, on_done) -> int:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from privbench.progress import bar

    failed = 0
    ctx = mp.get_context("spawn")  # a fresh interpreter per point: no shared torch state
    with (
        bar(sum(len(g) for g, _ in tasks), "points", leave=True) as pbar,
        ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
            **_one_task_per_child(),
        ) as pool,
    ):
        futures = {
            pool.submit(_run_points, [p.argv for p in g], out, threads, again): g
            for g, again in tasks
        }
        for fut in as_completed(futures):
            failed += _collect(futures[fut], fut.result, out, pbar, on_done)
    return failed


def _collect(group: list[Point], fetch, out: str, pbar, on_done) -> int:
    """One finished task: each point's statuses, or error rows when its worker died;
    the number of points with a failed row."""
    try:
        per_point = fetch()
    except Exception as err:  # the worker or task died: record it, keep the sweep going
        for point in group:
            _record_crash(point, out, err)
        per_point = [["error"]] * len(group)
    failed = 0
    for point, statuses in zip(group, per_point, strict=True):
        pbar.update(1)
        if on_done:
            on_done(point, statuses)
        failed += any(s != "ok" for s in statuses)
    return failed


def _one_task_per_child() -> dict[str, int]:
    # Python >= 3.11: every point in a fresh process; 3.10 reuses pool workers.
    return {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}


def _run_ray(tasks, **kw) -> int:
    from privbench.results.sweep_ray import run_ray

    return run_ray(tasks, **kw)
