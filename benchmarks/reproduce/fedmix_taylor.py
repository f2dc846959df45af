"""Why FedMix collapses at λ = 0.2 here: its surrogate against the loss it approximates.

FedMix replaces global mixup's loss ℓ(f((1-λ)x_i + λx̄_j), ·) by a first-order Taylor
expansion around (1-λ)x_i (the paper's eq. 5, ``privbench.augmenters.fedmix.FedMix``):

    (1-λ) ℓ(f(x'), y_i) + λ ℓ(f(x'), ȳ_j) + λ <∂ℓ(f(x'), y_i)/∂x', x̄_j>,   x' = (1-λ) x_i.

The last term is linear in the model's input gradient and bounded by nothing: a model
can lower the surrogate by growing input gradients that point away from x̄_j instead of
fitting the labels. This script trains one 2-class MNIST client (the reproduction's
``shards`` partition and ``cnn``, SGD at the reproduction's learning rate on 2-class
shards, batch 10) on FedMix's
loss from the same initialisation at several λ, and records at every epoch the
surrogate, its Taylor term, the norm of the input gradient, and the loss it stands for:
the mixup loss at (1-λ)x_i + λx̄_j with the same X_g entry (NaiveMix's loss). The gap
between the two is how far the first-order approximation has drifted. The learning
rate (``--lr``) defaults to the FedMix reproduction's on the dataset's 2-class shards:
its search's winner once that search has ended, the CLI's tuned rate before; rows at
another rate stay in the table and verdicts, labelled with theirs.

Rows go to ``benchmarks/results/reproduce/fedmix_taylor.jsonl`` (one per λ and seed;
a rerun skips what is there):

    python benchmarks/reproduce/fedmix_taylor.py --data-root ../shared/data
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import current, parse, parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ (run as a file)

from _store import RowStore  # noqa: E402

from privbench.augmenters.base import per_sample_cross_entropy  # noqa: E402
from privbench.augmenters.fedmix import FedMix, NaiveMix  # noqa: E402
from privbench.data.datasets import load_dataset  # noqa: E402
from privbench.data.partition import partition  # noqa: E402
from privbench.models import MODELS, cnn  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "reproduce" / "fedmix_taylor.jsonl"
LAMBDAS = (0.05, 0.1, 0.2)
# the cnn's init today (its registered default); a row records the init it ran with
INIT = MODELS.resolve_params("cnn")["weight_init"]
CLIENTS = 100


def client_and_means(train_size: int, seed: int, dataset: str = "mnist"):
    """Client 0's images and labels under the reproduction's 2-class shards, and X_g: the
    mean image and mean one-hot label of every other client (M_k = all)."""
    data = load_dataset(dataset, {"train_size": train_size} if dataset != "digits" else {})
    parts = partition(
        "shards", data.y_train.numpy(), CLIENTS, seed=seed, params={"classes_per_client": 2}
    )
    x, y = data.x_train, data.y_train
    onehot = torch.nn.functional.one_hot(y, 10).float()
    xg = torch.stack([x[p].mean(0) for p in parts[1:]])
    yg = torch.stack([onehot[p].mean(0) for p in parts[1:]])
    return x[parts[0]], y[parts[0]], xg, yg


def components(model, method: FedMix, x, y, xbar, ybar) -> dict[str, float]:
    """FedMix's surrogate, its Taylor term, the input gradient's norm and the mixup loss
    it approximates (NaiveMix's at the same λ and entry), averaged over the batch."""
    lam = method.lam
    xs = ((1 - lam) * x).detach().requires_grad_(True)
    own = per_sample_cross_entropy(model(xs), y)
    (dx,) = torch.autograd.grad(own.sum(), xs)
    taylor = (dx * xbar).flatten(1).sum(1).mean()
    surrogate = method.mixed_loss(model, x, y, xbar, ybar)  # needs the input gradient
    with torch.no_grad():
        mixup = NaiveMix(lam=lam).mixed_loss(model, x, y, xbar, ybar)
    return {
        "surrogate": float(surrogate.detach()),
        "taylor": float(lam * taylor),
        "input_grad_norm": float(dx.flatten(1).norm(dim=1).mean()),
        "mixup_loss": float(mixup),
    }


def grid_lr(dataset: str) -> float:
    """The FedMix reproduction's learning rate on ``dataset``'s 2-class shards: its
    search's winner once that search has ended, else the dataset's tuned default."""
    import fedmix

    from privbench import ResultStore

    found = (fedmix.OUT / "results.jsonl").exists()
    rows = current(ResultStore(str(fedmix.OUT)).read()) if found else []
    return fedmix.lr_of(dataset, "shards-2", fedmix.chosen_lrs(rows))


def run(
    lam: float, seed: int, *, train_size: int, epochs: int, lr: float, dataset: str = "mnist"
) -> dict:
    x, y, xg, yg = client_and_means(train_size, seed, dataset)
    torch.manual_seed(seed)
    model = cnn(tuple(x.shape[1:]), 10, weight_init=INIT)
    method = FedMix(lam=lam)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randint(len(yg), (len(y),), generator=torch.Generator().manual_seed(99))
    history = []
    for epoch in range(epochs + 1):
        # The probe: every image with a fixed X_g entry, before this epoch's steps.
        comp = [
            components(model, method, x[i : i + 1], y[i : i + 1], xg[j : j + 1], yg[j : j + 1])
            for i, j in zip(range(0, len(y), 4), probe[::4].tolist(), strict=False)
        ]
        history.append(
            {"epoch": epoch, **{k: float(np.mean([c[k] for c in comp])) for k in comp[0]}}
        )
        if epoch == epochs:
            break
        order = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), 10):
            idx = order[s : s + 10]
            j = int(torch.randint(len(yg), (1,), generator=gen))
            opt.zero_grad()
            method.mixed_loss(model, x[idx], y[idx], xg[j : j + 1], yg[j : j + 1]).backward()
            opt.step()
    return {
        "dataset": dataset,
        "lam": lam,
        "seed": seed,
        "lr": lr,
        "weight_init": INIT,
        "images": len(y),
        "history": history,
    }


def key(row: dict) -> tuple:
    # early rows: MNIST, and the cnn's PyTorch init (its default then)
    init = row.get("weight_init", "pytorch")
    return (row.get("dataset", "mnist"), row["lam"], row["seed"], init, row["lr"])


def today(rows: list[dict]) -> list[dict]:
    """The rows of the cnn's init today (earlier rows ran PyTorch's, the default then)."""
    return [r for r in rows if r.get("weight_init", "pytorch") == INIT]


def table(rows: list[dict]) -> str:
    rows = today(rows)
    lines = [
        "| lr | λ | seed | epoch | FedMix surrogate | its Taylor term | ‖∂ℓ/∂x‖ "
        "| mixup loss it approximates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["lr"], r["lam"], r["seed"])):
        for h in r["history"]:
            if h["epoch"] in (0, 10, 20) or h is r["history"][-1]:
                lines.append(
                    f"| {r['lr']:g} | {r['lam']:g} | {r['seed']} | {h['epoch']} "
                    f"| {h['surrogate']:.3f} "
                    f"| {h['taylor']:.3f} | {h['input_grad_norm']:.3g} | {h['mixup_loss']:.3f} |"
                )
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """Per learning rate and λ, at the last epoch (means over seeds): how far the
    surrogate sits below the mixup loss it stands for, how much the input gradient grew
    from the start and from its lowest over the epochs (He init starts it large, then
    training shrinks it), and in how many seeds the model ended constant (its output no
    longer depends on its input)."""
    out, rows = [], today(rows)
    for lr, lam in sorted({(r["lr"], r["lam"]) for r in rows}):
        rs = [r for r in rows if (r["lr"], r["lam"]) == (lr, lam)]
        gap = np.mean([r["history"][-1]["mixup_loss"] - r["history"][-1]["surrogate"] for r in rs])
        grow = np.mean(
            [r["history"][-1]["input_grad_norm"] / r["history"][0]["input_grad_norm"] for r in rs]
        )
        rebound = np.mean(
            [
                r["history"][-1]["input_grad_norm"]
                / max(min(h["input_grad_norm"] for h in r["history"]), 1e-12)
                for r in rs
            ]
        )
        taylor = np.mean([r["history"][-1]["taylor"] for r in rs])
        dead = sum(r["history"][-1]["input_grad_norm"] < 1e-8 for r in rs)
        seeds = f"{len(rs)} seed{'s' * (len(rs) > 1)}"
        out.append(
            f"- λ = {lam:g}, lr {lr:g} ({seeds}, {rs[0]['history'][-1]['epoch']} epochs): "
            f"the surrogate sits {gap:.3f} below the mixup loss; Taylor term {taylor:.3f}; "
            f"input gradient {grow:.2g}× its initial norm and {rebound:.2g}× its lowest; "
            f"the model ended constant (zero input gradient: a dead network) in {dead} of "
            f"{len(rs)} seeds"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, out=OUT, seeds=2)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    ap.add_argument("--dataset", default="mnist", choices=("mnist", "fashionmnist", "digits"))
    ap.add_argument("--lr", type=float, help="default: the FedMix reproduction's (grid_lr)")
    args = parse(ap, argv)
    lr = args.lr if args.lr is not None else grid_lr(args.dataset)
    store = RowStore(Path(args.out), key)
    for seed in range(args.seeds):
        for lam in args.lambdas:
            if (args.dataset, lam, seed, INIT, lr) in store:
                continue
            kw = {"train_size": args.train_size, "epochs": args.epochs, "dataset": args.dataset}
            kw["lr"] = lr
            start = time.perf_counter()
            row = run(lam, seed, **kw)
            row = store.add({**row, "wall_s": time.perf_counter() - start})
            print(f"  λ {lam:g} seed {seed}: {row['history'][-1]}", flush=True)
    rows = list(store)
    print(table(rows))
    print("\n".join(verdicts(rows)))


if __name__ == "__main__":
    main()
