"""Reproduction: FedAvP (federated augmentation policies) on Fashion-MNIST and digits.

The claim (FedAvP's slides and its code, alsdml/FedAvP): under heavy label skew a
shared augmentation policy, learned by the federated meta-policy loss with Reptile,
trains a better global model than FedAvg without augmentation and than the fixed
policies RandAugment and TrivialAugment. The slides give no number to compare against;
the claim is the ordering FedAvP ≥ {FedAvg, RandAugment, TrivialAugment}.

Protocol, the reference code's beside ours (scaled to 2 CPU cores):

- data: CIFAR-10/100, SVHN, FEMNIST in the code; here Fashion-MNIST (a fixed subset of
  ``--train-size`` training images, default 30,000 of 60,000, the full test set) and the
  embedded ``digits``. Half the data, not the 12,000 of the other reproductions: at
  α = 0.1 a Dirichlet draw over 100 clients almost never gives every client a batch's
  worth of 12,000 images (0 of 2,000 draws; 1% at 30,000, 10% at 60,000);
- clients: Dirichlet α = 0.1, 100 clients, 10 per round: as in the code (digits:
  20 clients, 5 per round, since it has 1,797 images);
- local training: 5 local epochs and the CNN without BatchNorm (``cnn``) as in the code;
  batch 10 where the code uses 64 (at α = 0.1 many clients hold fewer than 64 images,
  and privbench refuses a batch larger than a client's data; the partition is redrawn
  until every client holds at least 13 images, 10 after its 20% local test split);
  SGD at the learning rate tuned for ``cnn`` on a validation split, the same for every
  method;
- rounds: as many as ``--rounds`` (default 100; the code's default is 1,000) with
  accuracy every tenth of them, so the page shows whether the policy needs more rounds
  than FedAvg to pay off; runs at a budget other than :data:`ROUNDS` are tabled, drawn
  and judged apart (``--datasets digits --rounds 1000``: every method at 1,000 rounds;
  ``--methods`` runs some of them, e.g. FedAvP in one process and the baselines in
  another);
- FedAvP's knobs: privbench's defaults (the code's search space, policy net and Reptile
  server step), listed by ``privbench list``.

After the grid, a why point on Fashion-MNIST (:data:`WHY`): FedAvP with its scores
normalised in the loss, to tell its step length from its policy. Every run is a
privbench row in ``benchmarks/results/reproduce/fedavp/`` (resumable; seed 0 of every
cell first):

    python benchmarks/reproduce/fedavp.py --data-root ../shared/data --seeds 3
"""

from __future__ import annotations

from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np
from _common import (
    current,
    diverged_in,
    group,
    lost,
    lost_runs,
    measure,
    parse,
    parser,
    runs,
    seed_major,
    tabled,
    verdict,
)
from _common import mean_std as ms

from privbench import FedConfig, ResultStore, RunConfig

OUT = Path(__file__).resolve().parents[1] / "results" / "reproduce" / "fedavp"
DATASETS = ("fashionmnist", "digits")
METHODS = ("fedavg", "randaugment", "trivialaugment", "fedavp")
CLIENTS = {"digits": (20, 0.25)}  # (clients, fraction); the others: (100, 0.1)
ROUNDS = 100  # the grid's budget; runs at another (``--rounds``) are tabled apart


def config(dataset: str, method: str, seed: int, *, rounds: int, train_size: int) -> RunConfig:
    clients, fraction = CLIENTS.get(dataset, (100, 0.1))
    return RunConfig(
        method=method,
        dataset=dataset,
        dataset_params={"train_size": train_size} if dataset != "digits" and train_size else {},
        partition="dirichlet",
        partition_params={"alpha": 0.1, "min_size": 13},
        model="cnn",
        seed=seed,
        fed=FedConfig(
            clients=clients,
            fraction=fraction,
            rounds=rounds,
            local_epochs=5,
            batch_size=10,
            eval_every=max(1, rounds // 10),
        ),
    )


def points(datasets, seeds: int, methods=METHODS, **kw) -> list[tuple[tuple, RunConfig]]:
    out = [
        ((d, m, s), config(d, m, s, **kw)) for d, m, s in product(datasets, methods, range(seeds))
    ]
    return seed_major(out)


# Why FedAvP trails on Fashion-MNIST: its loss weights each augmented image by the
# policy's sigmoid score, about 0.5 for a fresh policy, so at the baselines' learning rate
# its model steps are about half as long. The same FedAvP with the scores normalised to
# sum 1 in the loss (``score_norm``) takes full-length steps. (label: FedAvP's params)
WHY = {"score-normalised loss": {"score_norm": True}}
WHY_DATASET = "fashionmnist"


def why_label(name: str) -> str:
    """How a :data:`WHY` variant is named in the table, the curves and the points."""
    return f"fedavp ({name})"


def why_points(seeds: int, dataset: str = WHY_DATASET, **kw) -> list[tuple[tuple, RunConfig]]:
    """FedAvP with each :data:`WHY` change (run after the grid)."""
    out = []
    for seed, (name, params) in product(range(seeds), WHY.items()):
        cfg = replace(config(dataset, "fedavp", seed, **kw), method_params=params)
        out.append(((dataset, why_label(name), seed), cfg))
    return out


def label(row: dict) -> str:
    """The row's method, or FedAvP's :data:`WHY` variant it ran."""
    params = (row.get("config") or {}).get("method_params") or {}
    for name, change in WHY.items():
        if row["method"] == "fedavp" and all(params.get(k) == v for k, v in change.items()):
            return why_label(name)
    return row["method"]


def budget(rounds: int) -> str:
    """How a run at other than :data:`ROUNDS` rounds is told apart ("" at the grid's)."""
    return "" if rounds == ROUNDS else f", {rounds:,} rounds"


def cell(row: dict) -> tuple:
    """A table line and verdict's runs: the same data, budget and method (or variant)."""
    return (row["dataset"], row["rounds"], label(row))


# The curves: one panel per dataset and budget (100 rounds squeezed beside 1,000 would
# hide the first), one line per method or WHY variant.
CURVE_BY = ("method",)
CURVE_PANELS = ("dataset", "budget")


def curve_rows(rows: list[dict]) -> list[dict]:
    """Every run, a :data:`WHY` variant as a line of its own, and its budget (the panel
    it is drawn in)."""
    return [{**r, "method": label(r), "budget": f"{r['rounds']:,} rounds"} for r in rows]


def table(rows: list[dict]) -> str:
    """Final and best-round accuracy and macro-F1 per dataset and method, the gap to
    FedAvg, and the round at which the run first reached 95% of its final accuracy."""
    groups, gone = tabled(rows, cell)
    lines = [
        "| dataset | method | runs | rounds | accuracy | vs FedAvg | macro-F1 "
        "| best round acc | rounds to 95% of final |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate([*METHODS, *map(why_label, WHY)])}
    for (dataset, rounds, method), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 9))
    ):
        base = groups.get((dataset, rounds, "fedavg"), [])
        gap = (
            f"{np.mean([r['accuracy'] for r in rs]) - np.mean([b['accuracy'] for b in base]):+.3f}"
            if rs and base and method != "fedavg"
            else "-"
        )
        best = [max(h["accuracy"] for h in r["history"]) for r in rs if r.get("history")]
        reach = [
            next(h["round"] for h in r["history"] if h["accuracy"] >= 0.95 * r["accuracy"])
            for r in rs
            if r.get("history")
        ]
        lines.append(
            f"| {dataset} | {method} | {runs(len(rs), gone.get((dataset, rounds, method), 0))} "
            f"| {rounds} | "
            f"{ms(r['accuracy'] for r in rs)} | {gap} | {ms(r['macro_f1'] for r in rs)} "
            f"| {ms(best)} | {ms(reach, 0) if reach else '-'} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """FedAvP against each baseline at the same budget: final accuracy, mean over seeds
    (its :data:`WHY` variants are not FedAvP as published: they explain, they do not
    vote). A budget other than :data:`ROUNDS` is a claim of its own line. A FedAvP run
    that diverged left no model: its line does not hold and counts it; a baseline's
    diverged runs are left out of its mean, and the line says how many."""
    groups = group(rows, cell)
    gone = lost_runs(rows, cell)
    out = []
    for dataset, rounds in sorted({k[:2] for k in [*groups, *gone]}):
        mine = groups.get((dataset, rounds, "fedavp"), [])
        beaten = []
        for base in METHODS[:-1]:
            rs = groups.get((dataset, rounds, base))
            n_base = gone.get((dataset, rounds, base), 0)
            if rs:
                other = np.mean([r["accuracy"] for r in rs])
                beaten.append((f"{base} {other:.3f}{lost(len(rs), n_base)}", other))
            elif n_base:  # no model to compare with: named, not counted
                beaten.append((f"{base} {diverged_in(n_base)}", None))
        detail = ", ".join(text for text, _ in beaten)
        checks = [o for _, o in beaten if o is not None]
        if n := gone.get((dataset, rounds, "fedavp"), 0):
            mine_text, passed = diverged_in(n, len(mine)), "does not hold"
        elif mine:
            acc = np.mean([r["accuracy"] for r in mine])
            mine_text = f"{acc:.3f}"
            passed = (
                verdict(sum(acc >= o for o in checks), len(checks)) if checks else "not measured"
            )
        else:
            continue
        out.append(f"- {dataset}{budget(rounds)}: FedAvP {mine_text} vs {detail}: **{passed}**")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, out=OUT, seeds=3, rounds=ROUNDS, train_size=30000)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    # a long run split over two processes: e.g. FedAvP in one, the baselines in the other
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parse(ap, argv)
    store = ResultStore(args.out)
    kw = {"rounds": args.rounds, "train_size": args.train_size}
    measure(points(args.datasets, args.seeds, args.methods, **kw), store)
    if WHY_DATASET in args.datasets and "fedavp" in args.methods:
        measure(why_points(args.seeds, **kw), store)
    rows = current(store.read())
    print(table(rows))
    print("\n".join(verdicts(rows)))


if __name__ == "__main__":
    main()
