"""FedAvP against its baselines and FedMix on Dirichlet(0.1) label skew, >= 3 seeds.

Table 1 — per dataset and method: accuracy, macro-F1, iDLG on a victim's FedSGD gradient
with the method-aware loss (FedAvP: the attacker's expected loss over the global
policy; FedMix: the FedMix loss with the shared means), the artifact attack on what the
method shares (FedMix: the label histogram read off y-bar; FedAvP: policy-inference),
a uniform guess of the victim's histogram for reference, and bytes (policy bytes apart).
The worst-case column takes the attacker's best guess for the victim: for FedAvP the
best of the three models of its op pairs, for FedMix the mean entry or the enumeration of
the X_g entries the server built (``guess=enumerate``). iDLG runs 4 batched restarts.
Table 2 — FedAvP only: which model of the unknown op pairs works best for iDLG
(expected loss over the policy, one sampled draw, or no augmentation).
A failed attack (every L-BFGS run diverged) is left out of the mean and printed.

Each training run is done once; every attack variant is run on the same recorded
messages. Rows go to ``benchmarks/results/fedavp_table.jsonl`` as each run finishes (a
rerun skips what is there); the tables to ``fedavp_table.md``.

    python benchmarks/fedavp_table.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
from _store import RESULTS as OUT  # run as a script: benchmarks/ is on sys.path
from _store import RowStore

from privbench import AttackConfig, FedConfig, RunConfig
from privbench.engine.experiment import Experiment
from privbench.evaluation.attacking import attack_victims
from privbench.evaluation.metrics import label_distribution_error
from privbench.results.report import mean_std as ms

METHODS = ("fedavg", "randaugment", "trivialaugment", "fedavp", "fedmix")
ARTIFACT = {"fedavp": "policy-inference", "fedmix": "averaged-data"}
GUESSES = ("expected", "sample", "identity")
ATTACK = "idlg"  # analytic label, L-BFGS on the image: stabler than DLG on these victims


def config(dataset, method, seed, args) -> RunConfig:
    return RunConfig(
        method=method,
        dataset=dataset,
        partition="dirichlet",
        partition_params={"alpha": 0.1},
        model="lenet-sigmoid",
        seed=seed,
        fed=FedConfig(clients=args.clients, rounds=args.rounds, eval_every=0),
        attack=AttackConfig(names=(ATTACK,), round=0, batch=1, steps=1),
    )


def attack(exp: Experiment, outcome, name: str, **params):
    """Run one attack variant on the recorded messages of a finished training run:
    (score, label-distribution error), or (None, None) when it failed (counted)."""
    cfg = exp.cfg
    # The attack builds from resolved parameters: the variant's, over the defaults.
    atk = replace(cfg.attack, names=(name,), params={name: params})
    exp.cfg = replace(cfg, attack=atk).resolve()
    try:
        score, err, _, _ = attack_victims(exp, name, outcome, None)
        return score, err
    except RuntimeError as e:  # e.g. every L-BFGS restart diverged: a failed trial
        print(f"    {name} {params}: {e}", flush=True)
        return None, None
    finally:
        exp.cfg = cfg


def _psnr_ssim(score):
    return (score.psnr, score.ssim) if score is not None else (None, None)


def one_run(dataset, method, seed, args) -> dict:
    t0 = time.perf_counter()
    exp = Experiment(config(dataset, method, seed, args))
    outcome = exp.train()
    grad = {"iters": args.iters}
    row = {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "accuracy": outcome.utility.accuracy,
        "macro_f1": outcome.utility.macro_f1,
        "bytes_up": outcome.channel.bytes_up,
        "bytes_down": outcome.channel.bytes_down,
        "policy_up": outcome.channel.bytes["policy"]["up"],
        "policy_down": outcome.channel.bytes["policy"]["down"],
    }
    # Every view of the victim's loss the attacker can take; the worst case for the one
    # victim is its best view (highest PSNR).
    views = {"dlg": {}}
    if method == "fedavp":
        views.update({f"dlg_{g}": {"guess": g} for g in GUESSES[1:]})
    if method == "fedmix":  # the server enumerates the X_g entries it built
        views["dlg_enumerate"] = {"guess": "enumerate"}
    scores = {k: attack(exp, outcome, ATTACK, **grad, **p)[0] for k, p in views.items()}
    for k, score in scores.items():
        row[k + "_psnr"], row[k + "_ssim"] = _psnr_ssim(score)
    best = max((s for s in scores.values() if s is not None), default=None, key=lambda s: s.psnr)
    row["worst_psnr"], row["worst_ssim"] = _psnr_ssim(best)
    if method in ARTIFACT:
        row["label_err"] = attack(exp, outcome, ARTIFACT[method])[1]
    _, labels = exp.client_data(0)
    truth = torch.bincount(labels, minlength=exp.data.num_classes).double()
    row["uniform_label_err"] = label_distribution_error(torch.ones_like(truth), truth)
    row["seconds"] = time.perf_counter() - t0
    print(
        f"  {dataset} {method} seed {seed}: acc {row['accuracy']:.3f} "
        f"{ATTACK} {row['dlg_psnr']} dB ({row['seconds']:.0f} s)",
        flush=True,
    )
    return row


def tables(raw: list[dict], datasets) -> str:
    lines = [
        "| dataset | method | accuracy | macro-F1 | iDLG PSNR dB | iDLG SSIM | worst-case iDLG "
        "PSNR dB | artifact attack label-dist error | uniform guess error | up MiB | down MiB "
        "| policy up / down MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        for method in METHODS:
            rs = [r for r in raw if r["dataset"] == ds and r["method"] == method]
            if not rs:
                continue
            art = ARTIFACT.get(method)
            lines.append(
                "| "
                + " | ".join(
                    [
                        ds,
                        method,
                        ms(r["accuracy"] for r in rs),
                        ms(r["macro_f1"] for r in rs),
                        ms(r["dlg_psnr"] for r in rs),
                        ms(r["dlg_ssim"] for r in rs),
                        ms(r["worst_psnr"] for r in rs),
                        f"{ms(r.get('label_err') for r in rs)} ({art})" if art else "-",
                        ms(r["uniform_label_err"] for r in rs),
                        f"{np.mean([r['bytes_up'] for r in rs]) / 2**20:.2f}",
                        f"{np.mean([r['bytes_down'] for r in rs]) / 2**20:.2f}",
                        f"{np.mean([r['policy_up'] for r in rs]) / 2**20:.2f} / "
                        f"{np.mean([r['policy_down'] for r in rs]) / 2**20:.2f}",
                    ]
                )
                + " |"
            )
    lines += [
        "",
        "| dataset | FedAvP attacker's guess of the op pairs | iDLG PSNR dB | iDLG SSIM |",
        "|---|---|---|---|",
    ]
    for ds in datasets:
        rs = [r for r in raw if r["dataset"] == ds and r["method"] == "fedavp"]
        for guess in GUESSES:
            key = "dlg" if guess == "expected" else f"dlg_{guess}"
            lines.append(
                f"| {ds} | {guess} | {ms(r[key + '_psnr'] for r in rs)} | "
                f"{ms(r[key + '_ssim'] for r in rs)} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=["digits", "photos"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=30, help="iDLG L-BFGS iterations")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    store = RowStore(OUT / "fedavp_table.jsonl", lambda r: (r["dataset"], r["method"], r["seed"]))
    raw = []
    for ds in args.datasets:
        for m in args.methods:
            for seed in range(args.seeds):
                if (ds, m, seed) not in store:
                    store.add(one_run(ds, m, seed, args))
                raw.append(store[ds, m, seed])
    text = tables(raw, args.datasets)
    (OUT / "fedavp_table.md").write_text(
        f"# benchmarks/fedavp_table.py --seeds {args.seeds} (2 CPU cores)\n\n{text}\n"
    )
    print(json.dumps(raw, indent=2) if args.json else text)


if __name__ == "__main__":
    main()
