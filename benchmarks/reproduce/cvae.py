"""Reproduction: federated CVAE imputation (the thesis) on MNIST.

The thesis' claims (binarised MNIST, Dirichlet label skew β ∈ {0.1, 0.3, 0.5, 10, 100}):

1. real + synthetic data beats real data alone at heavy skew (β = 0.1, 0.3): imputing
   k = 100 images per client raises macro-F1 over k = 0;
2. uniform imputation has an optimum: past ~45% synthetic images (k = 500) it degrades;
3. minority imputation (its Algorithm 1) beats uniform imputation, by 0.015 macro-F1 on
   average over β and k;
4. a classifier pre-trained centrally on CVAE samples is worse than federated training
   on real data; fine-tuned locally on each client's real data it is slightly better
   than vanilla FedAvg at β ∈ {0.1, 0.3} and comparable elsewhere.

Protocol, the thesis' beside ours (scaled to 2 CPU cores):

- data: binarised MNIST, ~600 training images per client; here MNIST (pixels in [0, 1],
  the CVAE's Bernoulli likelihood on them), a fixed subset of ``--train-size`` training
  images over 100 clients, each keeping 20% as its local test split;
- label skew: each client's class proportions drawn from Dirichlet(β), every client an
  equal share of the images (``dirichlet`` with ``over = "clients"``: the thesis' ~600
  images per client; splitting each class over 100 clients at β = 0.1 instead leaves
  clients with almost nothing);
- clients: 100, all taking part in every round, 15 rounds, 1 local epoch: as in the
  thesis, with its classifier recipe everywhere (Adam, lr 0.01, weight decay 1e-4,
  batch 32): the clients' local training (``FedConfig.optimizer = "adam"``, fresh per
  client and round), the server's pre-training and the local fine-tuning;
- classifier: ExquisiteNet in the thesis, ``cnn`` here;
- k: {100, 500} of ~600 real images (1/6 and 5/6 of a client's real training images)
  in the thesis; the same fractions of this run's per-client training images here;
- metric: macro-F1 on each client's own local test split, averaged over clients (the
  thesis tests "on the clients each using their respective original local test
  datasets"), and on the global test set;
- fine-tuning: the thesis' protocol (the pre-trained classifier trained locally by each
  client on its real data, for as many epochs as the federated runs train, then tested
  on its own test split) next to privbench's ``cvae-finetune`` (federated fine-tuning).

Rows go to ``benchmarks/results/reproduce/cvae.jsonl`` as they come (resumable; seed 0
of every cell first):

    python benchmarks/reproduce/cvae.py --data-root ../shared/data --seeds 3
"""

from __future__ import annotations

import copy
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import torch
from _common import mean_std as ms
from _common import parse, parser, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ (run as a file)

from _store import RowStore  # noqa: E402

from privbench import FedConfig, RunConfig  # noqa: E402
from privbench.augmenters.zsdg import train_on  # noqa: E402
from privbench.engine.experiment import Experiment  # noqa: E402
from privbench.engine.federated import predict  # noqa: E402
from privbench.engine.seeding import torch_generator  # noqa: E402
from privbench.errors import PrivbenchError  # noqa: E402
from privbench.evaluation.metrics import macro_f1  # noqa: E402

STORE = Path(__file__).resolve().parents[1] / "results" / "reproduce" / "cvae.jsonl"
BETAS = (0.1, 0.5, 10.0)
SHARES = (1 / 6, 5 / 6)  # k / real training images: the thesis' 100 and 500 of ~600
# (method, share of k): FedAvg is k = 0; finetune runs both fine-tuning protocols.
VARIANTS = (
    ("fedavg", 0.0),
    *((m, s) for m in ("cvae-uniform", "cvae-minority") for s in SHARES),
    ("cvae-finetune", 0.0),
)
FINETUNE = ("pre-trained", "local fine-tune")  # the thesis' protocol, from cvae-finetune's run
RECIPE = {"lr": 0.01, "weight_decay": 1e-4, "batch_size": 32}  # the thesis' Adam


def config(
    beta: float,
    method: str,
    k: int,
    seed: int,
    *,
    rounds: int,
    train_size: int,
    dataset: str = "mnist",
    clients: int = 100,
) -> RunConfig:
    return RunConfig(
        method=method,
        method_params={"k": k} if method in ("cvae-uniform", "cvae-minority") else {},
        dataset=dataset,
        dataset_params={"train_size": train_size} if train_size else {},
        partition="dirichlet",
        partition_params={"alpha": beta, "over": "clients"},
        model="cnn",
        seed=seed,
        fed=FedConfig(
            clients=clients,
            fraction=1.0,
            rounds=rounds,
            local_epochs=1,
            batch_size=RECIPE["batch_size"],
            lr=RECIPE["lr"],
            optimizer="adam",
            weight_decay=RECIPE["weight_decay"],
            eval_every=0,
        ),
    )


def per_client_k(exp: Experiment, share: float) -> int:
    """k for a share: that fraction of the mean client's real training images."""
    return int(round(share * np.mean([len(c.train) for c in exp.clients])))


def local_f1(exp: Experiment, model_of) -> float:
    """Mean over clients of macro-F1 on the client's own local test split, with the model
    ``model_of(client_id)`` (the global model, or the client's own)."""
    x, y = exp.data.x_train, exp.data.y_train
    scores = []
    for c in exp.clients:
        if len(c.test):
            pred = predict(model_of(c.client_id), x[c.test]).numpy()
            scores.append(macro_f1(y[c.test].numpy(), pred, exp.data.num_classes))
    return float(np.mean(scores))


def scores(exp: Experiment, model) -> dict:
    u = exp.evaluate(model)
    return {
        "local_f1": local_f1(exp, lambda _: model),
        "global_f1": u.macro_f1,
        "accuracy": u.accuracy,
        "client_acc_mean": u.client_acc_mean,
    }


def capture_pretrained(exp: Experiment) -> dict[str, torch.nn.Module]:
    """Make ``exp.train()`` keep a copy of the server's classifier right after the
    method's phase before round 0 (cvae-finetune: the federated CVAE, the clients' label
    counts, central pre-training on synthetic samples), under ``"model"``. The run
    trains its CVAE once for both the federated and the thesis' protocol, from the
    run's own seeded initialisation."""
    kept: dict[str, torch.nn.Module] = {}
    prepare = exp._prepare

    def keep(global_model, states, parts):
        prepare(global_model, states, parts)
        kept["model"] = copy.deepcopy(global_model)

    exp._prepare = keep
    return kept


def fine_tuned_locally(exp: Experiment, model, epochs: int) -> dict[int, torch.nn.Module]:
    """The thesis' fine-tuning: every client trains its own copy of ``model`` on its real
    training data with the thesis' recipe."""
    out = {}
    for c in exp.clients:
        own = copy.deepcopy(model)
        x, y = exp.client_data(c.client_id)
        g = torch_generator(exp.cfg.seed, 11, c.client_id)
        train_on(own, x, y, epochs=epochs, generator=g, optimizer="adam", **RECIPE)
        out[c.client_id] = own
    return out


def key(row: dict) -> tuple:
    return (row["dataset"], row["beta"], row["variant"], row["seed"])


def measure(
    betas,
    seeds: int,
    store: RowStore,
    *,
    rounds: int,
    train_size: int,
    dataset: str = "mnist",
    clients: int = 100,
) -> None:
    kw = {"rounds": rounds, "train_size": train_size, "dataset": dataset, "clients": clients}
    split: dict[tuple, Experiment] = {}
    for seed, beta, (method, share) in product(range(seeds), betas, VARIANTS):
        variant = method if not share else f"{method} k={share:.2f}n"
        names = [variant, *(FINETUNE if method == "cvae-finetune" else ())]
        if all((dataset, beta, n, seed) in store for n in names):
            continue
        if share and (seed, beta) not in split:  # the clients' sizes: one partition per cell
            split[seed, beta] = Experiment(config(beta, "fedavg", 0, seed, **kw))
        k = per_client_k(split[seed, beta], share) if share else 0
        cfg = config(beta, method, k, seed, **kw)
        base = {"dataset": dataset, "beta": beta, "seed": seed, "method": method, "k": k}
        exp = Experiment(cfg)
        base["weight_init"] = exp.cfg.model_params["weight_init"]  # the cnn's, as it ran
        kept = capture_pretrained(exp) if method == "cvae-finetune" else {}
        start = time.perf_counter()
        try:
            exp.train()
            row = {**base, "variant": variant, **scores(exp, exp.global_model)}
        except PrivbenchError as err:  # e.g. diverged: recorded, shown in the table
            row = {**base, "variant": variant, "error": str(err)}
        # the run's compute (the finetune run's includes its central pre-training)
        store.add({**row, "wall_s": time.perf_counter() - start})
        if "model" in kept:
            model = kept["model"]
            store.add({**base, "variant": "pre-trained", **scores(exp, model)})
            start = time.perf_counter()
            own = fine_tuned_locally(exp, model, epochs=rounds * cfg.fed.local_epochs)
            local = {"local_f1": local_f1(exp, own.__getitem__)}
            store.add(
                {
                    **base,
                    "variant": "local fine-tune",
                    **local,
                    "wall_s": time.perf_counter() - start,
                }
            )
        got = f"local macro-F1 {row['local_f1']:.3f}" if "error" not in row else row["error"]
        print(f"  β {beta} {variant} seed {seed}: {got}", flush=True)


ORDER = ("fedavg", "cvae-uniform", "cvae-minority", "cvae-finetune", *FINETUNE)


def table(rows: list[dict]) -> str:
    """Per β and variant, mean ± std over seeds; runs that failed (diverged) are
    counted apart and left out of the means."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["beta"], r["variant"]), []).append(r)
    lines = [
        "| dataset | β | variant | k | runs | failed | local macro-F1 | global macro-F1 "
        "| accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def order(kv):
        (dataset, beta, variant), _ = kv
        return (dataset, beta, ORDER.index(variant.split(" k=")[0]), variant)

    for (dataset, beta, variant), every in sorted(groups.items(), key=order):
        rs = [r for r in every if "error" not in r]
        ks = sorted({r["k"] for r in every})

        def col(name, rs=rs):
            vals = [r[name] for r in rs if r.get(name) is not None]
            return ms(vals, 3) if vals else "-"

        lines.append(
            f"| {dataset} | {beta:g} | {variant} | {'/'.join(map(str, ks))} | {len(rs)} "
            f"| {len(every) - len(rs)} "
            f"| {col('local_f1')} | {col('global_f1')} | {col('accuracy')} |"
        )
    return "\n".join(lines)


def _means(rows: list[dict]) -> dict[tuple, float]:
    """Mean local macro-F1 over seeds per (dataset, β, variant); failed runs left out."""
    vals: dict[tuple, list[float]] = {}
    for r in rows:
        if "error" not in r:
            vals.setdefault((r["dataset"], r["beta"], r["variant"]), []).append(r["local_f1"])
    return {k: float(np.mean(v)) for k, v in vals.items()}


def claims(rows: list[dict]) -> list[str]:
    """Per dataset and β, the differences of local macro-F1 the thesis' claims are about
    (means over seeds)."""
    f = _means(rows)
    lo, hi = (f"k={s:.2f}n" for s in SHARES)
    out = []
    for dataset, beta in sorted({k[:2] for k in f}):

        def d(a, b, dataset=dataset, beta=beta):
            x, y = f.get((dataset, beta, a)), f.get((dataset, beta, b))
            return None if x is None or y is None else x - y

        checks = [
            (f"uniform {lo} − FedAvg", d(f"cvae-uniform {lo}", "fedavg")),
            (f"uniform {hi} − uniform {lo}", d(f"cvae-uniform {hi}", f"cvae-uniform {lo}")),
            *(
                (f"minority − uniform at {s}", d(f"cvae-minority {s}", f"cvae-uniform {s}"))
                for s in (lo, hi)
            ),
            ("local fine-tune − FedAvg", d("local fine-tune", "fedavg")),
            ("pre-trained − FedAvg", d("pre-trained", "fedavg")),
        ]
        parts = [f"{name} {v:+.3f}" for name, v in checks if v is not None]
        out.append(f"- {dataset}, β = {beta:g}: " + "; ".join(parts))
    return out


def verdicts(rows: list[dict]) -> list[str]:
    """The thesis' four claims, each judged on the means over seeds (local macro-F1):
    holds when the sign the thesis reports shows at every β it names, partly at some."""
    f = _means(rows)
    lo, hi = (f"k={s:.2f}n" for s in SHARES)
    cells = sorted({k[:2] for k in f})
    heavy = [c for c in cells if c[1] <= 0.3]

    def diffs(a, b, where):
        return [f[(*c, a)] - f[(*c, b)] for c in where if (*c, a) in f and (*c, b) in f]

    claims = [
        (
            "imputing 1/6 n raises macro-F1 over FedAvg at heavy skew (β ≤ 0.3)",
            diffs(f"cvae-uniform {lo}", "fedavg", heavy),
            True,
        ),
        (
            "uniform imputation degrades from 1/6 n to 5/6 n (β ≤ 0.3)",
            diffs(f"cvae-uniform {hi}", f"cvae-uniform {lo}", heavy),
            False,
        ),
        (
            "minority beats uniform imputation (every β and k)",
            [v for s in (lo, hi) for v in diffs(f"cvae-minority {s}", f"cvae-uniform {s}", cells)],
            True,
        ),
        (
            "local fine-tuning of the pre-trained classifier beats FedAvg at β ≤ 0.3",
            diffs("local fine-tune", "fedavg", heavy),
            True,
        ),
        (
            "the pre-trained classifier alone is worse than FedAvg (every β)",
            diffs("pre-trained", "fedavg", cells),
            False,
        ),
    ]
    out = []
    for text, values, positive in claims:
        if values:
            passed = verdict(sum((v > 0) == positive for v in values), len(values))
            spread = ", ".join(f"{v:+.3f}" for v in values)
            out.append(f"- {text}: differences {spread}: **{passed}**")
    return out


def page(rows: list[dict]) -> str:
    """The results page's block: the table, then the differences per β."""
    return "\n".join([table(rows), "", *claims(rows)])


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, out=STORE, seeds=3, rounds=15)
    ap.add_argument("--betas", nargs="+", type=float, default=list(BETAS))
    args = parse(ap, argv)
    store = RowStore(Path(args.out), key)
    measure(args.betas, args.seeds, store, rounds=args.rounds, train_size=args.train_size)
    rows = list(store)
    print(page(rows))
    print("\n".join(verdicts(rows)))


if __name__ == "__main__":
    main()
