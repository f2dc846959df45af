"""Why the ``cnn`` is slow to start on MNIST: its weight init, measured.

The ``cnn`` (3 conv3x3 + ReLU + max-pool blocks, 3 linear layers, no normalisation) on
raw [0, 1] pixels with PyTorch's layer defaults (Kaiming-uniform with a = sqrt(5), which
shrinks the signal layer after layer) sits at chance for its first few hundred SGD steps.
Every short schedule on it measures that plateau rather than the method: FedAvg in
the DP reproduction's no-DP point (10 IID clients x 1,200 MNIST images, 5 rounds of one
epoch at batch 32) ends at 0.33. He init (Kaiming-normal for ReLU, zero biases;
``--weight-init he``) starts learning at once.

Two measurements, each over ``--seeds`` seeds:

- a textbook SGD loop (one client's view): 1,200 training images, batch 32, five
  epochs, test accuracy on 2,000 test images after each epoch, for both inits at the
  tuned learning rate of FedAvg on MNIST and at a third of it;
- privbench FedAvg in the DP reproduction's record-level setting without DP, both inits.

Rows go to ``benchmarks/results/cnn_init.jsonl`` as they come (a rerun skips what is
there); the tables print at the end:

    python benchmarks/cnn_init.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _store import RESULTS, RowStore  # run as a script: benchmarks/ is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent / "reproduce"))
from _common import add_data_root, use_data_root  # noqa: E402

import privbench
from privbench import FedConfig, RunConfig
from privbench.data.datasets import load_dataset
from privbench.models import CNN
from privbench.results.report import mean_std as ms
from privbench.tuning import default_lr

INITS = ("pytorch", "he")
FIELDS = ("kind", "dataset", "init", "lr", "seed")
DATASETS = ("mnist", "fashionmnist")


def sgd_curve(data, init: str, lr: float, seed: int, *, n=1200, batch=32, epochs=5) -> list:
    """Test accuracy after each epoch of a plain SGD loop from ``init``."""
    torch.manual_seed(seed)
    x, y = data.x_train[:n], data.y_train[:n]
    xt, yt = data.x_test[:2000], data.y_test[:2000]
    model = CNN(tuple(x.shape[1:]), data.num_classes, init=init)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch):
            i = perm[s : s + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
        with torch.no_grad():
            curve.append(float((model(xt).argmax(1) == yt).float().mean()))
    return curve


def fedavg_config(init: str, seed: int) -> RunConfig:
    """The DP reproduction's record-level setting (benchmarks/reproduce/dp.py), no DP."""
    return RunConfig(
        dataset="mnist",
        dataset_params={"train_size": 12000},
        partition="iid",
        model="cnn",
        model_params={"weight_init": init},
        seed=seed,
        fed=FedConfig(clients=10, rounds=5, local_epochs=1, batch_size=32, eval_every=1),
    )


def measure(seeds: int, store: RowStore) -> None:
    for dataset in DATASETS:
        data = load_dataset(dataset, {"train_size": 12000})
        tuned = default_lr(dataset, "cnn")[0]
        for seed in range(seeds):
            for lr in (tuned, tuned / 3):
                for init in INITS:
                    key = ("sgd", dataset, init, lr, seed)
                    if key in store:
                        continue
                    curve = sgd_curve(data, init, lr, seed)
                    store.add(dict(zip(FIELDS, key, strict=True)) | {"curve": curve})
                    print(f"  sgd {dataset} {init} lr {lr:g} seed {seed}: {curve}", flush=True)
    for seed in range(seeds):
        for init in INITS:
            key = ("fedavg", "mnist", init, None, seed)
            if key in store:
                continue
            (row,) = privbench.run(fedavg_config(init, seed))
            curve = [h["accuracy"] for h in row.history]
            store.add(
                dict(zip(FIELDS, key, strict=True))
                | {"curve": curve, "lr": row.config["fed"]["lr"]}
            )
            print(f"  fedavg mnist {init} seed {seed}: {curve}", flush=True)


def table(rows: list[dict]) -> str:
    lines = [
        "| measurement | data | lr | init | runs | accuracy after epoch / round 1 | 3 | 5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[list[float]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["dataset"], r["lr"], r["init"]), []).append(r["curve"])
    for (kind, dataset, lr, init), curves in sorted(groups.items(), key=str):
        cols = [ms([c[i] for c in curves]) for i in (0, 2, 4)]
        what = (
            "plain SGD loop, 1,200 images, batch 32" if kind == "sgd" else "FedAvg, 10 IID clients"
        )
        lines.append(
            f"| {what} | {dataset} | {lr:.3g} | {init} | {len(curves)} | " + " | ".join(cols) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    add_data_root(ap)
    args = ap.parse_args()
    use_data_root(args.data_root)
    store = RowStore(
        Path(RESULTS) / "cnn_init.jsonl",
        lambda r: (
            r["kind"],
            r["dataset"],
            r["init"],
            r["lr"] if r["kind"] == "sgd" else None,
            r["seed"],
        ),
    )
    measure(args.seeds, store)
    print(table(list(store)))


if __name__ == "__main__":
    main()
