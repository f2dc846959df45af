"""Speed, side by side in one process: batched vs sequential attacks, vectorised vs
sequential federated rounds, privbench vs Flower's simulation, start-up and peak memory.

Every ratio compares two paths on the same input, measured here and now, with a
quality check next to it (PSNR for attacks, accuracy for training) so a speed-up that
changes results shows. Run:

    python benchmarks/perf.py [--json] [--trials 1,16,64] [--clients 10,100] [--no-flower]
                              [--data-root ../shared/data]

With ``--data-root`` it adds the MNIST points of
``perf_mnist.py``: a 100-client round in img/s and GFLOP/s beside a plain PyTorch loop
and the sgemm ceiling.

Flower needs the bench extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from privbench import AttackConfig, FedConfig, RunConfig
from privbench.attacks.base import ATTACKS
from privbench.engine.experiment import Experiment
from privbench.engine.seeding import torch_generator
from privbench.evaluation.metrics import psnr
from privbench.progress import set_enabled
from privbench.testing import as_float64


def _progress(label: str, result: dict, fast: str) -> None:
    print(
        f"  {label}: {fast} {result[f'{fast}_s']:.2f}s, sequential "
        f"{result['sequential_s']:.2f}s, {result['speedup']:.1f}x",
        file=sys.stderr,
        flush=True,
    )


def _victim(seed: int = 0):
    """One single-image FedSGD gradient on the default data and model."""
    cfg = RunConfig(
        partition="iid",
        seed=seed,
        fed=FedConfig(clients=4, rounds=1, eval_every=0),
        attack=AttackConfig(names=("dlg",)),
    ).resolve()
    exp = Experiment(cfg)
    out = exp.train()
    obs = next(o for o in out.channel.observations if o.sender == 0 and o.kind == "gradient")
    return out, obs


def attack_throughput(trials: list[int], attacks: dict[str, dict]) -> list[dict]:
    """T trials = T independent reconstructions of one observed gradient (seeds 0..T-1),
    run as one batched computation and one after another."""
    out, obs = _victim()
    truth = out.victims[0].images.numpy()
    for name, params in attacks.items():  # warm-up: first calls pay one-off setup costs
        for batched in (True, False):
            ATTACKS.create(name, batched=batched, **{**params, "iters": 1}).reconstruct_batch(
                [obs] * 2, generators=[torch_generator(0, 2, i) for i in range(2)]
            )
    rows = []
    for name, params in attacks.items():
        for t in trials:
            gens = [lambda i=i: torch_generator(0, 2, i) for i in range(t)]
            result = {"attack": name, "trials": t, **params}
            quality = {}
            for batched in (True, False):
                attack = ATTACKS.create(name, batched=batched, **params)
                t0 = time.perf_counter()
                recs = attack.reconstruct_batch(
                    [obs] * t, generators=[g() for g in gens], seen=out.channel.observations
                )
                secs = time.perf_counter() - t0
                key = "batched" if batched else "sequential"
                result[f"{key}_s"] = secs
                result[f"{key}_trials_per_s"] = t / secs
                quality[key] = [psnr(truth, r.images.clamp(0, 1).numpy()) for r in recs]
                result[f"{key}_psnr"] = float(np.mean(quality[key]))
            result["speedup"] = result["sequential_s"] / result["batched_s"]
            diff = np.abs(np.array(quality["batched"]) - np.array(quality["sequential"]))
            result["max_psnr_diff_db"] = float(diff.max())
            result["trials_within_0_1_db"] = int((diff <= 0.1).sum())
            result["psnr_per_trial"] = {k: [round(v, 2) for v in q] for k, q in quality.items()}
            rows.append(result)
            _progress(f"{name} x{t}", result, "batched")
    return rows


def float64_agreement(trials: int, iters: int) -> dict:
    """DLG batched vs sequential in float64, where float32's rounding (which L-BFGS on a
    sigmoid net amplifies until single trials part ways) is out of the picture."""
    out, obs = _victim()
    obs64 = as_float64(obs)
    truth = out.victims[0].images.double().numpy()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        quality = {}
        for batched in (True, False):
            recs = ATTACKS.create("dlg", iters=iters, batched=batched).reconstruct_batch(
                [obs64] * trials, generators=[torch_generator(0, 2, i) for i in range(trials)]
            )
            quality[batched] = np.array([psnr(truth, r.images.clamp(0, 1).numpy()) for r in recs])
    finally:
        torch.set_default_dtype(default)
    diff = np.abs(quality[True] - quality[False])
    return {
        "attack": "dlg",
        "trials": trials,
        "iters": iters,
        "trials_within_0_1_db": int((diff <= 0.1).sum()),
        "max_psnr_diff_db": float(diff.max()),
    }


def expected_view(evals: int) -> dict:
    """FedAvP's expected view (the loss over all 289 op pairs) is a loss ``vmap`` cannot
    trace, so DLG evaluates its trials one by one; there the victim's weight gradient is
    plain autograd (``_weight_grad``) instead of ``torch.func.grad``. Both on the same
    dummy image: seconds per evaluation (the simulated message, the gradient-matching
    distance and its gradient in the image) and whether the results are identical."""
    from privbench.attacks import gradient as gradient_mod

    cfg = RunConfig(
        method="fedavp",
        partition="iid",
        fed=FedConfig(clients=4, rounds=1, eval_every=0),
        attack=AttackConfig(names=("dlg",)),
    ).resolve()
    out = Experiment(cfg).train()
    obs = next(o for o in out.channel.observations if o.sender == 0 and o.kind == "gradient")
    sim = gradient_mod.VictimSimulator(obs.context)
    target = {n: t.detach() for n, t in obs.payload.items()}
    x0 = torch.rand(1, *out.victims[0].images.shape[1:], generator=torch.Generator().manual_seed(0))
    y = out.victims[0].labels[:1]

    def evaluate() -> tuple[float, torch.Tensor, torch.Tensor]:
        x = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        for _ in range(evals):
            msg = sim.message("gradient", x, y)
            dist = sum(((msg[n] - target[n]) ** 2).sum() for n in target)
            (gx,) = torch.autograd.grad(dist, [x])
        return (time.perf_counter() - t0) / evals, dist.detach(), gx

    real = gradient_mod._weight_grad
    evaluate()  # warm-up
    autograd_s, autograd_dist, autograd_gx = evaluate()
    gradient_mod._weight_grad = gradient_mod.functorch_weight_grad
    try:
        functorch_s, functorch_dist, functorch_gx = evaluate()
    finally:
        gradient_mod._weight_grad = real
    return {
        "evals": evals,
        "autograd_s": autograd_s,
        "functorch_s": functorch_s,
        "speedup": functorch_s / autograd_s,
        "identical": bool(
            torch.equal(autograd_dist, functorch_dist) and torch.equal(autograd_gx, functorch_gx)
        ),
    }


def _fed_config(clients: int, rounds: int, **fed) -> RunConfig:
    """The default run at ``clients`` clients, IID: 100 clients share digits' 1,797
    images, and every client needs a full batch of 10 (the default)."""
    fed = {"eval_every": 0, **fed}
    return RunConfig(
        partition="iid", fed=FedConfig(clients=clients, rounds=rounds, **fed)
    ).resolve()


def round_throughput(clients: list[int], rounds: int) -> list[dict]:
    """Training only (no attack): the default method, data, partition and model."""
    rows = []
    for n in clients:
        result = {"clients": n, "rounds": rounds}
        for vectorise in (True, False):
            exp = Experiment(_fed_config(n, rounds, vectorise=vectorise))
            t0 = time.perf_counter()
            outcome = exp.train()
            secs = time.perf_counter() - t0
            key = "vectorised" if vectorise else "sequential"
            result[f"{key}_s"] = secs
            result[f"{key}_rounds_per_s"] = rounds / secs
            result[f"{key}_accuracy"] = outcome.utility.accuracy
        result["speedup"] = result["sequential_s"] / result["vectorised_s"]
        rows.append(result)
        _progress(f"{n} clients", result, "vectorised")
    return rows


def flower_comparison(clients: int, rounds: int) -> dict:
    """The same federated config (default data, model, FedAvg, no attack) run by
    privbench and by Flower's simulation runtime through privbench's adapter."""
    try:
        from privbench.integrations.flower import FlowerBench
    except ImportError as err:
        return {"skipped": str(err)}
    cfg = _fed_config(clients, rounds, eval_every=1)
    t0 = time.perf_counter()
    exp = Experiment(cfg)
    ours = exp.train()
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (row,) = FlowerBench(cfg).run_simulation()
    flower_s = time.perf_counter() - t0
    if row.status != "ok":
        return {"skipped": f"the Flower run failed: {row.error}"}
    return {
        "clients": clients,
        "rounds": rounds,
        "privbench_s": ours_s,
        "flower_s": flower_s,
        "speedup": flower_s / ours_s,
        "privbench_accuracy": ours.utility.accuracy,
        "flower_accuracy": row.accuracy,
    }


# Runs ``python -m privbench ARGS`` and reports its own peak RSS (KiB on Linux) last.
_CHILD = """
import resource, runpy, sys
sys.argv = ["privbench", *sys.argv[1:]]
try:
    runpy.run_module("privbench", run_name="__main__")
finally:
    print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _measure_command(args: list[str]) -> dict:
    """Wall time and peak resident memory of ``python -m privbench ...`` in a fresh
    process (the import of torch included)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args, "--no-save", "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
    )
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"privbench {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    peak = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_KIB ")]
    rows = [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith(" ")]
    return {
        "command": "python -m privbench " + " ".join(args),
        "seconds": secs,
        "peak_mib": int(peak[-1].split()[1]) / 1024 if peak else None,
        "row": rows[-1] if rows else "",
    }


# What a fresh process imports before any work: torch alone, then privbench with every
# registered method, attack and defense. Prints the seconds and the heavy libraries loaded.
_STARTUP = """
import sys, time
t0 = time.perf_counter()
import {module}
{after}
heavy = [
    m for m in ("torchvision", "torch._dynamo", "scipy", "skimage", "sklearn") if m in sys.modules
]
print(time.perf_counter() - t0, ",".join(heavy))
"""


def startup(repeats: int) -> dict:
    """Import time of ``import privbench`` plus its registries in a fresh process, beside
    a bare ``import torch`` (the floor), median of ``repeats``; and which heavy libraries
    the import pulled in (torchvision, scipy and scikit-image wait until a run needs them)."""

    def median_of(module: str, after: str = "") -> tuple[float, list[str]]:
        times, heavy = [], []
        for _ in range(repeats):
            out = subprocess.run(
                [sys.executable, "-c", _STARTUP.format(module=module, after=after)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            times.append(float(out[0]))
            heavy = out[1].split(",") if len(out) > 1 else []
        return float(np.median(times)), heavy

    torch_s, _ = median_of("torch")
    ours_s, heavy = median_of("privbench", "privbench.registries()")
    # The digits every default run trains on: read from scikit-learn's CSV, beside the
    # same arrays through scikit-learn's own loader (what a run paid before).
    digits_s, digits_heavy = median_of(
        "privbench", "from privbench.data import load_dataset; load_dataset('digits')"
    )
    via_s, _ = median_of("privbench", "import sklearn.datasets; sklearn.datasets.load_digits()")
    return {
        "repeats": repeats,
        "torch_s": torch_s,
        "privbench_s": ours_s,
        "overhead_s": ours_s - torch_s,
        "heavy_modules": heavy,
        "digits_s": digits_s,
        "digits_heavy_modules": digits_heavy,
        "digits_via_sklearn_s": via_s,
    }


def whole_runs() -> list[dict]:
    """The README's main job and a 100-client run, each in a fresh process."""
    return [
        _measure_command(
            ["run", "fedavg", "--clients", "100", "--partition", "iid", "--rounds", "3"]
        ),
        _measure_command(["run", "fedmix", "--attack", "dlg"]),
    ]


def markdown(report: dict) -> str:
    lines = [
        "Attacks (one observed digits gradient, LeNet-sigmoid; T independent trials):",
        "",
        "| attack | trials | batched s | sequential s | speed-up | mean PSNR batched / sequential"
        " | trials within 0.1 dB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["attacks"]:
        lines.append(
            f"| {r['attack']} | {r['trials']} | {r['batched_s']:.2f} | {r['sequential_s']:.2f} "
            f"| {r['speedup']:.1f}x | {r['batched_psnr']:.2f} / {r['sequential_psnr']:.2f} dB "
            f"| {r['trials_within_0_1_db']}/{r['trials']} |"
        )
    f64 = report["float64_check"]
    lines += [
        "",
        f"Same DLG trials in float64: {f64['trials_within_0_1_db']}/{f64['trials']} within "
        f"0.1 dB (max difference {f64['max_psnr_diff_db']:.3f} dB).",
    ]
    ev = report.get("expected_view")
    if ev is not None:
        lines += [
            "",
            "FedAvP's expected view, one DLG evaluation (289 op pairs; trials one by one): "
            f"autograd {ev['autograd_s'] * 1000:.0f} ms, torch.func.grad "
            f"{ev['functorch_s'] * 1000:.0f} ms, {ev['speedup']:.2f}x; results "
            + ("bit-identical." if ev["identical"] else "DIFFERENT."),
        ]
    lines += [
        "",
        "Federated rounds (digits, IID, LeNet-sigmoid, FedAvg, 2 local epochs, batch 10; "
        "training only):",
        "",
        "| clients | rounds | vectorised s | sequential s | speed-up | accuracy vec / seq |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        lines.append(
            f"| {r['clients']} | {r['rounds']} | {r['vectorised_s']:.2f} | "
            f"{r['sequential_s']:.2f} | {r['speedup']:.1f}x | "
            f"{r['vectorised_accuracy']:.3f} / {r['sequential_accuracy']:.3f} |"
        )
    fl = report.get("flower")
    if fl is not None:
        lines += ["", "Flower's simulation vs privbench (same config, training + evaluation):", ""]
        if "skipped" in fl:
            lines.append(f"skipped: {fl['skipped']}")
        else:
            lines += [
                "| clients | rounds | privbench s | Flower s | speed-up | accuracy privbench /"
                " Flower |",
                "|---|---|---|---|---|---|",
                f"| {fl['clients']} | {fl['rounds']} | {fl['privbench_s']:.2f} | "
                f"{fl['flower_s']:.2f} | {fl['speedup']:.1f}x | "
                f"{fl['privbench_accuracy']:.3f} / {fl['flower_accuracy']:.3f} |",
            ]
    st = report.get("startup")
    if st is not None:
        heavy = ", ".join(st["heavy_modules"]) or "none of torchvision, scipy, scikit-image"
        lines += [
            "",
            f"Start-up, fresh process (median of {st['repeats']}): `import privbench` with its "
            f"registries {st['privbench_s']:.2f} s, `import torch` alone {st['torch_s']:.2f} s "
            f"(privbench's own {st['overhead_s']:.2f} s); heavy libraries loaded: {heavy}. "
            f"With the digits loaded {st['digits_s']:.2f} s "
            f"({', '.join(st['digits_heavy_modules']) or 'still none'}); through "
            f"scikit-learn's loader {st['digits_via_sklearn_s']:.2f} s.",
        ]
    if report.get("runs"):
        lines += ["", "Whole runs, each in a fresh process:", "", "| command | wall s | peak MiB |"]
        lines.append("|---|---|---|")
        for r in report["runs"]:
            peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(f"| `{r['command']}` | {r['seconds']:.1f} | {peak} |")
    if report.get("mnist"):
        from perf_mnist import markdown as mnist_markdown

        lines += ["", *mnist_markdown(report["mnist"])]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", default="1,16,64", help="attack trial counts")
    ap.add_argument("--dlg-iters", type=int, default=3, help="DLG outer L-BFGS steps")
    ap.add_argument("--ig-iters", type=int, default=50, help="IG Adam iterations")
    ap.add_argument("--clients", default="10,100", help="client counts for round throughput")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--view-evals", type=int, default=20, help="FedAvP expected-view evaluations")
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument("--no-runs", action="store_true", help="skip the whole-run timings")
    ap.add_argument("--startup-repeats", type=int, default=5, help="fresh processes per import")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--data-root", default=None, help="adds the MNIST points (perf_mnist.py)")
    args = ap.parse_args()
    set_enabled(False)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "attacks": attack_throughput(
            [int(t) for t in args.trials.split(",")],
            {"dlg": {"iters": args.dlg_iters}, "ig": {"iters": args.ig_iters}},
        ),
        "float64_check": float64_agreement(16, args.dlg_iters),
        "expected_view": expected_view(args.view_evals),
        "rounds": round_throughput([int(c) for c in args.clients.split(",")], args.rounds),
        "startup": startup(args.startup_repeats),
    }
    if not args.no_flower:
        report["flower"] = flower_comparison(10, args.rounds)
    if not args.no_runs:
        report["runs"] = whole_runs()
    if args.data_root:
        from perf_mnist import mnist_points  # benchmarks/ is on sys.path (run as a script)

        report["mnist"] = mnist_points(args.data_root, args.rounds)
    print(json.dumps(report, indent=2) if args.json else markdown(report))


if __name__ == "__main__":
    main()
