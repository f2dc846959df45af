"""The flag grammar of the command line (``privbench run`` and sweep grids alike).

Plugin parameters become flags automatically (``--alpha`` for the Dirichlet partition,
``--iters`` for the attacks, ...), built from the registries, so the CLI never lists
a plugin or a parameter by hand. Bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from privbench import registries
from privbench.adversary import expand_attacks
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

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_args(expand_namespaced(args), namespace)


CKPT = (
    "save the run's state in OUT/checkpoints every S seconds (0: every round); the same "
    "command resumes from it (default: 300)"
)


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
    from privbench import __version__

    parser.add_argument("--version", action="version", version=f"privbench {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, also print the full traceback (anywhere on the command line; "
        "or PRIVBENCH_TRACEBACK=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train federated, attack, print and store result rows")
    run.add_argument("method", help="augmentation method: " + ", ".join(regs["method"].names()))
    g = run.add_argument_group("experiment")
    g.add_argument(
        "--attack",
        action="append",
        default=[],
        help="attack to run (repeatable): "
        + ", ".join(regs["attack"].names())
        + "; NAME@GUESS sets a gradient attack's guess (dlg@enumerate); all-gradient runs "
        "every gradient attack and guess that applies, plus a worst-case row",
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
    f.add_argument(
        "--client-sampling",
        default=d.fed.client_sampling,
        help="fixed: round(fraction * clients) per round; poisson: each client with "
        "probability fraction (what client-level DP accounts); auto: poisson under central "
        "client-dp, else fixed",
    )
    f.add_argument("--rounds", type=int, default=d.fed.rounds)
    f.add_argument("--local-epochs", type=int, default=d.fed.local_epochs)
    f.add_argument("--batch-size", type=int, default=d.fed.batch_size)
    f.add_argument(
        "--lr",
        type=float,
        default=d.fed.lr,
        help="client SGD learning rate (default: tuned per dataset x model; `privbench list`)",
    )
    f.add_argument("--optimizer", choices=("sgd", "adam"), default=d.fed.optimizer)
    f.add_argument("--local-weight-decay", type=float, default=d.fed.weight_decay)
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
    a.add_argument("--victims", type=int, default=d.attack.victims, help="attacked: clients 0..N-1")
    a.add_argument(
        "--attack-batch", type=int, default=d.attack.batch, help="images per victim step"
    )
    a.add_argument(
        "--victim-steps",
        type=int,
        default=d.attack.steps,
        help="1: victim sends a gradient (FedSGD); >1: a multi-step update",
    )
    o = run.add_argument_group("data and output")
    o.add_argument(
        "--data-root",
        default=None,
        help="folder of file-backed datasets (torchvision layout: MNIST/raw, FashionMNIST/raw, "
        "...); torchvision datasets default to $PRIVBENCH_DATA_ROOT, else ./data",
    )
    o.add_argument("--download", action="store_true", help="download torchvision data")
    o.add_argument("--out", default="privbench-results", help="result folder")
    o.add_argument("--no-save", action="store_true", help="do not write results")
    o.add_argument("--checkpoint-every", type=float, default=300.0, metavar="S", help=CKPT)
    o.add_argument("--json", action="store_true", help="print rows as a JSON list only")
    o.add_argument("--no-progress", action="store_true")
    p = run.add_argument_group(
        "plugin parameters",
        "PLUGIN.PARAM names one chosen plugin's parameter: --set fedmix.lam=0.1 or "
        "--fedmix.lam 0.1 (repeatable). The flat flags below reach the chosen plugin that "
        "declares them; one that two chosen plugins declare must be given namespaced.",
    )
    p.add_argument(
        "--set",
        dest="namespaced",
        action="append",
        default=[],
        metavar="PLUGIN.PARAM=VALUE",
        help="a parameter of one chosen plugin (also --PLUGIN.PARAM VALUE)",
    )
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
    sw.add_argument("--threads", type=int, help="torch threads per point (default: cores/workers)")
    sw.add_argument("--address", default=None, help="Ray cluster address (ray backend)")
    sw.add_argument("--out", default="privbench-results", help="result folder")
    sw.add_argument("--dry-run", action="store_true", help="validate and list the points only")
    rejoin = "also rerun, as one training, points whose stored runs of one training disagree"
    sw.add_argument("--rejoin", action="store_true", help=rejoin + " (made on two CPUs)")

    from privbench.results.report import DEFAULT_BY, DEFAULT_METRICS, METRICS

    tb = sub.add_parser("table", help="mean ± std over seeds of result rows")
    tb.add_argument("results", help="result folder or results.jsonl")
    tb.add_argument("--by", default=",".join(DEFAULT_BY), help="grouping columns")
    tb.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help="comma-separated; any of " + ", ".join(METRICS),
    )
    tb.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    tb.add_argument(
        "--all-attacks",
        action="store_true",
        help="show every gradient attack's row, not only the run's worst-case row",
    )

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
    for p in (tb, pl, bl, ck):
        p.add_argument("--grid", action="append", help="only the points of this grid file")
    return parser


def expand_namespaced(argv: list[str]) -> list[str]:
    """``--PLUGIN.PARAM VALUE`` and ``--PLUGIN.PARAM=VALUE`` as ``--set PLUGIN.PARAM=VALUE``
    (argparse cannot declare a flag per plugin and parameter)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if "." not in name:
            out.append(token)
        elif eq:
            out += ["--set", f"{name}={value}"]
        elif i + 1 < len(argv):
            out += ["--set", f"{name}={argv[i + 1]}"]
            i += 1
        else:
            raise UsageError(f"argument --{name}: expected one argument")
        i += 1
    return out


def _namespaced(entries: list[str]) -> dict[str, str]:
    """``["fedmix.lam=0.1"]`` -> ``{"fedmix.lam": "0.1"}`` (a later entry wins)."""
    out = {}
    for entry in entries:
        key, eq, value = entry.partition("=")
        plugin, dot, param = key.strip().rpartition(".")
        if not (eq and dot and plugin and param):
            raise UsageError(
                f"argument --set: expected PLUGIN.PARAM=VALUE (e.g. fedmix.lam=0.1), got {entry!r}"
            )
        out[f"{plugin}.{param.replace('-', '_')}"] = value
    return out


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
        "attack": list(expand_attacks(args.attack, args.method)),
        "defense": args.defense,
    }
    regs = registries()
    problems = []
    for dest in plugin_flags():
        value = getattr(args, dest)
        if value is None:
            continue
        # A flat flag goes to the one chosen plugin (of any kind) that declares it.
        owners = [
            (k, n)
            for k, names in chosen.items()
            for n in names
            if n in regs[k] and any(q.name == dest for q in regs[k].entry(n).params)
        ]
        kinds = [k for k, _ in owners]
        if len(owners) > 1:
            flag = dest.replace("_", "-")
            problems.append(
                f"--{flag} is a parameter of {' and '.join(f'{k} {n!r}' for k, n in owners)}; "
                f"name the plugin: {' or '.join(f'--{n}.{flag} {value}' for _, n in owners)} "
                f"(or --set PLUGIN.{dest}={value})."
            )
            continue
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
        for k, n in owners:
            if k in ("attack", "defense"):  # several of a kind: params per plugin
                slots[KIND_FIELDS[k]].setdefault(n, {})[dest] = value
            else:
                slots[KIND_FIELDS[k]][dest] = value
    namespaced = _namespaced(getattr(args, "namespaced", None) or [])
    if unused is not None:  # sweeps crossing plugins: drop what no chosen plugin is named
        names = {n for ns in chosen.values() for n in ns}
        for key in [k for k in namespaced if k.rpartition(".")[0] not in names]:
            unused.add(key)
            del namespaced[key]
    if problems:
        raise PrivbenchError(" ".join(problems))
    config = RunConfig(
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
            client_sampling=args.client_sampling,
            rounds=args.rounds,
            local_epochs=args.local_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            weight_decay=args.local_weight_decay,
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
    return config.with_params(namespaced) if namespaced else config
