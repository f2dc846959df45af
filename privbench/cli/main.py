"""Command line: ``privbench run|list|sweep|table|plot|baseline|check``.

The flags and their parsing are in :mod:`privbench.cli.parser`; here each command runs
and prints. Bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from privbench import registries
from privbench.cli.parser import UsageError, build_parser, config_from_args
from privbench.errors import PrivbenchError


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_sweep(args: argparse.Namespace) -> int:
    from privbench.results import sweep

    grid = sweep.load_grid(args.grid)
    if args.dry_run:
        points, problems = sweep.expand(grid)
        if problems:
            raise PrivbenchError(
                f"invalid grid ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
            )
        todo = {p.index for p in sweep.pending(points, args.out)}
        again = {p.index for p in sweep.rejoined(points, args.out)} if args.rejoin else set()
        for p in points:
            state = "todo" if p.index in todo else "again" if p.index in again else "done"
            print(f"{p.index:4d} {state} {p.config_hash} privbench {' '.join(p.argv)}")
        return 0
    summary = sweep.run_sweep(
        grid,
        out=args.out,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        threads=args.threads,
        rejoin=args.rejoin,
    )
    print(
        f"{summary.points} points: {summary.skipped} already done, {summary.ran} run, "
        f"{summary.failed} with error rows; results in {os.path.join(args.out, 'results.jsonl')}"
    )
    return 0 if summary.failed == 0 else 1


def _rows(args: argparse.Namespace) -> list[dict]:
    """The rows of ``args.results``; with ``--grid``, only those of the grids' points."""
    from privbench.results.report import grid_rows, load_rows

    rows = load_rows(args.results)
    return grid_rows(rows, args.grid) if args.grid else rows


def cmd_table(args: argparse.Namespace) -> int:
    from privbench.results.report import format_table, summarize

    metrics = _split(args.metrics)
    summary = summarize(
        _rows(args),
        by=_split(args.by),
        metrics=metrics,
        all_attacks=args.all_attacks,
    )
    print(format_table(summary, metrics, args.format))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from privbench.results import write_json_atomic
    from privbench.results.report import make_baseline

    base = make_baseline(_rows(args))
    write_json_atomic(args.output, base)
    print(f"baseline of {len(base['groups'])} experiment(s) written to {args.output}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from privbench.results.plots import plot

    folder = args.results if os.path.isdir(args.results) else os.path.dirname(args.results)
    path = plot(args.kind, _rows(args), args.out, results_dir=folder or ".")
    print(f"wrote {path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from privbench.results.report import check

    report = check(
        _rows(args),
        args.baseline,
        psnr_tol=args.psnr_tol,
        ssim_tol=args.ssim_tol,
        acc_tol=args.acc_tol,
    )
    print(report.text())
    return 0 if report.ok else 1


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _human(n: int | None) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (1 KiB = 1024 B)."""
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def format_rows(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("method", "method"),
        ("attack", "attack"),
        ("defense", "defense"),
        ("dataset", "dataset"),
        ("accuracy", "acc"),
        ("client_acc_mean", "client acc"),
        ("macro_f1", "macro-F1"),
        ("psnr", "PSNR dB"),
        ("ssim", "SSIM"),
        ("label_acc", "label acc"),
        ("label_dist_error", "label-dist err"),
        ("bytes_up", "bytes up"),
        ("bytes_down", "bytes down"),
        ("epsilon", "epsilon"),
        ("wall_s", "wall s"),
        ("status", "status"),
    ]
    if any(r.get("synthetic_share") for r in rows):  # only methods that add synthetic data
        cols.insert(cols.index(("macro_f1", "macro-F1")) + 1, ("synthetic_share", "synthetic"))
    table = [[h for _, h in cols]]
    for r in rows:
        line = []
        for key, _ in cols:
            v = r.get(key)
            if key.startswith("bytes_"):
                line.append(_human(v))
            elif key in ("psnr", "wall_s"):
                line.append(_fmt(v, 2))
            else:
                line.append(_fmt(v))
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    for r in rows:
        kinds = ", ".join(
            f"{k} up {_human(v['up'])} / down {_human(v['down'])}"
            for k, v in (r.get("bytes_by_kind") or {}).items()
        )
        if kinds:
            out.append(f"  bytes by kind [{r['attack']}]: {kinds}")
        if r.get("error"):
            out.append(f"  error [{r['attack']}]: {r['error']}")
    return "\n".join(out)


def cmd_list(as_json: bool) -> int:
    from privbench.catalogue import catalogue
    from privbench.plugins import FAILED
    from privbench.tuning import FALLBACK_LR, defaults_table

    data = catalogue()
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for kind in registries():
        entries = data[kind]
        print(f"{kind}s:")
        width = max(len(n) for n in entries)
        for name, info in entries.items():
            params = " ".join(f"--{p.replace('_', '-')}" for p in info["params"])
            needs = f" (needs {'/'.join(info['consumes'])})" if "consumes" in info else ""
            shares = f" (shares {'/'.join(info['shares'])})" if "shares" in info else ""
            origin = f" (plugin from {info['origin']})" if info["origin"] != "privbench" else ""
            print(
                f"  {name.ljust(width)}  {info['description']}{needs}{shares}{origin}"
                + (f"  [{params}]" if params else "")
            )
        print()
    print("default learning rates (without --lr; tuned on a validation split):")
    for key, info in defaults_table().items():
        if info["lr"] != FALLBACK_LR or info["source"].startswith("tuned"):
            print(f"  {key}: {info['lr']:g}  ({info['source']})")
    print(f"  any other dataset/model: {FALLBACK_LR:g} (not tuned; the embedded data's default)")
    print()
    for f in FAILED:
        print(f"plugin '{f.name}' ({f.value}, from {f.distribution}) failed to load: {f.error}")
    return 0


def _wants_traceback(argv: list[str]) -> tuple[list[str], bool]:
    """``--traceback`` anywhere on the command line (or ``PRIVBENCH_TRACEBACK=1``): show
    the full traceback of an error, for debugging, after its one-line message."""
    env = os.environ.get("PRIVBENCH_TRACEBACK", "").strip().lower() in ("1", "true", "yes")
    return [a for a in argv if a != "--traceback"], env or "--traceback" in argv


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line as one line each, without the source line."""
    print(f"privbench: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv, show_traceback = _wants_traceback(list(sys.argv[1:] if argv is None else argv))
    if not show_traceback:
        import warnings

        warnings.showwarning = _one_line_warning
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return cmd_list(args.json)
        commands = {
            "sweep": cmd_sweep,
            "table": cmd_table,
            "baseline": cmd_baseline,
            "check": cmd_check,
            "plot": cmd_plot,
        }
        if args.command in commands:
            return commands[args.command](args)
        import privbench
        from privbench import progress
        from privbench.results import ResultStore

        progress.set_enabled(not args.no_progress and not args.json)
        config = config_from_args(args)
        store = None if args.no_save else ResultStore(args.out)
        # The CLI is a thin layer over the Python API: the same function, the same rows.
        rows = [
            r.to_dict()
            for r in privbench.run(config, out=store, checkpoint_every=args.checkpoint_every)
        ]
    except (UsageError, PrivbenchError) as err:
        if show_traceback:
            import traceback

            traceback.print_exc()
        print(f"privbench: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_rows(rows))
        if store is not None:
            print(f"rows appended to {store.path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def entry() -> int:
    """Console entry: ``main`` plus quiet handling of a closed pipe (``| head``)."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the interpreter's final
        # flush does not raise again, and exit like a process killed by SIGPIPE would.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(entry())
