"""The headline grids' DP knobs, searched on a validation split at epsilon 8.

The headline grids (``benchmarks/headline_mnist.toml``; ``headline.toml`` and
``headline_more.toml`` on digits) put every method under record-level DP-SGD and
client-level DP at a target epsilon of 8 (delta 1e-5). What those defenses cost in
accuracy depends on their knobs, so the knobs are searched here, per dataset, in the
headline's own setting (FedAvg, ``lenet-sigmoid``, 10 clients, Dirichlet 0.5, 10
rounds of 2 local epochs at the default learning rate; on MNIST the 12,000-image
subset), on a validation split carved from the training images (10% of each class; the
test set is never loaded). Both levels calibrate the noise to the target for the
schedule that runs (Opacus picks sigma, or z), so each search point is a full run of
that schedule:

- DP-SGD (record level): the clip norm C x the batch size. The learning rate stays at
  the tuned one: a clipped step is at most lr x C long, so C scales the step and the
  noise together, and the search over C is a search over the step as well.
- Client-level DP: the clip norm C of each client's update.

The winner per dataset and level (highest validation accuracy; a tie goes to the
smaller C) must be what the grids run: ``tests/test_headline_grids.py`` reads both. Rows
go to ``benchmarks/results/headline_dp/`` (resumable: a rerun skips what is there).

    python benchmarks/headline_dp.py --data-root ../shared/data     # MNIST
    python benchmarks/headline_dp.py --dataset digits
"""

from __future__ import annotations

import argparse
import os
import sys
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "reproduce"))

from _common import add_data_root, current, measure, use_data_root  # noqa: E402

from privbench import FedConfig, ResultStore, RunConfig  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "headline_dp"
TARGET_EPSILON = 8.0
TRAIN_SIZE = {"mnist": 12000, "digits": None}  # digits: all 1,797 images
RECORD_CLIP = (0.1, 0.3, 1.0, 3.0, 10.0)
# Batches every seed's smallest client can take (the headline grids' seeds 0-2: digits
# 44 images, MNIST 384); a batch larger than a client's data is refused.
RECORD_BATCH = {"mnist": (10, 50), "digits": (10, 32)}
CLIENT_CLIP = (0.1, 0.3, 1.0, 3.0)


def config(dataset: str, defense: str, params: dict, batch: int = 10) -> RunConfig:
    """One search point: the headline's FedAvg run on ``dataset``'s validation split
    under ``defense`` at the target epsilon (the learning rate left to the default)."""
    return RunConfig(
        dataset=f"{dataset}:validation",
        model="lenet-sigmoid",
        defenses=(defense,),
        defense_params={defense: {"target_epsilon": TARGET_EPSILON, **params}},
        fed=FedConfig(clients=10, rounds=10, local_epochs=2, batch_size=batch, eval_every=0),
    )


def search(dataset: str) -> list[tuple[tuple, RunConfig]]:
    """(knobs, config) of both levels' searches: ("dp-sgd", C, batch), ("client-dp", C)."""
    record = [
        (("dp-sgd", c, b), config(dataset, "dp-sgd", {"max_grad_norm": c}, b))
        for c, b in product(RECORD_CLIP, RECORD_BATCH[dataset])
    ]
    client = [(("client-dp", c), config(dataset, "client-dp", {"clip": c})) for c in CLIENT_CLIP]
    return record + client


def searched(dataset: str) -> set[tuple]:
    """The knobs of every point of ``dataset``'s search (rows of other points, from a
    wider or older search, do not compete)."""
    return {k for k, _ in search(dataset)}


def knobs(row: dict, dataset: str) -> tuple | None:
    """A row's knobs if it is a point of ``dataset``'s search, else None."""
    c = row["config"]
    if row["dataset"] != f"{dataset}:validation" or len(c["defenses"]) != 1:
        return None
    (name,) = c["defenses"]
    p = c["defense_params"][name]
    if p.get("target_epsilon") != TARGET_EPSILON:
        return None
    if name == "dp-sgd":
        return (name, p["max_grad_norm"], c["fed"]["batch_size"])
    return (name, p["clip"])


def winners(rows: list[dict], dataset: str) -> dict[str, tuple]:
    """Per defense, the knobs (without the name) of the best validation accuracy on
    ``dataset``; a failed run scores 0, a tie goes to the smaller clip."""
    scores: dict[str, dict[tuple, float]] = {}
    grid = searched(dataset)
    for r in rows:
        if (k := knobs(r, dataset)) not in grid:
            continue
        acc = r["accuracy"] if r["status"] == "ok" and r["accuracy"] is not None else 0.0
        scores.setdefault(k[0], {})[k[1:]] = acc
    return {name: max(sorted(s), key=lambda k: s[k]) for name, s in scores.items()}


def table(rows: list[dict], dataset: str) -> str:
    """The search on ``dataset``: every point's validation accuracy and epsilon, the
    winners marked."""
    lines = [
        "| defense | knobs | validation accuracy | epsilon (Opacus) |",
        "|---|---|---|---|",
    ]
    best = winners(rows, dataset)
    grid = searched(dataset)
    for r in sorted(rows, key=lambda r: knobs(r, dataset) or ()):
        if (k := knobs(r, dataset)) not in grid:
            continue
        name = k[0]
        what = f"C {k[1]:g}, batch {k[2]}" if name == "dp-sgd" else f"C {k[1]:g}"
        mark = " (chosen)" if best.get(name) == k[1:] else ""
        acc = f"{r['accuracy']:.3f}" if r["status"] == "ok" else f"error: {r['error']}"
        eps = r["epsilon_record"] if name == "dp-sgd" else r["epsilon_client"]
        lines.append(f"| {name} | {what}{mark} | {acc} | {'-' if eps is None else f'{eps:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(TRAIN_SIZE), default="mnist")
    add_data_root(ap)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    use_data_root(args.data_root)
    from privbench.data.datasets import load_dataset

    store = ResultStore(args.out)
    size = TRAIN_SIZE[args.dataset]
    full = load_dataset(args.dataset, {"train_size": size} if size else {}, root=args.data_root)
    measure(search(args.dataset), store, full.validation_split(0.1, seed=0))
    rows = current(store.read())
    print(table(rows, args.dataset))
    print("chosen:", winners(rows, args.dataset))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
