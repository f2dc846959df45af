"""Tune the client learning rate per dataset x model on a validation split; write the
defaults privbench uses when ``--lr`` is not given (``privbench/tuned.json``).

Protocol (the CLI's defaults, so the tuned value suits a first run): FedAvg, 10 clients,
the default Dirichlet(0.5) partition, 2 local epochs, batch 10, 3 rounds; a fixed random
subset of ``--train-size`` training images, of which 10% of each class is held out as
the validation split (``DataBundle.validation_split``) and the test set is never
loaded into the search. A dataset too small for that (``faces``: 160 training images,
two classes) is searched with ``--clients`` and ``--partition`` set, recorded in its
entry's ``setup``. Grid of learning rates x ``--seeds`` seeds; the value with the
highest mean validation accuracy wins (a tie goes to the smaller step). Every run is a
row in ``benchmarks/results/tuning/results.jsonl`` (resumable: a rerun skips what is
there); ``privbench/tuned.json`` records the winner and the whole search, from the rows
today's code would make at today's defaults (``is_default_run``: a search that ran
under an old default, such as the ``cnn``'s init before He, stays in the store, left
out).

    python benchmarks/tune.py --data-root ../shared/data
    python benchmarks/tune.py --write-only      # tuned.json again from the rows
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

import privbench
from privbench import FedConfig, ResultStore, RunConfig, registries
from privbench.data.datasets import load_dataset
from privbench.results import write_json_atomic
from privbench.results.report import is_default_run
from privbench.tuning import best_lr

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "tuning"
TUNED = ROOT / "privbench" / "tuned.json"
GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
DATASETS = ("mnist", "fashionmnist")
MODELS = ("lenet-sigmoid", "cnn", "cnn-bn")
PROTOCOL = {
    "method": "fedavg",
    "partition": "dirichlet (alpha 0.5, the default)",
    "clients": 10,
    "rounds": 3,
    "local_epochs": 2,
    "batch_size": 10,
    "validation": "10% of each class of the training subset; the test set is not used",
    "score": "mean validation accuracy over seeds; ties go to the smaller learning rate",
    "train_size": 12_000,
    "grid": list(GRID),
}


def label(dataset: str) -> str:
    return f"{dataset}:validation"


def subset(dataset: str, train_size: int) -> dict:
    """The dataset's train_size parameter, for datasets that have one."""
    own = {p.name for p in registries()["dataset"].entry(dataset).params}
    return {"train_size": train_size} if "train_size" in own else {}


def config(
    dataset: str,
    model: str,
    lr: float,
    seed: int,
    train_size: int,
    rounds: int = 3,
    clients: int = 10,
    partition: str = "dirichlet",
) -> RunConfig:
    return RunConfig(
        dataset=label(dataset),
        dataset_params=subset(dataset, train_size),
        partition=partition,
        model=model,
        seed=seed,
        fed=FedConfig(
            clients=clients, rounds=rounds, local_epochs=2, batch_size=10, lr=lr, eval_every=0
        ),
    )


def choose(rows: list[dict]) -> dict[str, dict]:
    """``{"dataset/model": {"lr", "validation_accuracy": {lr: [per seed]}}}`` from rows;
    a failed run (diverged) scores 0."""
    search: dict[str, dict[float, list[float]]] = {}
    rounds: dict[str, set[int]] = {}
    sizes: dict[str, set[int]] = {}  # train_size of the search, where the dataset has one
    setup: dict[str, set[tuple[int, str]]] = {}  # (clients, partition) of the search
    for r in rows:
        dataset = r["dataset"].removesuffix(":validation")
        key = f"{dataset}/{r['model']}"
        acc = r["accuracy"] if r["status"] == "ok" and r["accuracy"] is not None else 0.0
        lr = r["config"]["fed"]["lr"]
        search.setdefault(key, {}).setdefault(lr, []).append(acc)
        rounds.setdefault(key, set()).add(r["config"]["fed"].get("rounds"))
        size = (r["config"].get("dataset_params") or {}).get("train_size")
        sizes.setdefault(key, set()).update([size] if size is not None else [])
        fed, part = r["config"]["fed"], r["config"].get("partition", "dirichlet")
        setup.setdefault(key, set()).add((fed.get("clients", PROTOCOL["clients"]), part))
    out = {}
    for key, by_lr in sorted(search.items()):
        best = best_lr({lr: float(np.mean(accs)) for lr, accs in by_lr.items()})
        out[key] = {
            "lr": best,
            "rounds": sorted(n for n in rounds[key] if n is not None),
            "validation_accuracy": {f"{lr:g}": by_lr[lr] for lr in sorted(by_lr)},
        }
        if sizes[key] - {PROTOCOL["train_size"]}:  # searched on another subset
            out[key]["train_size"] = sorted(sizes[key])
        if setup[key] != {(PROTOCOL["clients"], "dirichlet")}:  # a smaller dataset's search
            out[key]["setup"] = [f"{c} clients, {p}" for c, p in sorted(setup[key])]
    return out


def searched(rows: list[dict]) -> list[dict]:
    """The search's rows that count: runs today's code would make for their configs (a
    ``cnn`` row from before He init is not one)."""
    return [r for r in rows if r.get("attack") == "none" and is_default_run(r)]


def write(store: ResultStore, args) -> dict:
    record = {
        "command": "python benchmarks/tune.py",
        # The CLI's search; an entry searched otherwise (rounds, setup, train size) says
        # so in its own fields, so a later search with other flags never rewrites this.
        "protocol": PROTOCOL,
        "rows": "benchmarks/results/tuning/results.jsonl",
        "lr": choose(searched(store.read())),
    }
    write_json_atomic(args.tuned, record)
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("PRIVBENCH_DATA_ROOT"))
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=PROTOCOL["train_size"])
    ap.add_argument("--rounds", type=int, default=PROTOCOL["rounds"])
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    ap.add_argument(
        "--clients", type=int, default=PROTOCOL["clients"], help="fewer for a small dataset"
    )
    ap.add_argument("--partition", default="dirichlet", help="iid for a dataset too small to skew")
    ap.add_argument("--out", default=str(OUT), help="result folder of the search")
    ap.add_argument("--tuned", default=str(TUNED), help="where the defaults are written")
    ap.add_argument("--write-only", action="store_true")
    args = ap.parse_args(argv)
    store = ResultStore(args.out)
    if not args.write_only:
        done = store.finished_hashes()
        for dataset in args.datasets:
            full = load_dataset(dataset, subset(dataset, args.train_size), root=args.data_root)
            for seed in range(args.seeds):
                data = full.validation_split(0.1, seed=seed)
                for model in args.models:
                    for lr in args.grid:
                        cfg = config(
                            dataset,
                            model,
                            lr,
                            seed,
                            args.train_size,
                            args.rounds,
                            args.clients,
                            args.partition,
                        )
                        if cfg.resolve(provided=frozenset({"dataset"})).hash() in done:
                            continue
                        (row,) = privbench.run(cfg, data=data, out=store)
                        print(
                            f"  {dataset} {model} lr {lr:g} seed {seed}: "
                            f"{row.status} val acc {row.accuracy}",
                            flush=True,
                        )
    for key, entry in write(store, args)["lr"].items():
        print(f"{key}: lr {entry['lr']:g}  {entry['validation_accuracy']}")


if __name__ == "__main__":
    main()
