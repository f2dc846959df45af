"""Headline points measured again because their rows lack a score their method now gives.

FedAvP's rows score a reconstruction against the copies of the victim's images its step
trained on (``psnr_augmented``, replayed from its private op-pair draws): its identity
view rebuilds the digit under the ops it drew, which PSNR to the private image alone
took for protection. Rows written before carry no such score. This script runs every
headline point of ``--method`` whose newest gradient rows lack it again: a case and its
IG companion train once (``pipeline.run_shared``) and their new rows supersede the old
(``report.latest`` keeps a configuration's newest row per attack). Resumable: a point
whose newest rows carry the score is done, and a training cut short resumes from its
round checkpoint. Seed 0 first, then no defense first.

    python benchmarks/headline_again.py --data-root ../shared/data       # MNIST's FedAvP
    python benchmarks/headline_again.py --dry-run                        # what would run
    python benchmarks/headline_again.py --store benchmarks/results/headline \\
        --grid benchmarks/headline.toml --grid benchmarks/headline_more.toml  # digits
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from privbench import ResultStore, RunConfig  # noqa: E402
from privbench.adversary import WORST_CASE, gradient_attacks  # noqa: E402
from privbench.pipeline import run_shared  # noqa: E402
from privbench.results.companions import training_key  # noqa: E402
from privbench.results.report import grid_rows, latest  # noqa: E402

MNIST = (HERE / "results" / "headline_mnist", (HERE / "headline_mnist.toml",))
DEFENSES = ("none", "client-dp", "artifact-noise", "dp-sgd")


def _unscored(row: dict, method: str) -> bool:
    """A scored gradient row of ``method`` without the augmented-copy score."""
    return (
        row["method"] == method
        and row.get("status") == "ok"
        and row.get("psnr") is not None
        and row.get("psnr_augmented") is None
        and str(row["attack"]).partition("@")[0] in set(gradient_attacks())
    )


def todo(store: Path, grids, method: str) -> list[list[RunConfig]]:
    """The configurations of each training (case and companion) of ``method`` whose
    newest gradient rows lack ``psnr_augmented``, seed 0 and no defense first."""
    rows = grid_rows(latest(ResultStore(str(store)).read()), [str(g) for g in grids])
    groups: dict[str, dict[str, RunConfig]] = {}
    order: dict[str, tuple] = {}
    for r in rows:
        if _unscored(r, method):
            key = training_key(r)
            groups.setdefault(key, {})[r["config_hash"]] = RunConfig.from_dict(r["config"])
            rank = DEFENSES.index(r["defense"]) if r["defense"] in DEFENSES else len(DEFENSES)
            order[key] = (r["seed"], rank, r["model"])
    return [list(groups[k].values()) for k in sorted(groups, key=order.__getitem__)]


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} dB"


def _defense(cfg: RunConfig) -> str:
    return ", ".join(cfg.defenses) or "none"


def run(trainings: list[list[RunConfig]], store: Path, data_root: str | None) -> None:
    out = ResultStore(str(store))
    for configs in trainings:
        t0 = time.perf_counter()
        results = run_shared([replace(c, data_root=data_root) for c in configs], store=out)
        rows = [r for rs in results for r in rs if r.attack == WORST_CASE and r.status == "ok"]
        first = configs[0]
        scores = ", ".join(f"{r.psnr:.1f} dB ({_db(r.psnr_augmented)} to the copies)" for r in rows)
        print(
            f"  {first.method} {_defense(first)} seed {first.seed}: "
            f"{scores or 'no worst-case row'}; {time.perf_counter() - t0:.0f}s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="MNIST's folder (torchvision's layout)")
    ap.add_argument("--store", default=str(MNIST[0]))
    ap.add_argument("--grid", action="append", default=None, help="(repeatable)")
    ap.add_argument("--method", default="fedavp")
    ap.add_argument("--dry-run", action="store_true", help="list the trainings, run nothing")
    args = ap.parse_args(argv)
    store, grids = Path(args.store).resolve(), args.grid or [str(g) for g in MNIST[1]]
    trainings = todo(store, grids, args.method)
    print(f"{len(trainings)} trainings of {args.method} to measure again in {store}")
    if args.dry_run:
        for configs in trainings:
            c = configs[0]
            print(f"  seed {c.seed} {_defense(c)}: {len(configs)} runs")
        return
    run(trainings, store, args.data_root)


if __name__ == "__main__":
    main()
