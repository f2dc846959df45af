"""Gradient-attack bands: DLG, iDLG, IG and IG at the reference settings, with and without
restarts, on the embedded data.

Each (setting, seed) trains once; every attack variant then attacks the same victims'
messages, so variants differ only in the attacker. Per victim a reconstruction counts
as a success at PSNR > 30 dB. Variants of DLG, iDLG and IG:

- ``1 start``: one random start (the published loops);
- ``1 start x4 iters``: one start with four times the iterations (the compute of four
  restarts run one after another; for IG only with ``--variants``, it is slow);
- ``4 restarts``: privbench's default, four starts as one batched computation, the
  lowest matching loss wins.

``ig-inversefed`` runs once, at the reference implementation's settings (one restart,
4,000 iterations, standardised units). Rows are appended to
``benchmarks/results/attack_bands.jsonl`` as they come (a rerun skips what is there) and
summarised in ``attack_bands.md``:

    python benchmarks/attack_bands.py --seeds 2
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from _store import RESULTS as OUT  # run as a script: benchmarks/ is on sys.path
from _store import RowStore

from privbench import AttackConfig, FedConfig, RunConfig
from privbench.engine.experiment import Experiment
from privbench.evaluation.attacking import attack_victims, observed_messages
from privbench.results import ResultStore
from privbench.results.report import mean_std as ms

SUCCESS_DB = 30.0


class Setting(NamedTuple):
    label: str
    dataset: str
    model: str
    steps: int  # the victim's SGD steps (1: the gradient is sent)
    batch: int  # the victim's images
    rounds: int
    round: int  # the attacked round (trained rounds before it)
    victims: int
    dataset_params: tuple = ()  # (name, value) pairs of the dataset's parameters
    lr: float | None = None  # None: the default for the dataset x model


SETTINGS = [
    Setting("digits 8x8, gradient, B=1", "digits", "lenet-sigmoid", 1, 1, 1, 0, 4),
    Setting("digits 8x8, gradient, B=4", "digits", "lenet-sigmoid", 1, 4, 1, 0, 4),
    Setting("digits 8x8, 3-step update, B=1", "digits", "lenet-sigmoid", 3, 1, 1, 0, 4),
    Setting("photos 32x32 RGB, gradient, B=1", "photos", "lenet-sigmoid", 1, 1, 1, 0, 8),
    # lr 0.5: the rows were measured at digits' untuned default of the time
    Setting(
        "digits 8x8, trained cnn (4 rounds), gradient, B=1", "digits", "cnn", 1, 1, 5, 4, 4, lr=0.5
    ),
]

# variant -> (attack, its parameters)
VARIANTS = {
    "dlg: 1 start": ("dlg", {"restarts": 1}),
    "dlg: 1 start x4 iters": ("dlg", {"restarts": 1, "iters": 1200}),
    "dlg: 4 restarts": ("dlg", {"restarts": 4}),
    "idlg: 1 start": ("idlg", {"restarts": 1}),
    "idlg: 1 start x4 iters": ("idlg", {"restarts": 1, "iters": 1200}),
    "idlg: 4 restarts": ("idlg", {"restarts": 4}),
    "ig: 1 start": ("ig", {"restarts": 1}),
    "ig: 1 start x4 iters": ("ig", {"restarts": 1, "iters": 8000}),
    "ig: 4 restarts": ("ig", {"restarts": 4}),
    "ig-inversefed (reference)": ("ig-inversefed", {}),
}
# IG's 8,000-iteration single start costs ~6 minutes per setting on 2 cores and moved no
# result on digits (41.7 -> 41.8 dB): run it with --variants when wanted.
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "ig: 1 start x4 iters"]


def config(setting: Setting, seed: int, attack: str, params: dict) -> RunConfig:
    return RunConfig(
        dataset=setting.dataset,
        dataset_params=dict(setting.dataset_params),
        partition="iid",
        model=setting.model,
        seed=seed,
        fed=FedConfig(
            clients=max(4, setting.victims), rounds=setting.rounds, lr=setting.lr, eval_every=0
        ),
        attack=AttackConfig(
            names=(attack,),
            params={attack: params},
            batch=setting.batch,
            steps=setting.steps,
            round=setting.round,
            victims=setting.victims,
        ),
    )


class _Named:
    """A result folder whose ``save_arrays`` takes the given name (a file-safe form of
    it): the band's variants share one training config, so privbench's own name (the
    config hash and the attack) would not tell them apart."""

    def __init__(self, store: ResultStore, name: str):
        self.store = store
        self.name = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()

    def save_arrays(self, _name: str, **arrays: np.ndarray) -> str:
        return self.store.save_arrays(self.name, **arrays)


def seeds_of(setting, seeds: int) -> int:
    """The photos setting attacks one fixed set of eight photos (seed 0): every photo of
    the embedded set is a victim there, so more seeds only redraw crops."""
    return 1 if setting.dataset == "photos" else seeds


def message_norms(exp: Experiment, attack: str, outcome) -> list[float]:
    """Each victim's message as the attacker receives it (its first one): the squared
    L2 norm over every tensor. DLG's squared-L2 matching loss scales with it."""
    import torch

    built = exp.regs["attack"].build(attack, exp.cfg.resolve().attack.params[attack])
    seen = outcome.channel.observations
    out = []
    for vid in range(exp.cfg.attack.victims):
        payload = observed_messages(exp, built, attack, vid, seen)[0].payload
        tensors = [t for t in payload.values() if torch.is_tensor(t)]
        out.append(float(sum((t.double() ** 2).sum() for t in tensors)))
    return out


def measure(
    seeds: int,
    variants: list[str],
    settings: list[Setting] = SETTINGS,
    store: Path = OUT / "attack_bands.jsonl",
    all_variants: dict = VARIANTS,
    arrays: Path | None = None,
    norms: Path | None = None,
) -> list[dict]:
    """Train once per (setting, seed), attack with every variant not in ``store`` yet;
    return the stored rows of these settings and variants. With ``arrays`` (a folder),
    each attack's private images and reconstructions go to
    ``arrays/reconstructions/<setting>-<variant>-s<seed>.npz`` (privbench's own format),
    named by the row's ``reconstruction_file`` relative to ``arrays``. With ``norms`` (a
    JSONL file), each (setting, seed)'s victims' message squared norms go there once
    (:func:`message_norms`), for settings already attacked too."""
    done = RowStore(store, lambda r: (r["setting"], r["variant"], r["seed"]))
    sizes = None if norms is None else RowStore(norms, lambda r: (r["setting"], r["seed"]))
    saver = None if arrays is None else ResultStore(str(arrays))
    # Seed-major, like every reproduction: a run cut short covers every setting once
    # before it adds a seed anywhere.
    cells = [(s, seed) for s in settings for seed in range(seeds_of(s, seeds))]
    for setting, seed in sorted(cells, key=lambda c: c[1]):
        label = setting.label
        todo = [v for v in variants if (label, v, seed) not in done]
        sized = sizes is None or (label, seed) in sizes
        if not todo and sized:
            continue
        # Train once; every variant attacks the same messages.
        attack, params = all_variants[(todo or variants)[0]]
        exp = Experiment(config(setting, seed, attack, params))
        t0 = time.perf_counter()
        outcome = exp.train()
        print(f"  {label} seed {seed}: trained in {time.perf_counter() - t0:.1f}s", flush=True)
        if not sized:
            squared = message_norms(exp, attack, outcome)
            sizes.add({"setting": label, "seed": seed, "message_sq_norm": squared})
        for variant in todo:
            attack, params = all_variants[variant]
            # Same training config (same hash); only the attacker differs.
            exp.cfg = replace(exp.cfg, attack=config(setting, seed, attack, params).attack)
            exp.cfg = exp.cfg.resolve()
            t0 = time.perf_counter()
            named = None if saver is None else _Named(saver, f"{label}-{variant}-s{seed}")
            got = attack_victims(exp, attack, outcome, named)
            seconds = time.perf_counter() - t0
            per_victim = [s.psnr for s in got.per_victim]
            r = {
                "setting": label,
                "variant": variant,
                "seed": seed,
                "psnr": got.score.psnr,
                "psnr_affine": got.score.psnr_affine,
                "ssim": got.score.ssim,
                "label_acc": got.score.label_acc,
                "victim_psnr": per_victim,
                "successes": int(sum(p > SUCCESS_DB for p in per_victim)),
                "victims": len(per_victim),
                "attack_s": seconds,
            }
            if got.path is not None:
                r["reconstruction_file"] = got.path
            done.add(r)
            print(
                f"    {variant}: {r['psnr']:.1f} dB, {r['successes']}/{r['victims']} "
                f"> {SUCCESS_DB:.0f} dB, {seconds:.1f}s",
                flush=True,
            )
    return [
        done[s[0], v, seed]
        for s in settings
        for v in variants
        for seed in range(seeds_of(s, seeds))
        if (s[0], v, seed) in done
    ]


def table(rows: list[dict]) -> str:
    lines = [
        f"Per victim, success = PSNR > {SUCCESS_DB:.0f} dB; mean ± std over seeds of the "
        "pooled PSNR; seconds per attack of all victims.",
        "",
        "| setting | attack | PSNR dB | PSNR affine | SSIM | label acc | success | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["setting"], r["variant"]) for r in rows))
    for setting, variant in keys:
        rs = [r for r in rows if (r["setting"], r["variant"]) == (setting, variant)]
        wins = sum(r["successes"] for r in rs)
        total = sum(r["victims"] for r in rs)
        lines.append(
            f"| {setting} | {variant} | {ms(r['psnr'] for r in rs)} | "
            f"{ms(r['psnr_affine'] for r in rs)} | {ms(r['ssim'] for r in rs)} | "
            f"{np.mean([r['label_acc'] for r in rs]):.2f} | {wins}/{total} | "
            f"{np.mean([r['attack_s'] for r in rs]):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows = measure(args.seeds, variants)
    text = table(rows)
    (OUT / "attack_bands.md").write_text(
        f"`python benchmarks/attack_bands.py --seeds {args.seeds}`\n\n{text}\n"
    )
    print(json.dumps(rows, indent=2) if args.json else text)


if __name__ == "__main__":
    main()
