"""Command line: ``privbench run|list|sweep|table|plot|baseline|check``.

Plugin parameters become flags automatically (``--alpha`` for the Dirichlet partition,
``--iters`` for the attacks, ...), built from the registries, so the CLI never lists
a plugin or a parameter by hand. Bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from privbench import registries
from privbench.config import DEFAULT_MODEL, AttackConfig, FedConfig, RunConfig, default_model_for
from privbench.errors import PrivbenchError

KIND_FIELDS = {  # registry kind -> the RunConfig slot its chosen plugin's params go to
    "method": "method_params",
    "dataset": "dataset_params",
    "partition": "partition_params",
    "model": "model_params",
    "algorithm": "algorithm_params",
    "threat": "threat_params",
    "attack": "attack_params",
    "defense": "defense_params",
}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise UsageError(message)


def plugin_flags() -> dict[str, tuple[str, Any]]:
    """flag dest -> (kind, Param) for every plugin parameter; a name is one flag."""
    flags: dict[str, tuple[str, Any]] = {}
    for kind, reg in registries().items():
        for name in reg.names():
            for p in reg.entry(name).params:
                flags.setdefault(p.name, (kind, p))
    return flags


def build_parser() -> argparse.ArgumentParser:
    regs = registries()
    d = RunConfig()
    parser = _Parser(prog="privbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train federated, attack, print and store result rows")
    run.add_argument("method", help="augmentation method: " + ", ".join(regs["method"].names()))
    g = run.add_argument_group("experiment")
    g.add_argument(
        "--attack",
        action="append",
        default=[],
        help="attack to run (repeatable): " + ", ".join(regs["attack"].names()),
    )
    g.add_argument(
        "--defense",
        action="append",
        default=[],
        help="defense (repeatable): " + ", ".join(regs["defense"].names()),
    )
    g.add_argument(
        "--dataset",
        default=d.dataset,
        help=", ".join(regs["dataset"].names())
        + ", or an import string pkg.mod:load (returns tensors, a Dataset or a DataBundle)",
    )
    g.add_argument("--partition", default=d.partition, help=", ".join(regs["partition"].names()))
    g.add_argument(
        "--model",
        default=d.model,
        help=", ".join(regs["model"].names())
        + ", or an import string pkg.mod:make_net (called as make_net(shape, num_classes)); "
        f"default: the method's own (cnn-bn for zdac/zdas), else {DEFAULT_MODEL}",
    )
    g.add_argument(
        "--algorithm", default=d.fed.algorithm, help=", ".join(regs["algorithm"].names())
    )
    g.add_argument("--threat", default=d.attack.threat, help=", ".join(regs["threat"].names()))
    g.add_argument("--seed", type=int, default=d.seed)
    f = run.add_argument_group("federated training")
    f.add_argument("--clients", type=int, default=d.fed.clients)
    f.add_argument(
        "--fraction", type=float, default=d.fed.fraction, help="share of clients sampled per round"
    )
    f.add_argument("--rounds", type=int, default=d.fed.rounds)
    f.add_argument("--local-epochs", type=int, default=d.fed.local_epochs)
    f.add_argument("--batch-size", type=int, default=d.fed.batch_size)
    f.add_argument("--lr", type=float, default=d.fed.lr, help="client SGD learning rate")
    f.add_argument("--local-test-fraction", type=float, default=d.fed.local_test_fraction)
    f.add_argument(
        "--eval-every",
        type=int,
        default=d.fed.eval_every,
        help="evaluate every N rounds (0: only at the end)",
    )
    f.add_argument(
        "--sequential-clients",
        dest="vectorise",
        action="store_false",
        help="train a round's clients one by one instead of as one vectorised computation "
        "(same results within float rounding; the reference path)",
    )
    a = run.add_argument_group("what is attacked")
    a.add_argument("--attack-round", type=int, default=d.attack.round)
    a.add_argument(
        "--victims",
        type=int,
        default=d.attack.victims,
        help="number of attacked clients (clients 0..N-1)",
    )
    a.add_argument(
        "--attack-batch",
        type=int,
        default=d.attack.batch,
        help="images in each victim's attacked step",
    )
    a.add_argument(
        "--victim-steps",
        type=int,
        default=d.attack.steps,
        help="1: victim sends a gradient (FedSGD); >1: a multi-step update",
    )
    o = run.add_argument_group("data and output")
    o.add_argument("--data-root", default=None, help="folder of torchvision datasets")
    o.add_argument("--download", action="store_true", help="download torchvision data")
    o.add_argument("--out", default="privbench-results", help="result folder")
    o.add_argument("--no-save", action="store_true", help="do not write results")
    o.add_argument("--json", action="store_true", help="print rows as a JSON list only")
    o.add_argument("--no-progress", action="store_true")
    p = run.add_argument_group("plugin parameters (apply to the chosen plugin that has them)")
    taken = {a.dest for a in run._actions}
    for dest, (kind, spec) in sorted(plugin_flags().items()):
        if dest in taken:
            raise RuntimeError(f"plugin parameter '{dest}' of a {kind} shadows a core flag")
        owners = [
            n
            for n in registries()[kind].names()
            if any(q.name == dest for q in registries()[kind].entry(n).params)
        ]
        p.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            default=None,
            metavar="V",
            help=f"{spec.help} [{kind} {', '.join(owners)}; default {spec.default}]",
        )

    ls = sub.add_parser("list", help="list every registered plugin with a description")
    ls.add_argument("--json", action="store_true")

    sw = sub.add_parser("sweep", help="run a TOML grid of `run` options, resumably")
    sw.add_argument("grid", help="TOML file with [sweep] (shared options) and [grid] (lists)")
    sw.add_argument("--backend", choices=("local", "ray"), default="local")
    sw.add_argument("--workers", type=int, default=1, help="points run at once")
    sw.add_argument("--address", default=None, help="Ray cluster address (ray backend)")
    sw.add_argument("--out", default="privbench-results", help="result folder")
    sw.add_argument("--dry-run", action="store_true", help="validate and list the points only")

    from privbench.report import DEFAULT_BY, DEFAULT_METRICS, METRICS

    tb = sub.add_parser("table", help="mean ± std over seeds of result rows")
    tb.add_argument("results", help="result folder or results.jsonl")
    tb.add_argument("--by", default=",".join(DEFAULT_BY), help="grouping columns")
    tb.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help="comma-separated; any of " + ", ".join(METRICS),
    )
    tb.add_argument("--format", choices=("md", "csv", "latex"), default="md")

    bl = sub.add_parser("baseline", help="write per-experiment means as a regression baseline")
    bl.add_argument("results")
    bl.add_argument("-o", "--output", required=True, help="baseline JSON file to write")

    pl = sub.add_parser("plot", help="frontier, reconstruction grid or learning curves (PNG)")
    pl.add_argument("results")
    pl.add_argument("--kind", choices=("frontier", "reconstructions", "curves"), required=True)
    pl.add_argument("--out", required=True, help="PNG file to write")

    ck = sub.add_parser("check", help="exit 1 when leakage rose or accuracy fell vs a baseline")
    ck.add_argument("results")
    ck.add_argument("--baseline", required=True)
    ck.add_argument("--psnr-tol", type=float, default=1.0, help="dB PSNR may rise")
    ck.add_argument("--ssim-tol", type=float, default=0.02, help="SSIM may rise")
    ck.add_argument("--acc-tol", type=float, default=0.02, help="accuracy may fall")
    return parser


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_sweep(args: argparse.Namespace) -> int:
    from privbench import sweep

    grid = sweep.load_grid(args.grid)
    if args.dry_run:
        points, problems = sweep.expand(grid)
        if problems:
            raise PrivbenchError(
                f"invalid grid ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
            )
        todo = {p.index for p in sweep.pending(points, args.out)}
        for p in points:
            state = "todo" if p.index in todo else "done"
            print(f"{p.index:4d} {state} {p.config_hash} privbench {' '.join(p.argv)}")
        return 0
    summary = sweep.run_sweep(
        grid, out=args.out, backend=args.backend, workers=args.workers, address=args.address
    )
    print(
        f"{summary.points} points: {summary.skipped} already done, {summary.ran} run, "
        f"{summary.failed} with error rows; results in {os.path.join(args.out, 'results.jsonl')}"
    )
    return 0 if summary.failed == 0 else 1


def cmd_table(args: argparse.Namespace) -> int:
    from privbench.report import format_table, load_rows, summarize

    metrics = _split(args.metrics)
    summary = summarize(load_rows(args.results), by=_split(args.by), metrics=metrics)
    print(format_table(summary, metrics, args.format))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from privbench.report import load_rows, make_baseline
    from privbench.results import write_json_atomic

    base = make_baseline(load_rows(args.results))
    write_json_atomic(args.output, base)
    print(f"baseline of {len(base['groups'])} experiment(s) written to {args.output}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from privbench.plots import plot
    from privbench.report import load_rows

    folder = args.results if os.path.isdir(args.results) else os.path.dirname(args.results)
    path = plot(args.kind, load_rows(args.results), args.out, results_dir=folder or ".")
    print(f"wrote {path}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from privbench.report import check, load_rows

    report = check(
        load_rows(args.results),
        args.baseline,
        psnr_tol=args.psnr_tol,
        ssim_tol=args.ssim_tol,
        acc_tol=args.acc_tol,
    )
    print(report.text())
    return 0 if report.ok else 1


def config_from_args(args: argparse.Namespace, *, unused: set[str] | None = None) -> RunConfig:
    """The run's configuration. A plugin flag that no chosen plugin declares is an error,
    or, when ``unused`` is a set (sweeps crossing plugins), dropped and added to it."""
    slots: dict[str, dict[str, Any]] = {v: {} for v in KIND_FIELDS.values()}
    chosen = {
        "method": [args.method],
        "dataset": [args.dataset],
        "partition": [args.partition],
        "model": [args.model or default_model_for(args.method)],
        "algorithm": [args.algorithm],
        "threat": [args.threat],
        "attack": args.attack,
        "defense": args.defense,
    }
    regs = registries()
    problems = []
    for dest in plugin_flags():
        value = getattr(args, dest)
        if value is None:
            continue
        # A flag goes to every chosen plugin (of any kind) that declares it.
        kinds = [
            k
            for k, names in chosen.items()
            if any(
                n in regs[k] and any(q.name == dest for q in regs[k].entry(n).params) for n in names
            )
        ]
        if not kinds and unused is not None:
            unused.add(dest)
            continue
        if not kinds:
            owners = sorted(
                {
                    f"{k} '{n}'"
                    for k, reg in regs.items()
                    for n in reg.names()
                    if any(q.name == dest for q in reg.entry(n).params)
                }
            )
            problems.append(
                f"--{dest.replace('_', '-')} is not a parameter of any chosen "
                f"plugin (it belongs to {', '.join(owners)})."
            )
            continue
        for k in kinds:
            slots[KIND_FIELDS[k]][dest] = value
    if problems:
        raise PrivbenchError(" ".join(problems))
    return RunConfig(
        method=args.method,
        method_params=slots["method_params"],
        dataset=args.dataset,
        dataset_params=slots["dataset_params"],
        partition=args.partition,
        partition_params=slots["partition_params"],
        model=args.model,
        model_params=slots["model_params"],
        defenses=tuple(n for n in args.defense if n != "none"),
        defense_params=slots["defense_params"],
        fed=FedConfig(
            algorithm=args.algorithm,
            algorithm_params=slots["algorithm_params"],
            clients=args.clients,
            fraction=args.fraction,
            rounds=args.rounds,
            local_epochs=args.local_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            local_test_fraction=args.local_test_fraction,
            eval_every=args.eval_every,
            vectorise=args.vectorise,
        ),
        attack=AttackConfig(
            names=tuple(dict.fromkeys(n for n in args.attack if n != "none")),
            params=slots["attack_params"],
            threat=args.threat,
            threat_params=slots["threat_params"],
            round=args.attack_round,
            victims=args.victims,
            batch=args.attack_batch,
            steps=args.victim_steps,
        ),
        seed=args.seed,
        data_root=args.data_root,
        download=args.download,
    )


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


def _describe(entry) -> dict[str, Any]:
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


def cmd_list(as_json: bool) -> int:
    from privbench.plugins import FAILED

    data: dict[str, Any] = {
        kind: {name: _describe(reg.entry(name)) for name in reg.names()}
        for kind, reg in registries().items()
    }
    if as_json:
        data["failed_plugins"] = [f.__dict__ for f in FAILED]
        print(json.dumps(data, indent=2, default=str))
        return 0
    for kind, entries in data.items():
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
    for f in FAILED:
        print(f"plugin '{f.name}' ({f.value}, from {f.distribution}) failed to load: {f.error}")
    return 0


def main(argv: list[str] | None = None) -> int:
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
        rows = [r.to_dict() for r in privbench.run(config, out=store)]
    except (UsageError, PrivbenchError) as err:
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
