"""Reproduction: FedMix (Yoon et al., ICLR 2021) on MNIST and Fashion-MNIST.

The paper's claim: with averaged data shared once, FedMix reaches higher accuracy than
FedAvg, LocalMix and NaiveMix under label skew (its Table 2: CIFAR-10/100 and FEMNIST,
N = 100 clients with 2 classes each, K = 10 per round, E local epochs, batch 10),
GlobalMix being the privacy-violating upper bound.

Here, scaled to 2 CPU cores and stated beside the paper's setting:

- data: the paper's CIFAR-10/100 and FEMNIST; here MNIST and Fashion-MNIST (a fixed
  subset of ``--train-size`` training images, the full test set);
- clients: N = 100 with 2 classes each, K = 10 per round, as in the paper (``shards``,
  ``fraction`` 0.1), and Dirichlet 0.2 / 0.5;
- model: a ReLU CNN in the paper; ``cnn`` here;
- rounds: 500 (CIFAR-10) in the paper; ``--rounds`` (default 50) here;
- local training: E = 2, batch 10; the learning rate searched for FedAvg at this
  protocol (100 clients, the cell's partition, ``--rounds``) on a validation split of
  each dataset, per dataset and partition, the same for every method of the cell;
- λ = 0.05 and 0.2 (the paper tunes λ per dataset in that range); M_k = all.

The side-by-side table is in ``docs/reproductions.md``.

The search comes first: FedAvg at learning rates 0.01, 0.03 and 0.1 on 10% of each
class held out of the training subset (the test set is not loaded), two seeds each; the
highest mean final validation accuracy wins (a diverged run scores 0, a tie goes to the
smaller rate); while the winner is the largest or smallest rate tried, the next rate
of the half-decade ladder past it is tried too.

Every run is a privbench row in ``benchmarks/results/reproduce/fedmix/`` (resumable:
a rerun skips configurations that have an ok row); the accuracy of every round is in
the row's history, so the page shows curves, not one point. MNIST comes from
``--data-root`` or ``PRIVBENCH_DATA_ROOT``:

    python benchmarks/reproduce/fedmix.py --data-root ../shared/data --seeds 2
"""

from __future__ import annotations

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
    partition_name,
    runs,
    seed_major,
    tabled,
)

from privbench import FedConfig, ResultStore, RunConfig
from privbench.data.datasets import load_dataset
from privbench.results.report import mean_std as ms
from privbench.results.store import diverged
from privbench.tuning import best_lr, default_lr

OUT = Path(__file__).resolve().parents[1] / "results" / "reproduce" / "fedmix"
DATASETS = ("mnist", "fashionmnist")
PARTITIONS = {
    "shards-2": ("shards", {"classes_per_client": 2}),
    "dirichlet-0.2": ("dirichlet", {"alpha": 0.2}),
    "dirichlet-0.5": ("dirichlet", {"alpha": 0.5}),
}
METHODS = ("fedavg", "localmix", "naivemix", "fedmix", "globalmix")
# Fashion-MNIST's Dirichlet 0.2 draw (seed 0) leaves a client 10 images, 8 after its 20%
# local test split: fewer than a batch of 10, which privbench refuses. Its Dirichlet
# partitions are redrawn until every client holds 13 (10 after the split); MNIST's draws
# pass the default of 10 and keep it.
MIN_SIZE = {"fashionmnist": 13}
# The search's validation splits hold 90% of the training subset, so a draw that passed
# 10 on the whole subset can leave a client 9 there (MNIST, Dirichlet 0.2): every
# searched Dirichlet partition is redrawn until each client holds 13.
SEARCH_MIN_SIZE = 13
LAMBDAS = (0.05, 0.2)


# The sweeps, on MNIST with 2-class shards (the paper's Figures 3-4 and Table 4 sweep λ,
# M_k and FedProx on CIFAR-10): λ beyond the grid's two values; M_k = 45 and 10 images
# per shared mean (the grid shares one mean of all a client's images; a client holds
# 90-103 training images, so 45 is about the paper's M_k = 0.5 n_k, two means each, and
# 10 gives nine or ten); FedProx's proximal term (μ = 0.01) under FedAvg, NaiveMix and
# FedMix. (M_k = 60, the first sweep's, gave one mean per client: the grid's runs again.)
SWEEP_LAMBDAS = (0.02, 0.1)
SWEEP_MEAN_SIZES = (45, 10)
FEDPROX_MU = 0.01

# The learning-rate search (FedAvg on a validation split, per dataset and partition):
# SEARCH_LRS first, SEARCH_SEEDS seeds each, then one rung of LR_LADDER past the winner
# while it is the largest or smallest rate tried.
LR_LADDER = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SEARCH_LRS = (0.01, 0.03, 0.1)
SEARCH_SEEDS = 2


def config(
    dataset: str,
    partition: str,
    method: str,
    lam: float,
    seed: int,
    *,
    rounds: int,
    train_size: int,
    clients: int = 100,
    fraction: float = 0.1,
    model: str = "cnn",
    mean_size: int | None = None,
    mu: float | None = None,
    lr: float | None = None,
) -> RunConfig:
    """One run; ``dataset`` may name a validation split (``mnist:validation``), and
    ``lr`` None is the dataset's tuned default."""
    kind, params = PARTITIONS[partition]
    params = dict(params)
    base, split, _ = dataset.partition(":")
    if kind == "dirichlet" and (base in MIN_SIZE or split):
        params["min_size"] = MIN_SIZE.get(base, SEARCH_MIN_SIZE)
    size = {"train_size": train_size} if dataset in DATASETS else {}
    method_params = {} if method == "fedavg" else {"lam": lam}
    if mean_size is not None:
        method_params["mean_size"] = mean_size
    return RunConfig(
        method=method,
        method_params=method_params,
        dataset=dataset,
        dataset_params=size,
        partition=kind,
        partition_params=dict(params),
        model=model,
        seed=seed,
        fed=FedConfig(
            clients=clients,
            fraction=fraction,
            rounds=rounds,
            local_epochs=2,
            batch_size=10,
            lr=lr,
            eval_every=max(1, rounds // 10),
            **({"algorithm": "fedprox", "algorithm_params": {"mu": mu}} if mu else {}),
        ),
    )


def points(
    datasets, partitions, seeds: int, lrs: dict | None = None, **kw
) -> list[tuple[tuple, RunConfig]]:
    """(label, config) of every run: FedAvg once per seed, every other method per λ, at
    the cell's learning rate in ``lrs`` ({(dataset, partition): lr}; a cell not in it:
    the dataset's tuned default)."""
    out = []
    for dataset, partition, seed in product(datasets, partitions, range(seeds)):
        lr = (lrs or {}).get((dataset, partition))
        for method in METHODS:
            for lam in (None,) if method == "fedavg" else LAMBDAS:
                cfg = config(dataset, partition, method, lam or 0.0, seed, lr=lr, **kw)
                out.append(((dataset, partition, method, lam, seed), cfg))
    return seed_major(out)


def sweep_points(seeds: int, lrs: dict | None = None, **kw) -> list[tuple[tuple, RunConfig]]:
    """(label, config) of the λ, M_k and FedProx sweeps on MNIST, 2-class shards, at that
    cell's learning rate in ``lrs``; labels (dataset, partition, method, λ, seed, what is
    swept)."""
    out = []
    base = ("mnist", "shards-2")
    kw = {**kw, "lr": (lrs or {}).get(base)}
    for seed in range(seeds):
        for method, lam in product(("naivemix", "fedmix"), SWEEP_LAMBDAS):
            out.append(((*base, method, lam, seed, "λ"), config(*base, method, lam, seed, **kw)))
        for method, m in product(("naivemix", "fedmix"), SWEEP_MEAN_SIZES):
            cfg = config(*base, method, 0.05, seed, mean_size=m, **kw)
            out.append(((*base, method, 0.05, seed, f"M_k {m}"), cfg))
        for method in ("fedavg", "naivemix", "fedmix"):
            cfg = config(*base, method, 0.05, seed, mu=FEDPROX_MU, **kw)
            out.append(((*base, method, 0.05, seed, "fedprox"), cfg))
    return seed_major(out)


def _partition(c: dict) -> str:
    return partition_name(PARTITIONS, c)


def variant(row: dict) -> str:
    """What a sweep changed in this run ('' for the main grid): M_k, FedProx."""
    c = row["config"]
    parts = []
    if c["method_params"].get("mean_size") is not None:
        parts.append(f"M_k {c['method_params']['mean_size']}")
    if c["fed"].get("algorithm", "fedavg") == "fedprox":
        parts.append(f"FedProx μ {c['fed']['algorithm_params']['mu']:g}")
    return ", ".join(parts)


def _validation(row: dict) -> bool:
    return row["dataset"].endswith(":validation")


def search_scores(rows: list[dict]) -> dict[tuple, dict[float, dict[int, float]]]:
    """{(dataset, partition): {lr: {seed: final validation accuracy}}} of the search's
    settled runs (FedAvg on a validation split); a diverged run scores 0."""
    out: dict[tuple, dict[float, dict[int, float]]] = {}
    for r in rows:
        if not _validation(r) or r["method"] != "fedavg" or variant(r):
            continue
        if r["status"] != "ok" and not diverged(r):
            continue  # a run that failed otherwise is run again
        cell = (r["dataset"].removesuffix(":validation"), _partition(r["config"]))
        acc = r["accuracy"] if r["status"] == "ok" else 0.0
        out.setdefault(cell, {}).setdefault(r["config"]["fed"]["lr"], {})[r["seed"]] = acc
    return out


def _searched(by_lr: dict[float, dict[int, float]]) -> dict[float, float]:
    """Mean validation accuracy of each learning rate that has all its seeds."""
    return {
        lr: float(np.mean(list(s.values()))) for lr, s in by_lr.items() if len(s) >= SEARCH_SEEDS
    }


def lrs_to_try(by_lr: dict[float, dict[int, float]]) -> list[float]:
    """The rates a cell's search still owes: SEARCH_LRS first; then, while the winner is
    the largest (smallest) rate tried, the next rung of LR_LADDER above (below) it."""
    means = _searched(by_lr)
    owed = [lr for lr in SEARCH_LRS if lr not in means]
    if owed:
        return owed
    best = best_lr(means)
    i = LR_LADDER.index(best)
    step = []
    if best == min(means) and i > 0:
        step.append(LR_LADDER[i - 1])
    if best == max(means) and i + 1 < len(LR_LADDER):
        step.append(LR_LADDER[i + 1])
    return [lr for lr in step if lr not in means]


def chosen_lrs(rows: list[dict]) -> dict[tuple, float]:
    """{(dataset, partition): learning rate} of every cell whose search has ended."""
    return {
        cell: best_lr(_searched(by_lr))
        for cell, by_lr in search_scores(rows).items()
        if not lrs_to_try(by_lr)
    }


def search_points(datasets, partitions, rows: list[dict], **kw) -> list[tuple[tuple, RunConfig]]:
    """(label, config) of the search's next runs: each cell's owed rates, SEARCH_SEEDS
    seeds, FedAvg on the dataset's validation split."""
    scores = search_scores(rows)
    out = []
    for dataset, partition in product(datasets, partitions):
        for lr in lrs_to_try(scores.get((dataset, partition), {})):
            for seed in range(SEARCH_SEEDS):
                cfg = config(f"{dataset}:validation", partition, "fedavg", 0.0, seed, lr=lr, **kw)
                out.append(((dataset, partition, "search", lr, seed), cfg))
    return out


def lr_of(dataset: str, partition: str, lrs: dict[tuple, float]) -> float:
    """A cell's learning rate: its search's winner, or (search not ended) the dataset's
    tuned default, at which the grid ran before the search."""
    return lrs.get((dataset, partition), default_lr(dataset, "cnn")[0])


def in_grid(rows: list[dict]) -> list[dict]:
    """The test-set runs the tables, verdicts and curves hold: each at its cell's
    learning rate (:func:`lr_of`) and, in the M_k sweep, at a swept M_k; the search's
    runs and runs at a rate the search did not choose or an M_k no longer swept stay in
    the store, out of them."""
    lrs = chosen_lrs(rows)
    return [
        r
        for r in rows
        if not _validation(r)
        and r["config"]["fed"]["lr"] == lr_of(r["dataset"], _partition(r["config"]), lrs)
        and r["config"]["method_params"].get("mean_size") in (None, *SWEEP_MEAN_SIZES)
    ]


def search_table(rows: list[dict]) -> str:
    """Per dataset and partition: each rate's mean final validation accuracy over
    SEARCH_SEEDS seeds (a diverged run scores 0), the rate chosen, and the CLI's tuned
    default at which the grid first ran."""
    scores = search_scores(rows)
    lines = [
        "| dataset | partition | validation accuracy by learning rate | chosen | CLI default |",
        "|---|---|---|---|---|",
    ]
    for (dataset, part), by_lr in sorted(scores.items()):
        means = _searched(by_lr)
        chosen = "searching" if lrs_to_try(by_lr) else f"{best_lr(means):g}"
        tried = ", ".join(
            f"{lr:g}: {means[lr]:.3f}"
            if lr in means
            else f"{lr:g}: {len(by_lr[lr])} of {SEARCH_SEEDS} seeds"
            for lr in sorted(by_lr)
        )
        lines.append(
            f"| {dataset} | {part} | {tried} | {chosen} | {default_lr(dataset, 'cnn')[0]:g} |"
        )
    return "\n".join(lines)


def page(rows: list[dict]) -> str:
    """The page's FedMix tables: the grid at each cell's searched learning rate, then the
    search."""
    searched = search_table(rows) if search_scores(rows) else "*The search has not run yet.*"
    return (
        f"{table(in_grid(rows))}\n\nThe learning-rate search (FedAvg, validation split):"
        f"\n\n{searched}"
    )


# the curves: one panel per dataset, a line per method (one colour in both panels)
CURVE_BY = ("method",)
CURVE_PANELS = ("dataset",)


def curve_rows(rows: list[dict]) -> list[dict]:
    """The runs the page's curves show: the main grid at λ = 0.05 (the paper's CIFAR-10
    value; λ = 0.2's collapse has its own section), FedAvg with them."""
    return [
        r
        for r in rows
        if not variant(r) and r["config"]["method_params"].get("lam") in (None, 0.05)
    ]


def table(rows: list[dict]) -> str:
    """Final accuracy mean ± std per dataset, partition, method and λ, with the gap to
    FedAvg (under the same sweep when FedAvg ran in it: FedProx) and the number of runs
    (those that diverged beside them, out of the means)."""

    def key(r):
        c = r["config"]
        return (r["dataset"], _partition(c), r["method"], c["method_params"].get("lam"), variant(r))

    groups, gone = tabled(rows, key)
    lines = [
        "| dataset | partition | method | λ | sweep | runs | accuracy | vs FedAvg "
        "| best round acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, part, method, lam, swept), rs in sorted(
        groups.items(),
        key=lambda kv: (kv[0][0], kv[0][1], kv[0][4], METHODS.index(kv[0][2]), kv[0][3] or 0),
    ):
        # against FedAvg under the same sweep where it ran one (FedProx), else the grid's
        base = groups.get((dataset, part, "fedavg", None, swept)) or groups.get(
            (dataset, part, "fedavg", None, ""), []
        )
        gap = (
            f"{np.mean([r['accuracy'] for r in rs]) - np.mean([b['accuracy'] for b in base]):+.3f}"
            if rs and base and method != "fedavg"
            else "-"
        )
        best = [max(h["accuracy"] for h in r["history"]) for r in rs if r.get("history")]
        lines.append(
            f"| {dataset} | {part} | {method} | {'-' if lam is None else lam} "
            f"| {swept or '-'} | {runs(len(rs), gone.get((dataset, part, method, lam, swept), 0))} "
            f"| {ms(r['accuracy'] for r in rs)} | {gap} | {ms(best)} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """The paper's ordering FedMix ≥ NaiveMix ≥ FedAvg in final accuracy (means over
    seeds), per dataset, partition and λ: holds when both inequalities hold, partly when
    FedMix beats FedAvg alone. A FedMix run whose training diverged (at the learning rate
    tuned for FedAvg, the same for every method) left no model: its cell does not hold,
    and says how many of its runs diverged. A baseline's diverged runs are left out of its
    mean, and the line says how many."""
    main_grid = [r for r in rows if not variant(r)]

    def key(r):
        return (
            r["dataset"],
            _partition(r["config"]),
            r["method"],
            r["config"]["method_params"].get("lam"),
        )

    acc = {k: [r["accuracy"] for r in rs] for k, rs in group(main_grid, key).items()}
    lost_by = lost_runs(main_grid, key)

    def also_lost(k: tuple) -> str:
        """A baseline's diverged runs, named beside its mean over the runs that finished."""
        return lost(len(acc.get(k, [])), lost_by.get(k, 0))

    out = []
    cells = {k for k in list(acc) + list(lost_by) if k[2] == "fedmix"}
    for dataset, part, _, lam in sorted(cells):
        nm = acc.get((dataset, part, "naivemix", lam))
        fa = acc.get((dataset, part, "fedavg", None))
        if nm is None or fa is None:
            bases = {
                "NaiveMix": (dataset, part, "naivemix", lam),
                "FedAvg": (dataset, part, "fedavg", None),
            }
            missing = [
                f"{name} {diverged_in(n)}"
                for name, k in bases.items()
                if k not in acc and (n := lost_by.get(k))
            ]
            if missing:  # a baseline left no model: the ordering cannot be read
                out.append(f"- {dataset}, {part}, λ = {lam:g}: {', '.join(missing)}")
            continue
        nm, fa = float(np.mean(nm)), float(np.mean(fa))
        nm_lost = also_lost((dataset, part, "naivemix", lam))
        fa_lost = also_lost((dataset, part, "fedavg", None))
        fms = acc.get((dataset, part, "fedmix", lam), [])
        gone = lost_by.get((dataset, part, "fedmix", lam), 0)
        if gone:
            fm = diverged_in(gone, len(fms))
            verdict = "does not hold"
        else:
            mean = float(np.mean(fms))
            fm = f"{mean:.3f}"
            verdict = "holds" if mean >= nm >= fa else "partly" if mean >= fa else "does not hold"
        out.append(
            f"- {dataset}, {part}, λ = {lam:g}: FedMix {fm}, NaiveMix {nm:.3f}{nm_lost}, "
            f"FedAvg {fa:.3f}{fa_lost}: **{verdict}**"
        )
    return out + collapsed(main_grid)


def predicts_one_class(row: dict) -> bool:
    """The final model answers one class for every test image: per-class accuracy is 1 for
    that class and 0 for the others, whose variance is (K - 1) / K² exactly (K = 10:
    every dataset here has ten classes)."""
    k = 10
    return abs(row["class_acc_var"] - (k - 1) / k**2) < 1e-9


def collapsed(rows: list[dict]) -> list[str]:
    """Per method and λ, how many runs ended predicting a single class (a dead network:
    see the Taylor diagnostic below)."""
    runs = group(rows, lambda r: (r["method"], r["config"]["method_params"].get("lam")))
    out = []
    for (method, lam), rs in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        n = sum(predicts_one_class(r) for r in rs)
        if n:
            at = "" if lam is None else f" at λ = {lam:g}"
            out.append(
                f"- {method}{at}: {n} of {len(rs)} runs ended predicting one class for "
                f"every test image"
            )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, out=OUT, seeds=2, rounds=50)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=PARTITIONS)
    ap.add_argument("--no-sweeps", action="store_true", help="the main grid only")
    args = parse(ap, argv)
    store = ResultStore(args.out)
    kw = {"rounds": args.rounds, "train_size": args.train_size}
    for dataset in args.datasets:  # the learning-rate search, to its end, first
        full = load_dataset(dataset, {"train_size": args.train_size}, root=args.data_root)
        validation = full.validation_split(0.1, seed=0)
        while todo := search_points([dataset], args.partitions, current(store.read()), **kw):
            measure(todo, store, validation)
    lrs = chosen_lrs(current(store.read()))
    todo = points(args.datasets, args.partitions, args.seeds, lrs, **kw)
    if not args.no_sweeps:  # after the main grid: its cells come first
        todo += sweep_points(args.seeds, lrs, **kw)
    measure(todo, store)
    print(page(current(store.read())))


if __name__ == "__main__":
    main()
