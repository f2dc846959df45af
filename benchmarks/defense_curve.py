"""Defenses' privacy-utility curve: leakage and accuracy as the noise or pruning grows,
with the formal epsilon of every point, >= 3 seeds.

Setups: `photos` with `lenet-sigmoid` (DLG, iDLG), `digits` with `cnn` (DLG, iDLG, IG)
and `mnist` (the 12,000-image training subset of the reproductions and the MNIST
headline, full test set; needs ``--data-root`` or PRIVBENCH_DATA_ROOT) with
`lenet-sigmoid` at its tuned learning rate (DLG, iDLG, IG); 10 clients, Dirichlet 0.5,
10 rounds, the server attacks one victim's FedSGD
gradient of a single image in round 0. The attacker is the strongest the threat model
allows: it knows every public knob of the defense (clip norms: it clips its dummy
gradient alike; the pruning mask: it masks its simulated message with the observed
zeros), runs each attack with 4 batched restarts, and the run's worst-case row takes
per victim the attack that leaked most (raw PSNR and ``psnr_affine``). ε is reported
per level (record for DP-SGD, client for DP-FedAvg), never summed. Points: no defense;
`dp-sgd` as sigma grows (C = 1); `client-dp` central and local as z grows (C = 1);
`prune` as the fraction grows; and on FedMix, `artifact-noise` on the shared means as
sigma grows (attacked by `averaged-data`).

Rows go to a result store (``--out``), so an interrupted run resumes where it stopped
and the setups can run as separate processes:

    python benchmarks/defense_curve.py --seeds 3 --setup photos &
    python benchmarks/defense_curve.py --seeds 3 --setup digits
    python benchmarks/defense_curve.py --seeds 3 --setup mnist --data-root ../shared/data
    python benchmarks/defense_curve.py --seeds 3 --table-only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "reproduce"))
from _common import add_data_root, use_data_root  # noqa: E402

import privbench  # noqa: E402
import privbench.tuning  # noqa: E402
from privbench import AttackConfig, FedConfig, ResultStore, RunConfig
from privbench.adversary import WORST_CASE
from privbench.results.report import mean_std as ms

SETUPS = {
    "photos": dict(model="lenet-sigmoid", lr=0.1, local_epochs=2, attacks=("dlg", "idlg")),
    "digits": dict(model="cnn", lr=0.1, local_epochs=5, attacks=("dlg", "idlg", "ig")),
    # lr None: the tuned default for mnist x lenet-sigmoid (the row's config shows it)
    "mnist": dict(
        model="lenet-sigmoid",
        lr=None,
        local_epochs=2,
        attacks=("dlg", "idlg", "ig"),
        dataset_params={"train_size": 12000},
    ),
}

# without --setup: the setups on embedded data, which need no --data-root
EMBEDDED = tuple(s for s in sorted(SETUPS) if s in privbench.tuning.EMBEDDED)

# (label, method, defenses, defense params, attacks override)
POINTS = [
    ("none", "fedavg", (), {}, None),
    *[
        ("dp-sgd", "fedavg", ("dp-sgd",), {"noise_multiplier": s}, None)
        for s in (0.001, 0.01, 0.1, 1.0)
    ],
    ("client-dp", "fedavg", ("client-dp",), {"noise_multiplier": 1.0}, None),
    *[
        ("client-dp local", "fedavg", ("client-dp",), {"noise_multiplier": z, "local": True}, None)
        for z in (0.01, 0.1)
    ],
    *[("prune", "fedavg", ("prune",), {"prune": p}, None) for p in (0.5, 0.9, 0.99)],
    ("none", "fedmix", (), {}, ("averaged-data",)),
    *[
        ("artifact-noise", "fedmix", ("artifact-noise",), {"sigma": s}, ("averaged-data",))
        for s in (0.1, 0.5)
    ],
]


def config(setup: str, point, seed: int) -> RunConfig:
    s = SETUPS[setup]
    _, method, defenses, dparams, attacks = point
    return RunConfig(
        method=method,
        dataset=setup,
        dataset_params=dict(s.get("dataset_params", {})),
        partition="dirichlet",
        model=s["model"],
        defenses=defenses,
        defense_params=dparams,
        seed=seed,
        fed=FedConfig(
            clients=10, rounds=10, lr=s["lr"], local_epochs=s["local_epochs"], eval_every=0
        ),
        attack=AttackConfig(names=attacks or s["attacks"]),
    )


def knob(point) -> str:
    return ", ".join(f"{k}={v}" for k, v in point[3].items()) or "-"


def measure(setup: str, seeds: int, store: ResultStore) -> None:
    done = store.finished_hashes()
    # seed-major: an interrupted curve has every point at seed 0 before any seed 1
    for seed in range(seeds):
        for point in POINTS:
            cfg = config(setup, point, seed)
            if cfg.resolve().hash() in done:
                continue
            rows = privbench.run(cfg, out=store.directory)
            shown = " ".join(
                f"{r.attack} {r.psnr if r.psnr is None else round(r.psnr, 1)}" for r in rows
            )
            print(
                f"  {setup} {point[1]} {point[0]} {knob(point)} seed {seed}: "
                f"acc {rows[0].accuracy} eps record {rows[0].epsilon_record} "
                f"client {rows[0].epsilon_client} {shown}",
                flush=True,
            )


def up_mib(trained: list[dict]) -> str:
    """Mean upload per run in MiB, one row per run that trained (a diverged training
    sent no measured upload)."""
    return f"{np.mean([r['bytes_up'] for r in trained]) / 2**20:.2f}" if trained else "-"


def table(seeds: int, store: ResultStore) -> str:
    rows = store.read()
    by_hash: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_hash.setdefault(r["config_hash"], {})[r["attack"]] = r
    lines = [
        "| data / model | method | defense | knob | seeds | ε record | ε client | accuracy "
        "| worst-case PSNR dB | worst-case PSNR-affine dB | worst-case SSIM | DLG PSNR dB "
        "| iDLG PSNR dB | IG PSNR dB | averaged-data PSNR dB | up MiB | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setup in SETUPS:
        for point in POINTS:
            runs = [
                by_hash.get(config(setup, point, seed).resolve().hash(), {})
                for seed in range(seeds)
            ]
            runs = [r for r in runs if r]
            if not runs:
                continue

            def col(attack, field, runs=runs):
                return ms(
                    r[attack][field] for r in runs if r.get(attack, {}).get(field) is not None
                )

            # per run that trained, one of its rows (a diverged training has no model,
            # accuracy or ε: it is in the errors column only)
            first = [
                next(x for x in r.values() if x.get("accuracy") is not None)
                for r in runs
                if any(x.get("accuracy") is not None for x in r.values())
            ]

            def eps_text(level, first=first):
                if not first:
                    return "-"
                eps = [f.get(f"epsilon_{level}") for f in first]
                if all(e is None for e in eps):
                    return "none"
                return ms(e if e is not None else np.inf for e in eps)

            # one gradient attack: its own row is the worst case
            worst = WORST_CASE if any(WORST_CASE in r for r in runs) else "dlg"
            errors = sum(any(x["status"] != "ok" for x in r.values()) for r in runs)
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"{setup} / {SETUPS[setup]['model']}",
                        point[1],
                        point[0],
                        knob(point),
                        str(len(runs)),
                        eps_text("record"),
                        eps_text("client"),
                        ms(f["accuracy"] for f in first) if first else "-",
                        col(worst, "psnr"),
                        col(worst, "psnr_affine"),
                        col(worst, "ssim"),
                        col("dlg", "psnr"),
                        col("idlg", "psnr"),
                        col("ig", "psnr"),
                        col("averaged-data", "psnr"),
                        up_mib(first),
                        f"{errors} / {len(runs)} seeds" if errors else "0",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--setup",
        choices=sorted(SETUPS),
        action="append",
        help=f"repeatable (default: {', '.join(EMBEDDED)})",
    )
    ap.add_argument("--out", default="benchmarks/results/defense_curve")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--table-only", action="store_true")
    add_data_root(ap)  # setup mnist
    args = ap.parse_args()
    use_data_root(args.data_root)
    torch.set_num_threads(args.threads)
    store = ResultStore(args.out)
    if not args.table_only:
        for setup in args.setup or EMBEDDED:
            measure(setup, args.seeds, store)
    print(table(args.seeds, store))


if __name__ == "__main__":
    main()
