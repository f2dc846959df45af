"""Gradient-attack bands: DLG, iDLG and IG on the embedded data, several seeds.

Measures (never types in) PSNR/SSIM/label accuracy of each attack against one victim
per seed, for a single-image FedSGD gradient and a 3-step FedAvg update, and prints a
Markdown table of mean +- std over seeds. Run:

    python benchmarks/attack_bands.py --seeds 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import privbench
from privbench import AttackConfig, FedConfig, RunConfig

SETTINGS = [
    # (label, dataset, victim steps, attack batch)
    ("digits 8x8, gradient, B=1", "digits", 1, 1),
    ("digits 8x8, gradient, B=4", "digits", 1, 4),
    ("digits 8x8, 3-step update, B=1", "digits", 3, 1),
    ("photos 32x32 RGB, gradient, B=1", "photos", 1, 1),
]


def measure(seeds: int, attacks: tuple[str, ...], ig_iters: int) -> list[dict]:
    out = []
    for label, dataset, steps, batch in SETTINGS:
        per_attack: dict[str, list] = {a: [] for a in attacks}
        for seed in range(seeds):
            cfg = RunConfig(
                dataset=dataset,
                partition="iid",
                model="lenet-sigmoid",
                seed=seed,
                fed=FedConfig(clients=4, rounds=1, eval_every=0),
                attack=AttackConfig(
                    names=attacks, batch=batch, steps=steps, params={"ig": {"iters": ig_iters}}
                ),
            )
            t0 = time.perf_counter()
            for row in privbench.run(cfg):
                per_attack[row.attack].append(
                    (row.psnr, row.ssim, row.label_acc, row.attack_s, row.status)
                )
            print(f"  {label} seed {seed}: {time.perf_counter() - t0:.1f}s", flush=True)
        for attack, vals in per_attack.items():
            ok = [v for v in vals if v[4] == "ok"]
            arr = np.array([v[:4] for v in ok], dtype=float)
            out.append(
                {
                    "setting": label,
                    "attack": attack,
                    "runs": len(vals),
                    "errors": len(vals) - len(ok),
                    "psnr_mean": float(arr[:, 0].mean()),
                    "psnr_std": float(arr[:, 0].std()),
                    "ssim_mean": float(arr[:, 1].mean()),
                    "ssim_std": float(arr[:, 1].std()),
                    "label_acc": float(arr[:, 2].mean()),
                    "attack_s": float(arr[:, 3].mean()),
                    "recovered": int((arr[:, 0] >= 30).sum()),
                }
            )
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| setting | attack | PSNR dB | SSIM | label acc | PSNR >= 30 dB | s / attack |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['attack']} | {r['psnr_mean']:.1f} ± {r['psnr_std']:.1f} | "
            f"{r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | {r['label_acc']:.2f} | "
            f"{r['recovered']}/{r['runs'] - r['errors']} | {r['attack_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--attacks", default="dlg,idlg,ig")
    ap.add_argument("--ig-iters", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = measure(args.seeds, tuple(args.attacks.split(",")), args.ig_iters)
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))


if __name__ == "__main__":
    main()
