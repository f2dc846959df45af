"""What every reproduction script shares: where MNIST comes from, the resumable run loop
over a privbench ResultStore, and grouping rows for the tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable

import numpy as np

import privbench
from privbench import ResultStore, RunConfig
from privbench.results.report import is_default_run
from privbench.results.store import diverged


def add_data_root(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--data-root",
        default=os.environ.get("PRIVBENCH_DATA_ROOT"),
        help="the folder holding MNIST/ and FashionMNIST/ (default: PRIVBENCH_DATA_ROOT)",
    )


def use_data_root(root: str | None) -> None:
    """Make ``--data-root`` the root every run of this process reads."""
    if root:
        os.environ["PRIVBENCH_DATA_ROOT"] = root


def parser(
    doc: str, *, out, seeds: int, rounds: int | None = None, train_size: int | None = 12000
) -> argparse.ArgumentParser:
    """The options every reproduction takes (``--seeds``, ``--rounds``, ``--train-size``,
    ``--data-root``, ``--out``, with the script's defaults); the script adds its own."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=seeds)
    if rounds is not None:
        ap.add_argument("--rounds", type=int, default=rounds)
    if train_size is not None:
        ap.add_argument("--train-size", type=int, default=train_size)
    add_data_root(ap)
    ap.add_argument("--out", default=str(out))
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``--data-root`` then holds for every run of the process."""
    args = ap.parse_args(argv)
    use_data_root(args.data_root)
    return args


def partition_name(partitions: dict[str, tuple[str, dict]], config: dict) -> str:
    """The name in ``partitions`` ({name: (kind, params)}) of a row config's partition;
    its kind when none matches."""
    return next(
        (
            name
            for name, (kind, params) in partitions.items()
            if kind == config["partition"]
            and all(config["partition_params"].get(k) == v for k, v in params.items())
        ),
        config["partition"],
    )


def verdict(passed: int, of: int) -> str:
    """A claim's verdict from how many of its ``of`` checks passed."""
    return "holds" if passed == of else "partly" if passed else "does not hold"


def measure(todo: Iterable[tuple[tuple, RunConfig]], store: ResultStore, data=None) -> None:
    """Run every (label, config) that has no ok row in ``store`` yet, one row each as it
    finishes (a killed script resumes where it stopped). ``data``: a provided dataset
    (a validation split) that replaces the config's."""
    done = store.finished_hashes()
    provided = frozenset({"dataset"}) if data is not None else frozenset()
    for label, cfg in todo:
        if cfg.resolve(provided=provided).hash() in done:
            continue
        (row,) = privbench.run(cfg, data=data, out=store)
        print(f"  {label}: {row.status} acc {row.accuracy}", flush=True)


def seed_major(points: list[tuple[tuple, RunConfig]]) -> list[tuple[tuple, RunConfig]]:
    """The same runs, every configuration's seed 0 first: an interrupted grid then
    covers every cell with one seed before it adds the next."""
    return sorted(points, key=lambda p: p[1].seed)


def current(rows: Iterable[dict]) -> list[dict]:
    """The rows today's code would write for the grids' configurations, at today's
    defaults (``is_default_run``): a run under a default changed since (the ``cnn``'s
    PyTorch init before He) stays in the store, out of the tables and the searches, and
    its point runs again."""
    return [r for r in rows if is_default_run(r)]


def group(rows: Iterable[dict], key: Callable[[dict], tuple]) -> dict[tuple, list[dict]]:
    """The ok rows of ``rows`` by ``key(row)``."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            out.setdefault(key(r), []).append(r)
    return out


def lost_runs(rows: Iterable[dict], key: Callable[[dict], tuple]) -> dict[tuple, int]:
    """How many runs per ``key(row)`` diverged (NaN or infinite weights at the learning
    rate every method shares): they left no model, so no mean holds them, and a table or
    verdict that drops them must say how many it dropped (:func:`runs`, :func:`lost`)."""
    out: dict[tuple, int] = {}
    for r in rows:
        if diverged(r):
            out[key(r)] = out.get(key(r), 0) + 1
    return out


def tabled(
    rows: Iterable[dict], key: Callable[[dict], tuple]
) -> tuple[dict[tuple, list[dict]], dict[tuple, int]]:
    """A table's lines: the ok rows by ``key`` (:func:`group`), with an empty line for a
    key whose every run diverged, and the diverged runs by key (:func:`lost_runs`)."""
    rows = list(rows)
    groups, gone = group(rows, key), lost_runs(rows, key)
    for k in gone:
        groups.setdefault(k, [])
    return groups, gone


def diverged_in(n: int, finished: int = 0) -> str:
    """'diverged in n of m runs': ``n`` diverged runs among ``n + finished``."""
    of = n + finished
    return f"diverged in {n} of {of} run{'s' * (of > 1)}"


def runs(finished: int, lost: int) -> str:
    """A table's runs cell: the runs its means hold, and any that diverged beside them."""
    return f"{finished} + {lost} diverged" if lost else str(finished)


def lost(finished: int, n: int) -> str:
    """A verdict's note on a mean that leaves ``n`` diverged runs out ("" for none)."""
    return f" ({diverged_in(n, finished)}, left out)" if n else ""


def mean_std(values: Iterable[float | None], digits: int = 2) -> str:
    """'mean ± std' over seeds (population std) at ``digits`` decimals, the value alone
    for one seed, '-' for none (privbench's report format, with a chosen precision)."""
    arr = np.array([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return "-"
    f = f"{{:.{digits}f}}"
    return f"{f.format(arr.mean())} ± {f.format(arr.std())}" if len(arr) > 1 else f.format(arr[0])
