"""What the DLG family misses: each headline point against its IG companion run.

The headline grids' first attacker is the DLG family (DLG and iDLG with 4 restarts, and
the variants a method's threat model adds: enumerating shared entries, optimising
private synthetic samples, the policy's identity or sampled op). DLG matches gradients
in squared L2, which scales with the gradient: a victim the model already classifies
with confidence sends a gradient so small (a squared norm of about 1e-6 on the
untrained sigmoid LeNet of the gradient-inversion reproduction) that L-BFGS never
leaves its random start, at any number of restarts. Inverting Gradients (``ig``,
Geiping et al. 2020) matches the gradient's direction (cosine) and does not care how
small it is.

So every case of the headline grids has a companion case: the same run again (training
is deterministic), attacked by ``ig`` and the IG form of each DLG variant the case
allows (``@enumerate``, ``@joint``, ``@identity``, ``@sample``; ``@sigmoid`` is DLG's
box, which IG has built in). ``privbench table`` and the docs take a point's worst case
over both runs (``companions.merge_runs``, which checks the two trained the same model).
This script runs the companions of one seed and defense first, lowest DLG-family PSNR
first (where a miss matters most), into the headline's own store, and prints the
comparison the docs show:

    python benchmarks/headline_ig.py --data-root ../shared/data            # MNIST, seed 0
    python benchmarks/headline_ig.py --table-only                          # no runs
    python benchmarks/headline_ig.py --store benchmarks/results/headline \\
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

import privbench  # noqa: E402
from privbench import ResultStore, RunConfig  # noqa: E402
from privbench.adversary import WORST_CASE, gradient_attacks  # noqa: E402
from privbench.results.companions import gradient_groups, training_key  # noqa: E402
from privbench.results.report import grid_rows, latest  # noqa: E402

MNIST = (HERE / "results" / "headline_mnist", (HERE / "headline_mnist.toml",))
BOX_VARIANTS = {"sigmoid", "free"}  # DLG's box: IG's own box constraint replaces it


def ig_family(attacks: list[str]) -> tuple[str, ...]:
    """The IG form of a case's DLG-family attacks: ``ig`` and ``ig@<variant>`` for each
    variant the case gives DLG or iDLG (box variants dropped), in first-seen order."""
    out = []
    for name in attacks:
        base, _, variant = name.partition("@")
        if base not in ("dlg", "idlg"):
            continue
        ig = "ig" if not variant or variant in BOX_VARIANTS else f"ig@{variant}"
        if ig not in out:
            out.append(ig)
    return tuple(out)


def is_companion(names) -> bool:
    """Whether a point's attack names are an IG companion's (IG forms only)."""
    return all(str(n).partition("@")[0] == "ig" for n in names)


def _is_companion(row: dict) -> bool:
    return is_companion(row["config"]["attack"]["names"])


def _gradient_best(rows: list[dict]) -> dict[str, dict]:
    """Per training (companions.training_key), the run's strongest gradient row (the
    first of equals)."""
    groups = gradient_groups(rows, set(gradient_attacks()))
    return {
        key: max((rows[i] for i in idx), key=lambda r: r["psnr"]) for key, idx in groups.items()
    }


def _named(r: dict) -> str:
    """A gradient row's PSNR and the attack behind it."""
    attack = r.get("worst_of") if r["attack"] == WORST_CASE else r["attack"]
    return f"{r['psnr']:.1f} ({attack})"


def split(store: Path, grids) -> tuple[list[dict], list[dict]]:
    """The grid's rows of its DLG-family cases and of their IG companions."""
    rows = grid_rows(latest(ResultStore(str(store)).read()), [str(g) for g in grids])
    return [r for r in rows if not _is_companion(r)], [r for r in rows if _is_companion(r)]


def todo(store: Path, grids, seed: int, defense: str, methods=None) -> list[tuple[dict, RunConfig]]:
    """(the DLG family's best row, the companion's config) of every measured point of
    ``seed`` under ``defense`` (of ``methods``, None: all) whose companion has not run,
    lowest PSNR first."""
    dlg, ig = split(store, grids)
    have = {training_key(r) for r in ig}
    points = [
        r
        for r in _gradient_best(dlg).values()
        if r["seed"] == seed
        and r["defense"] == defense
        and (methods is None or r["method"] in methods)
        and training_key(r) not in have
    ]
    out = []
    for r in sorted(points, key=lambda r: r["psnr"]):
        cfg = RunConfig.from_dict(r["config"])
        attacks = ig_family(list(cfg.attack.names))
        out.append((r, replace(cfg, attack=replace(cfg.attack, names=attacks, params={}))))
    return out


def run(points: list[tuple[dict, RunConfig]], store: Path, data_root: str | None) -> None:
    out = ResultStore(str(store))
    for row, cfg in points:
        t0 = time.perf_counter()
        got = privbench.run(replace(cfg, data_root=data_root), out=out)
        ok = [r for r in got if r.status == "ok" and r.psnr is not None]
        best = max(ok, key=lambda r: r.psnr, default=None)
        print(
            f"  {row['method']} {row['model']} {row['defense']} s{row['seed']}: "
            f"{'no score' if best is None else f'{best.attack} {best.psnr:.1f} dB'} "
            f"(DLG family {row['psnr']:.1f} dB), {time.perf_counter() - t0:.0f}s",
            flush=True,
        )


def table(store: Path, grids) -> str:
    """Per point with both runs: the DLG family's best, the IG family's, the worst case
    over both, and whether the two runs trained the same model (equal accuracy)."""
    dlg, ig = (_gradient_best(rows) for rows in split(store, grids))
    both = sorted(
        set(dlg) & set(ig),
        key=lambda k: (dlg[k]["seed"], dlg[k]["defense"], dlg[k]["method"], dlg[k]["model"]),
    )
    if not both:
        return f"*No IG companion runs yet in `{store.relative_to(HERE.parent)}`.*"
    lines = [
        "| method | model | defense | seed | DLG family | IG family | worst case | same training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in both:
        d, i = dlg[k], ig[k]
        same = "yes" if d["accuracy"] == i["accuracy"] else "no"
        lines.append(
            f"| {d['method']} | {d['model']} | {d['defense']} | {d['seed']} | {_named(d)} "
            f"| {_named(i)} | {max(d['psnr'], i['psnr']):.1f} | {same} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="MNIST's folder (torchvision's layout)")
    ap.add_argument("--store", default=str(MNIST[0]))
    ap.add_argument("--grid", action="append", default=None, help="(repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--defense", default="none")
    ap.add_argument("--methods", nargs="+", default=None, help="only these methods' points")
    ap.add_argument("--table-only", action="store_true", help="print the comparison, run nothing")
    args = ap.parse_args(argv)
    store, grids = Path(args.store).resolve(), args.grid or [str(g) for g in MNIST[1]]
    if not args.table_only:
        run(todo(store, grids, args.seed, args.defense, args.methods), store, args.data_root)
    print(table(store, grids))


if __name__ == "__main__":
    main()
