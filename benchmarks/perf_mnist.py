"""MNIST points for ``benchmarks/perf.py``: a federated round at the reproductions'
scale (100 clients × 600 images, 10 per round, batch 10, one local epoch, the ``cnn``)
in img/s and GFLOP/s, next to the two ceilings it is held to on this CPU:

- a plain PyTorch SGD loop over the same images and model at batch 10 (what one client
  alone costs) and at batch 100 (10 clients' batches as one);
- a 2048² float32 matrix product (the BLAS ceiling).

FLOPs per image are counted by ``torch.utils.flop_counter`` on one forward and backward
pass, so GFLOP/s is img/s × that count. Run through perf.py (``--data-root``) or alone:

    python benchmarks/perf_mnist.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from privbench import FedConfig, RunConfig
from privbench.engine.experiment import Experiment
from privbench.models import CNN

CLIENTS, PER_ROUND, BATCH = 100, 10, 10


def flops_per_image(shape=(1, 28, 28), classes: int = 10, batch: int = 10) -> float:
    """Forward + backward FLOPs of the ``cnn`` per image (a multiply-add counts 2)."""
    model = CNN(shape, classes)
    x, y = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def plain_loop(x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """img/s of a textbook SGD loop (zero_grad, forward, backward, step) over (x, y)."""
    model = CNN(tuple(x.shape[1:]), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def epoch(n: int) -> None:
        for s in range(0, n, batch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[s : s + batch]), y[s : s + batch]).backward()
            opt.step()

    epoch(20 * batch)  # warm-up
    t0 = time.perf_counter()
    epoch(len(y))
    return len(y) / (time.perf_counter() - t0)


def step_ms(clients: int = PER_ROUND, batch: int = BATCH, repeats: int = 10) -> dict:
    """ms of one vectorised SGD step (the gradient of ``clients`` copies of the ``cnn``,
    one batch each, 28x28) three ways: stacked channels-last (``privbench.nn.stacked``,
    what a vectorised round runs), ``vmap(grad)`` (what every other model runs), and the
    clients one after another with the module."""
    from torch.func import functional_call, grad, vmap

    from privbench.nn.stacked import stacked_forward, stacked_grads

    torch.manual_seed(0)
    model = CNN((1, 28, 28), 10)
    params = {n: p.detach().expand(clients, *p.shape).clone() for n, p in model.named_parameters()}
    x = torch.randn(clients, batch, 1, 28, 28)
    y = torch.randint(0, 10, (clients, batch))

    def loss_fn(m, xs, ys):
        return F.cross_entropy(m(xs), ys)

    forward = stacked_forward(model)
    per_client = vmap(
        grad(lambda p, xs, ys: loss_fn(lambda t: functional_call(model, p, (t,)), xs, ys))
    )

    def one_by_one():
        for c in range(clients):
            model.zero_grad(set_to_none=True)
            loss_fn(model, x[c], y[c]).backward()

    def timed(fn) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats * 1e3

    return {
        "stacked": timed(lambda: stacked_grads(forward, loss_fn, params, x, y)),
        "vmap": timed(lambda: per_client(params, x, y)),
        "one_by_one": timed(one_by_one),
    }


def round_config(
    data_root: str | None,
    vectorise: bool,
    rounds: int,
    method: str = "fedavg",
    sizes: dict | None = None,
) -> RunConfig:
    return RunConfig(
        method=method,
        dataset="mnist",
        dataset_params=sizes or {},
        model="cnn",
        partition="iid",
        data_root=data_root,
        fed=FedConfig(
            clients=CLIENTS,
            fraction=PER_ROUND / CLIENTS,
            rounds=rounds,
            local_epochs=1,
            batch_size=BATCH,
            lr=0.05,
            eval_every=0,
            vectorise=vectorise,
        ),
    ).resolve()


def federated_round(exp: Experiment, rounds: int, per_client: int) -> dict:
    """img/s of privbench's FedAvg rounds at the scale above: training only (the round's
    time less the final evaluation over the test set and every client's local split,
    timed apart)."""
    evaluate, spent = exp.evaluate, []

    def timed(model):
        t = time.perf_counter()
        out = evaluate(model)
        spent.append(time.perf_counter() - t)
        return out

    exp.evaluate = timed
    t0 = time.perf_counter()
    outcome = exp.train()
    secs = time.perf_counter() - t0 - sum(spent)
    images = per_client * PER_ROUND * rounds
    return {
        "seconds": secs,
        "img_per_s": images / secs,
        "accuracy": outcome.utility.accuracy,
        "eval_seconds": sum(spent),
    }


def mnist_points(data_root: str | None, rounds: int = 3, sizes: dict | None = None) -> dict:
    """The points at the scale above; ``sizes`` (``train_size``, ``test_size``) shrinks
    MNIST for a quick check of the code, not for numbers."""
    runs = {
        vec: Experiment(round_config(data_root, vec, rounds, sizes=sizes)) for vec in (True, False)
    }
    data = runs[True].data  # one load of MNIST serves the plain loops too
    # every client holds the same number of training images (IID, 80% of 600)
    per_client = len(runs[True].client_data(0)[1])
    x, y = data.x_train[: PER_ROUND * per_client], data.y_train[: PER_ROUND * per_client]
    points = {
        "mflop_per_image": flops_per_image() / 1e6,
        "sgemm_gflops": sgemm_gflops(),
        "plain_batch10": plain_loop(x, y, 10),
        "plain_batch100": plain_loop(x, y, 100),
        "images_per_client": per_client,
        "step_ms": step_ms(),
        "rounds": rounds,
    }
    for vectorise, exp in runs.items():
        key = "vectorised" if vectorise else "sequential"
        points[key] = federated_round(exp, rounds, per_client)
    # NaiveMix (mixup with the shared means): each client mixes its own batches, then
    # the clients train as one computation. FedMix: each client draws its X_g entry, then
    # eq. 5 (an input derivative, so a double backward) runs as one computation.
    for method in MIXING:
        for vectorise in (True, False):
            exp = Experiment(round_config(data_root, vectorise, rounds, method, sizes))
            key = f"{method}_{'vectorised' if vectorise else 'sequential'}"
            points[key] = federated_round(exp, rounds, per_client)
    return points


MIXING = ("naivemix", "fedmix")
NAMES = {"naivemix": "NaiveMix", "fedmix": "FedMix"}


def markdown(p: dict) -> list[str]:
    mf = p["mflop_per_image"]

    def row(label: str, ips: float, extra: str = "") -> str:
        return f"| {label} | {ips:,.0f} | {ips * mf / 1e3:.1f} | {extra} |"

    vec, seq = p["vectorised"], p["sequential"]
    return [
        f"MNIST, `cnn` ({mf:.1f} MFLOP per image forward + backward), a FedAvg round of "
        f"{PER_ROUND} clients × {p['images_per_client']} images, batch {BATCH}, one local epoch "
        f"({p['rounds']} rounds, training only):",
        "",
        "| path | img/s | GFLOP/s | note |",
        "|---|---|---|---|",
        row(
            "privbench round, vectorised clients",
            vec["img_per_s"],
            f"accuracy {vec['accuracy']:.3f}",
        ),
        row(
            "privbench round, clients one by one",
            seq["img_per_s"],
            f"accuracy {seq['accuracy']:.3f}",
        ),
        *[
            row(
                f"{NAMES[m]} round, {'vectorised clients' if v else 'clients one by one'}",
                p[f"{m}_{'vectorised' if v else 'sequential'}"]["img_per_s"],
                f"accuracy {p[f'{m}_vectorised' if v else f'{m}_sequential']['accuracy']:.3f}",
            )
            for m in MIXING
            for v in (True, False)
        ],
        row("plain PyTorch SGD loop, batch 10", p["plain_batch10"]),
        row("plain PyTorch SGD loop, batch 100", p["plain_batch100"]),
        f"| 2048² sgemm ceiling | - | {p['sgemm_gflops']:.1f} | |",
        "",
        f"Vectorised round vs the plain batch-10 loop: "
        f"{vec['img_per_s'] / p['plain_batch10']:.2f}×; vs clients one by one: "
        f"{vec['img_per_s'] / seq['img_per_s']:.2f}×. "
        + " ".join(
            f"{NAMES[m]} vectorised vs one by one: "
            f"{p[f'{m}_vectorised']['img_per_s'] / p[f'{m}_sequential']['img_per_s']:.2f}×."
            for m in MIXING
        ),
        "",
        f"One SGD step of {PER_ROUND} clients × batch {BATCH}: stacked channels-last "
        f"{p['step_ms']['stacked']:.0f} ms, vmap {p['step_ms']['vmap']:.0f} ms, one by one "
        f"{p['step_ms']['one_by_one']:.0f} ms.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="folder with MNIST/ (torchvision layout)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    points = mnist_points(args.data_root, args.rounds)
    print(json.dumps(points, indent=2) if args.json else "\n".join(markdown(points)))


if __name__ == "__main__":
    main()
