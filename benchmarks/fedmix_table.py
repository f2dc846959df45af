"""FedMix family on `digits` with 2-class shards: accuracy, leakage and bytes, >= 3 seeds.

Table 1 — per method: accuracy, macro-F1, leakage of a victim's gradient to the
strongest attacker (DLG and iDLG with 4 batched restarts re-running the victim's own
loss with the mean X_g entry; for NaiveMix/FedMix DLG enumerating every entry the server
built; for the MAFL methods DLG with the slides' mean-image prior) and the worst case
over all of them per victim, what the shared means give away, and bytes.
Table 2 — FedMix's averaged data as M_k varies: artifact-attack PSNR/SSIM (means and
de-averaged class prototypes), label-distribution error, averaged-data bytes, and the
extra cost against the model's (the paper's d_i / (T p_m)), measured.

Rows go to ``benchmarks/results/fedmix_table.jsonl`` as each run finishes (a rerun skips
what is there, so an interrupted run resumes); the docs' results page is generated from
them.

    python benchmarks/fedmix_table.py --seeds 3
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _store import RESULTS, RowStore  # run as a script: benchmarks/ is on sys.path

import privbench
from privbench import AttackConfig, FedConfig, RunConfig
from privbench.adversary import WORST_CASE
from privbench.results.report import mean_std as ms

METHODS = ("fedavg", "localmix", "naivemix", "fedmix", "globalmix")
MAFL = ("naivemix", "fedmix", "globalmix")
MEAN_SIZES = (1, 10, "all")
STORE = RESULTS / "fedmix_table.jsonl"


def store(path=STORE) -> RowStore:
    def key(r: dict) -> tuple:
        return r["table"], str(r.get("method", r.get("mean_size"))), r["seed"]

    return RowStore(path, key)


def config(method, seed, attacks, attack_params=None, method_params=None, **fed):
    return RunConfig(
        method=method,
        method_params=method_params or {},
        dataset="digits",
        partition="shards",
        model="lenet-sigmoid",
        seed=seed,
        fed=FedConfig(**{"clients": 10, "rounds": 10, "eval_every": 0, **fed}),
        attack=AttackConfig(names=attacks, params=attack_params or {}),
    )


def attacks_of(method: str) -> tuple[str, ...]:
    """The strongest attacker's gradient attacks (DLG and iDLG, 4 batched restarts each;
    for NaiveMix/FedMix also DLG enumerating the X_g entries the server built) and, for
    the MAFL methods, the attack on the shared means. With two or more gradient attacks
    each run has a worst-case row (per victim, the attack that leaked most)."""
    attacks = ("dlg", "idlg")
    if method in ("naivemix", "fedmix"):
        attacks += ("dlg@enumerate",)
    return attacks + (("averaged-data",) if method in MAFL else ())


def measure_methods(seeds: int, lam: float, done: RowStore) -> list[dict]:
    for method in METHODS:
        mp = {"lam": lam} if method != "fedavg" else {}
        for seed in range(seeds):
            if ("methods", method, seed) in done:
                continue
            rows = {
                r.attack: r
                for r in privbench.run(config(method, seed, attacks_of(method), method_params=mp))
            }
            prior = None
            if method in MAFL:  # same seed -> same training; only the attack differs
                (prior,) = privbench.run(
                    config(method, seed, ("dlg",), {"prior": "mean"}, method_params=mp)
                )
            d, w = rows["dlg"], rows[WORST_CASE]
            # one victim per run: the worst case over every attack is the best row
            tried = [r for r in (w, prior) if r is not None and r.psnr is not None]
            worst = max(tried, key=lambda r: r.psnr, default=None)
            a = rows.get("averaged-data")
            enum = rows.get("dlg@enumerate")
            r = done.add(
                {
                    "table": "methods",
                    "method": method,
                    "seed": seed,
                    "lam": lam,
                    "accuracy": d.accuracy,
                    "macro_f1": d.macro_f1,
                    "dlg_psnr": d.psnr,
                    "idlg_psnr": rows["idlg"].psnr,
                    "enum_psnr": enum.psnr if enum else None,
                    "enum_identified": enum.guess_identified if enum else None,
                    "prior_psnr": prior.psnr if prior else None,
                    "worst_psnr": worst.psnr if worst else None,
                    "worst_affine": worst.psnr_affine if worst else None,
                    "worst_ssim": worst.ssim if worst else None,
                    "worst_of": (worst.worst_of or "dlg+mean-prior") if worst else None,
                    "avg_psnr": a.psnr if a else None,
                    "avg_label_err": a.label_dist_error if a else None,
                    "bytes_up": d.bytes_up,
                    "bytes_down": d.bytes_down,
                    "errors": sum(r.status != "ok" for r in rows.values()),
                }
            )
            print(
                f"  {method} seed {seed}: acc {d.accuracy:.3f} worst case "
                f"{r['worst_psnr']} dB ({r['worst_of']})",
                flush=True,
            )
    return [r for r in done if r["table"] == "methods" and r["seed"] < seeds]


def table_methods(raw: list[dict]) -> str:
    lines = [
        "| method | accuracy | macro-F1 | DLG PSNR dB (mean entry) | iDLG PSNR dB "
        "| DLG enumerate PSNR dB | DLG + mean prior PSNR dB | worst-case PSNR dB "
        "| worst-case PSNR-affine dB | worst-case SSIM | averaged-data PSNR dB "
        "| label-dist error | up MiB | down MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        rs = [r for r in raw if r["method"] == method]
        if not rs:
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    method + (" (violates privacy)" if method == "globalmix" else ""),
                    *(
                        ms(r[k] for r in rs)
                        for k in (
                            "accuracy",
                            "macro_f1",
                            "dlg_psnr",
                            "idlg_psnr",
                            "enum_psnr",
                            "prior_psnr",
                            "worst_psnr",
                            "worst_affine",
                            "worst_ssim",
                            "avg_psnr",
                            "avg_label_err",
                        )
                    ),
                    f"{np.mean([r['bytes_up'] for r in rs]) / 2**20:.3f}",
                    f"{np.mean([r['bytes_down'] for r in rs]) / 2**20:.3f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def measure_mean_size(seeds: int, lam: float, done: RowStore) -> list[dict]:
    for size in MEAN_SIZES:
        mean_size = None if size == "all" else size
        for seed in range(seeds):
            if ("mean_size", str(size), seed) in done:
                continue
            rows = {}
            for flag in (False, True):
                (r,) = privbench.run(
                    config(
                        "fedmix",
                        seed,
                        ("averaged-data",),
                        {"deaverage": flag},
                        {"lam": lam, "mean_size": mean_size},
                    )
                )
                rows[flag] = r
            r = rows[False]
            model_bytes = (
                r.bytes_by_kind["model"]["down"]
                + r.bytes_by_kind["update"]["up"]
                + r.bytes_by_kind.get("gradient", {}).get("up", 0)
            )
            avg = r.bytes_by_kind["averaged_data"]
            done.add(
                {
                    "table": "mean_size",
                    "mean_size": size,
                    "seed": seed,
                    "lam": lam,
                    "accuracy": r.accuracy,
                    "psnr": r.psnr,
                    "ssim": r.ssim,
                    "deavg_psnr": rows[True].psnr,
                    "deavg_ssim": rows[True].ssim,
                    "label_err": r.label_dist_error,
                    "avg_up": avg["up"],
                    "avg_down": avg["down"],
                    "extra_ratio": (avg["up"] + avg["down"]) / model_bytes,
                }
            )
            print(f"  M_k={size} seed {seed}: {r.psnr:.1f} dB", flush=True)
    return [r for r in done if r["table"] == "mean_size" and r["seed"] < seeds]


def table_mean_size(raw: list[dict]) -> str:
    lines = [
        "| M_k | accuracy | means PSNR dB | means SSIM | de-averaged PSNR dB | "
        "de-averaged SSIM | label-dist error | averaged_data up / down KiB | "
        "extra bytes / model bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in MEAN_SIZES:
        rs = [r for r in raw if r["mean_size"] == m]
        if not rs:
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    str(m),
                    ms(r["accuracy"] for r in rs),
                    ms(r["psnr"] for r in rs),
                    ms(r["ssim"] for r in rs),
                    ms(r["deavg_psnr"] for r in rs),
                    ms(r["deavg_ssim"] for r in rs),
                    ms(r["label_err"] for r in rs),
                    f"{np.mean([r['avg_up'] for r in rs]) / 1024:.1f} / "
                    f"{np.mean([r['avg_down'] for r in rs]) / 1024:.1f}",
                    f"{np.mean([r['extra_ratio'] for r in rs]):.4f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lam", type=float, default=0.05)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    done = store()
    raw1 = measure_methods(args.seeds, args.lam, done)
    raw2 = measure_mean_size(args.seeds, args.lam, done)
    t1, t2 = table_methods(raw1), table_mean_size(raw2)
    if args.json:
        print(json.dumps({"methods": raw1, "mean_size": raw2}, indent=2))
    else:
        print(t1, "\n", t2, sep="\n")


if __name__ == "__main__":
    main()
