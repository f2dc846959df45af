"""Generative augmentation on `digits`: utility, fairness, leakage and bytes, >= 3 seeds.

Methods: FedAvg, Fed-ZDAC, Fed-ZDAS, CVAE-uniform, CVAE-minority, CVAE-finetune, all on
the same BatchNorm CNN (`cnn-bn`, which ZSDG needs), on Fed-ZDA's multimodal partition
and on Dirichlet(0.1) label skew. Per method and partition, mean ± std over seeds of:

- accuracy, client-level and class-level accuracy variance (Fed-ZDA's fairness
  metrics), macro-F1 (the thesis' metric), share of synthetic data in training sets;
- gradient leakage: Inverting Gradients on a victim's step in round 3 (after ZSDG's
  burn-in, so Fed-ZDAC victims mix synthetic images into the attacked step), by an
  attacker that fixes its own estimate of those samples (``ig``) and by one that
  optimises them as free dummies (``ig@joint``); the worst case per victim over the two,
  as raw PSNR and as ``psnr_affine`` (``cnn-bn`` trains BatchNorm in train mode: the
  gradient barely depends on an image's contrast and brightness, so raw PSNR scores
  something the message does not determine);
- artifact leakage: `bn-inversion` (the server inverts the victim's uploaded model),
  `generator` (memorisation audit of the shared CVAE decoder, per private image) and
  `synthetic-nn` (decoder samples vs their nearest private image), each as PSNR/SSIM;
- a baseline for the nearest-neighbour scores: as many *public* images of the same
  distribution (the test split) as the attack returns, scored the same way against the
  victim's data. An artifact score at this baseline shows no memorisation;
- bytes up/down.

A membership check of the shared decoder: the `generator` audit run on the victim's
private images (members of the CVAE's training data) and on as many public test images of the same
labels (non-members), against the victim's last CVAE upload. Members reconstructing clearly
better than non-members is the sign of memorisation; equal scores mean the decoder
draws the data's distribution, not its records.

Then it checks two claims of the papers against the measured numbers: Fed-ZDAC lowers
client accuracy variance against FedAvg (Fed-ZDA, multimodal), and minority imputation
reaches at least the macro-F1 of uniform imputation at high skew (thesis, Dirichlet 0.1).

Rows go to ``benchmarks/results/generative_table.jsonl`` as each run finishes (a rerun
skips what is there, so an interrupted run resumes; the docs' results page is generated
from them):

    python benchmarks/generative_table.py --seeds 3
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from _store import RESULTS, RowStore  # run as a script: benchmarks/ is on sys.path

import privbench
from privbench import AttackConfig, FedConfig, RunConfig
from privbench.attacks.base import ATTACKS
from privbench.augmenters import ClientState
from privbench.engine.channel import Channel
from privbench.engine.experiment import Experiment
from privbench.evaluation.metrics import score_nearest

METHODS = ("fedavg", "zdac", "zdas", "cvae-uniform", "cvae-minority", "cvae-finetune")
PARTITIONS = {"multimodal": {}, "dirichlet-0.1": {"alpha": 0.1}}
ATTACK_ROUND = 3
STORE = RESULTS / "generative_table.jsonl"


def store(path=STORE) -> RowStore:
    """Runs keyed by (partition, method, seed); membership rows by method "membership"."""
    return RowStore(path, lambda r: (r["partition"], r.get("method", "membership"), r["seed"]))


def ms(values, digits: int = 3) -> str:
    """'mean ± std' over seeds (population std); '-' when no seed has a value."""
    arr = np.array([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return "-"
    return f"{arr.mean():.{digits}f} ± {arr.std():.{digits}f}"


def config(method: str, partition: str, seed: int, rounds: int) -> RunConfig:
    attacks = ["ig", "ig@joint", "bn-inversion"]
    if method.startswith("cvae"):
        attacks += ["generator", "synthetic-nn"]
    return RunConfig(
        method=method,
        dataset="digits",
        partition=partition.split("-")[0],
        partition_params=PARTITIONS[partition],
        model="cnn-bn",
        seed=seed,
        fed=FedConfig(clients=10, rounds=rounds, eval_every=0),
        attack=AttackConfig(names=tuple(attacks), round=ATTACK_ROUND),
    )


def public_baseline(cfg: RunConfig, count: int, seed: int) -> float:
    """PSNR of ``count`` public test images scored like an artifact attack's output
    against victim 0's private images (nearest neighbour)."""
    exp = Experiment(cfg)
    private, _ = exp.client_data(0)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(exp.data.y_test), generator=g)[:count]
    return score_nearest(private, exp.data.x_test[pick], exp.data.value_range).psnr


def membership(seeds: int, done: RowStore) -> list[dict]:
    """Generator audit PSNR on victim 0's images (members) vs public test images
    (non-members), through the server's view of victim 0's last CVAE upload. The CVAE
    phase is the same for every cvae-* method, so one method stands for all."""
    for partition in PARTITIONS:
        for seed in range(seeds):
            if (partition, "membership", seed) in done:
                continue
            exp = Experiment(config("cvae-uniform", partition, seed, ATTACK_ROUND + 1))
            states = {
                c.client_id: ClientState(c.client_id, *exp.client_data(c.client_id))
                for c in exp.clients
            }
            channel = Channel(exp.threat)
            aug = exp.make_augmenter()
            parts = exp.make_parts(method=aug, defenses=(), channel=channel)
            exp._prepare(exp.build_model(), states, parts)
            seen = channel.observations
            upload = [o for o in seen if o.sender == 0 and o.kind == "generator"][-1]
            x, y = exp.client_data(0)
            g = torch.Generator().manual_seed(seed)
            # Non-members with the members' labels: the same classes, other records.
            pick = []
            for c, n in enumerate(torch.bincount(y, minlength=exp.data.num_classes).tolist()):
                pool = torch.nonzero(exp.data.y_test == c).flatten()
                pick += pool[torch.randint(len(pool), (n,), generator=g)].tolist()
            xo, yo = exp.data.x_test[pick], exp.data.y_test[pick]
            audit = ATTACKS.create("generator")
            scores = {}
            for name, (images, labels) in {"member": (x, y), "non_member": (xo, yo)}.items():
                rec = audit.audit(upload, images=images, labels=labels, generator=g, seen=seen)
                scores[name] = float(
                    np.mean([psnr_of(a, b) for a, b in zip(images, rec.images, strict=True)])
                )
            done.add({"partition": partition, "method": "membership", "seed": seed, **scores})
            print(
                f"  membership {partition} seed {seed}: members {scores['member']:.2f} dB, "
                f"non-members {scores['non_member']:.2f} dB",
                flush=True,
            )
    return [r for r in done if r["method"] == "membership" and r["seed"] < seeds]


def psnr_of(a: torch.Tensor, b: torch.Tensor) -> float:
    from privbench.evaluation.metrics import psnr

    return psnr(a.double().numpy(), b.double().clamp(0, 1).numpy())


def run(seeds: int, rounds: int, done: RowStore) -> list[dict]:
    for partition in PARTITIONS:
        for method in METHODS:
            for seed in range(seeds):
                if (partition, method, seed) in done:
                    continue
                cfg = config(method, partition, seed, rounds)
                rows = {r.attack: r for r in privbench.run(cfg)}
                first = next(iter(rows.values()))
                errors = {a: r.error for a, r in rows.items() if r.status != "ok"}

                def score(attack, field, rows=rows):
                    r = rows.get(attack)
                    return getattr(r, field) if r is not None and r.status == "ok" else None

                bn = rows["bn-inversion"]
                rec = {
                    "partition": partition,
                    "method": method,
                    "seed": seed,
                    "accuracy": first.accuracy,
                    "client_acc_var": first.client_acc_var,
                    "class_acc_var": first.class_acc_var,
                    "macro_f1": first.macro_f1,
                    "synthetic_share": first.synthetic_share,
                    "ig_psnr": score("ig", "psnr"),
                    "ig_ssim": score("ig", "ssim"),
                    "joint_psnr": score("ig@joint", "psnr"),
                    "worst_psnr": score("worst-case", "psnr"),
                    "worst_affine": score("worst-case", "psnr_affine"),
                    "bn_psnr": score("bn-inversion", "psnr"),
                    "bn_ssim": score("bn-inversion", "ssim"),
                    "gen_psnr": score("generator", "psnr"),
                    "gen_ssim": score("generator", "ssim"),
                    "nn_psnr": score("synthetic-nn", "psnr"),
                    "nn_ssim": score("synthetic-nn", "ssim"),
                    "public_psnr": public_baseline(cfg, bn.n_images or 40, seed),
                    "bytes_up": first.bytes_up,
                    "bytes_down": first.bytes_down,
                    "errors": errors,
                }
                done.add(rec)
                print(
                    f"  {partition} {method} seed {seed}: acc {rec['accuracy']:.3f} "
                    f"client var {rec['client_acc_var']:.4f} F1 {rec['macro_f1']:.3f} "
                    f"ig {rec['ig_psnr'] or float('nan'):.1f} dB "
                    f"bn-inv {rec['bn_psnr'] or float('nan'):.1f} dB"
                    + (f" errors {errors}" if errors else ""),
                    flush=True,
                )
    return [r for r in done if r["method"] in METHODS and r["seed"] < seeds]


def table(raw: list[dict]) -> str:
    head = (
        "| partition | method | accuracy | client acc var | class acc var | macro-F1 | "
        "synthetic share | IG PSNR dB (estimate / joint) | worst case PSNR / PSNR-affine dB | "
        "bn-inversion PSNR / SSIM | generator audit PSNR / "
        "SSIM | synthetic-nn PSNR / SSIM | public-data baseline PSNR | up / down MiB |"
    )
    lines = [head, "|" + "---|" * 14]
    for partition in PARTITIONS:
        for method in METHODS:
            rs = [r for r in raw if r["partition"] == partition and r["method"] == method]
            if not rs:  # not measured yet (the script resumes)
                continue

            def col(key, rs=rs, digits=3):
                return ms((r.get(key) for r in rs), digits=digits)

            def pair(a, b, col=col):
                return "-" if col(a) == "-" else f"{col(a, digits=1)} / {col(b, digits=2)}"

            lines.append(
                "| "
                + " | ".join(
                    [
                        partition,
                        method,
                        col("accuracy"),
                        col("client_acc_var", digits=4),
                        col("class_acc_var", digits=4),
                        col("macro_f1"),
                        col("synthetic_share", digits=2),
                        f"{col('ig_psnr', digits=1)} / {col('joint_psnr', digits=1)}",
                        f"{col('worst_psnr', digits=1)} / {col('worst_affine', digits=1)}",
                        pair("bn_psnr", "bn_ssim"),
                        pair("gen_psnr", "gen_ssim"),
                        pair("nn_psnr", "nn_ssim"),
                        col("public_psnr", digits=1),
                        f"{np.mean([r['bytes_up'] for r in rs]) / 2**20:.2f} / "
                        f"{np.mean([r['bytes_down'] for r in rs]) / 2**20:.2f}",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def membership_table(rows: list[dict]) -> str:
    lines = [
        "| partition | audit PSNR dB, members (victim's images) | audit PSNR dB, non-members "
        "(public images, same labels) | gap dB |",
        "|---|---|---|---|",
    ]
    for partition in PARTITIONS:
        rs = [r for r in rows if r["partition"] == partition]
        gap = [r["member"] - r["non_member"] for r in rs]
        lines.append(
            f"| {partition} | {ms((r['member'] for r in rs), 2)} | "
            f"{ms((r['non_member'] for r in rs), 2)} | {ms(gap, 2)} |"
        )
    return "\n".join(lines)


def claims(raw: list[dict]) -> str:
    """The two papers' claims against the means over seeds; a claim whose runs are not
    all measured yet says so."""

    def mean(partition, method, key):
        vals = [r[key] for r in raw if r["partition"] == partition and r["method"] == method]
        return float(np.mean(vals)) if vals else None

    out = []
    checks = (
        (
            "Fed-ZDA: ZDAC lowers client accuracy variance vs FedAvg (multimodal)",
            mean("multimodal", "zdac", "client_acc_var"),
            mean("multimodal", "fedavg", "client_acc_var"),
            lambda a, b: a < b,
            4,
        ),
        (
            "Thesis: minority imputation >= uniform in macro-F1 at high skew (Dirichlet 0.1)",
            mean("dirichlet-0.1", "cvae-minority", "macro_f1"),
            mean("dirichlet-0.1", "cvae-uniform", "macro_f1"),
            lambda a, b: a >= b,
            3,
        ),
    )
    for text, a, b, holds, digits in checks:
        if a is None or b is None:
            out.append(f"- {text}: not measured yet.")
        else:
            verdict = "holds" if holds(a, b) else "does not hold"
            out.append(f"- {text}: {verdict} ({a:.{digits}f} vs {b:.{digits}f}).")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=str(STORE), help="row store (JSONL)")
    ap.add_argument("--json", metavar="FILE", help="also write the per-seed numbers here")
    args = ap.parse_args()
    done = store(args.out)
    raw = run(args.seeds, args.rounds, done)
    members = membership(args.seeds, done)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=2)
    print(report(raw, members))


def report(raw: list[dict], members: list[dict]) -> str:
    """The page's tables from stored rows."""
    parts = [table(raw)]
    if members:
        parts += [
            "Membership check of the shared decoder: the `generator` audit on victim 0's "
            "own images against public images with the same labels, both through the "
            "server's view of victim 0's last CVAE upload:",
            membership_table(members),
        ]
    return "\n\n".join([*parts, claims(raw)])


if __name__ == "__main__":
    main()
