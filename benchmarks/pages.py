"""The docs site's results pages, generated from the committed result stores.

Each entry of :data:`TABLES` turns one store under ``benchmarks/results/`` into the
markdown its page shows, with the benchmark script's own table function, so rerunning a
benchmark updates its page on the next ``mkdocs build``; :data:`FIGURES` draws the
figures the same way. A page asks for a table with a line ``<!-- privbench:NAME -->``
(see ``tools/mkdocs_hooks.py``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
for _folder in (HERE, HERE / "reproduce"):  # scripts import siblings by name (run as files)
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def _jsonl(path: Path) -> list[dict]:
    """A benchmark script's own row store (its rows are not privbench result rows)."""
    from privbench.results.store import ResultStore

    return ResultStore(str(path.parent), path.name).read(required=())


def _missing(path: Path) -> str:
    stale = len(_jsonl(path)) if path.exists() else 0
    where = f"`{path.relative_to(HERE.parent)}`"
    if stale:  # rows, none of them of today's defaults (see _reproduction)
        return (
            f"*The {stale} rows in {where} ran under an earlier default (the `cnn`'s "
            f"PyTorch init); the grid is being measured again.*"
        )
    return f"*No rows yet in {where}: the benchmark has not run.*"


def headline_table(store: str) -> Callable[[], str]:
    """A headline store's table: its grids' points, worst case per run, by model too
    (Fed-ZDA's ``cnn-bn``)."""

    def table() -> str:
        from privbench.results.report import format_table, summarize

        rows = _headline_rows(store)
        if not rows:
            grids = ", ".join(f"`{g.relative_to(HERE.parent)}`" for g in HEADLINE_GRIDS[store])
            return f"*No rows of {grids}'s points yet: the grid has not run.*"
        by = ["method", "model", "defense", "attack"]
        summary = summarize(rows, by=by, metrics=HEADLINE_METRICS)
        summary.insert(len(by), REBUILT, rebuilt(rows, by, summary))
        return format_table(summary, HEADLINE_METRICS, "md")

    return table


REBUILT = "victims > 30 dB"


def rebuilt(rows: list[dict], by: list[str], summary) -> list[str]:
    """Per line of ``summary``: how many of its runs' victims the attack rebuilt above 30
    dB (PSNR, the gradient-inversion papers' success), of the runs that report a PSNR.
    A headline run attacks one victim, so a cell's PSNR is bimodal (rebuilt, or near
    noise) and its mean ± std over few seeds reads better beside this count. As on the
    frontier, a victim rebuilt as the augmented view it trained on (``psnr_augmented``,
    the private image under a public op the attacker matches) counts as rebuilt."""
    from privbench.results.companions import leaked
    from privbench.results.report import worst_case_view

    counts: dict[tuple, list[int]] = {}
    for r in worst_case_view(rows):
        psnr = leaked(r)
        if r.get("status") == "ok" and psnr is not None and math.isfinite(psnr):
            k = counts.setdefault(tuple(r.get(c) for c in by), [0, 0])
            k[0] += psnr > 30
            k[1] += 1
    keys = summary[by].itertuples(index=False, name=None)
    return [f"{counts[k][0]}/{counts[k][1]}" if k in counts else "-" for k in keys]


# Each headline store and the grids whose points it tables: the digits store also holds
# the runs of its grids' earlier versions (DP at untuned defaults), left out.
HEADLINE_GRIDS = {
    "headline": (HERE / "headline.toml", HERE / "headline_more.toml"),
    "headline_mnist": (HERE / "headline_mnist.toml",),
}
HEADLINE_METRICS = [
    "accuracy",
    "psnr",
    "psnr_augmented",
    "ssim",
    "label_dist_error",
    "bytes_up",
    "epsilon",
]


def _headline_rows(store: str = "headline") -> list[dict]:
    from privbench.results.report import grid_rows, load_rows

    path = RESULTS / store
    if not (path / "results.jsonl").exists():
        return []
    grids = [str(g) for g in HEADLINE_GRIDS[store]]
    return grid_rows(load_rows(str(path)), grids, required=False)


def headline_progress(store: str) -> Callable[[], str]:
    """How far a headline store is through its grids: points settled of all, the compute
    they recorded (one ``wall_s`` per run; a training a case and its companion shared,
    which both rows report as ``train_s``, counted once, with the case) and the points'
    seeds."""

    def table() -> str:
        from headline_ig import is_companion

        from privbench.results.companions import training_key
        from privbench.results.sweep import expand, load_grid, pending

        points = [p for g in HEADLINE_GRIDS[store] for p in expand(load_grid(str(g)))[0]]
        path = RESULTS / store
        todo = pending(points, str(path)) if (path / "results.jsonl").exists() else points
        done = {p.config_hash for p in points} - {p.config_hash for p in todo}
        runs = {r["config_hash"]: r for r in _headline_rows(store)}
        trainings: set[tuple] = set()  # (training, train_s) counted: a shared one once

        def seconds(h: str) -> float:
            r = runs.get(h) or {}
            shared = (training_key(r), r.get("train_s"))
            again = r.get("train_s") is not None and shared in trainings
            trainings.add(shared)
            return (r.get("wall_s") or 0.0) - (r["train_s"] if again else 0.0)

        lines = ["| runs | points done | compute recorded | by seed |", "|---|---|---|---|"]
        for label, ig in (("DLG family and artifact attacks", False), ("IG companions", True)):
            part = [p for p in points if is_companion(p.attacks) == ig]
            hashes = {p.config_hash for p in part} & done
            hours = sum(seconds(h) for h in sorted(hashes)) / 3600
            by_seed: dict[int, tuple[int, int]] = {}
            for p in part:
                d, n = by_seed.get(p.config.seed, (0, 0))
                by_seed[p.config.seed] = (d + (p.config_hash in done), n + 1)
            seeds = ", ".join(f"seed {k}: {d}/{n}" for k, (d, n) in sorted(by_seed.items()))
            lines.append(f"| {label} | {len(hashes)} of {len(part)} | {hours:.1f} h | {seeds} |")
        return "\n".join(lines)

    return table


def headline_ig(store: str) -> Callable[[], str]:
    """Each point with both runs: the DLG family against its IG companion."""

    def table() -> str:
        import headline_ig as bench

        if not (RESULTS / store / "results.jsonl").exists():
            return _missing(RESULTS / store / "results.jsonl")
        return bench.table(RESULTS / store, HEADLINE_GRIDS[store])

    return table


def headline_dp(dataset: str) -> Callable[[], str]:
    """The validation search that chose a headline grid's DP knobs."""

    def table() -> str:
        import headline_dp as search

        from privbench.results.report import is_default_run, load_rows

        path = search.OUT / "results.jsonl"
        rows = [r for r in load_rows(str(path)) if is_default_run(r)] if path.exists() else []
        if not any(search.knobs(r, dataset) for r in rows):
            return f"*No {dataset} search rows yet in `benchmarks/results/headline_dp/`.*"
        return search.table(rows, dataset)

    return table


def fedmix() -> str:
    import fedmix_table

    rows = _jsonl(fedmix_table.STORE)
    if not rows:
        return _missing(fedmix_table.STORE)
    methods = [r for r in rows if r["table"] == "methods"]
    sizes = [r for r in rows if r["table"] == "mean_size"]
    parts = []
    if methods:
        parts += ["**Table 1: methods against the strongest attacker.**", ""]
        parts += [fedmix_table.table_methods(methods), ""]
    if sizes:
        parts += ["**Table 2: FedMix's averaged data as M_k varies.**", ""]
        parts += [fedmix_table.table_mean_size(sizes)]
    return "\n".join(parts)


def fedavp() -> str:
    import fedavp_table

    rows = _jsonl(RESULTS / "fedavp_table.jsonl")
    if not rows:
        return _missing(RESULTS / "fedavp_table.jsonl")
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    return fedavp_table.tables(rows, datasets)


def generative() -> str:
    import generative_table as bench

    rows = _jsonl(bench.STORE)
    if not rows:
        return _missing(bench.STORE)
    runs = [r for r in rows if r["method"] != "membership"]
    members = [r for r in rows if r["method"] == "membership"]
    return bench.report(runs, members)


def adaptive_fedmix() -> str:
    import adaptive_fedmix as bench

    rows = _jsonl(RESULTS / "adaptive_fedmix.jsonl")
    if not rows:
        return _missing(RESULTS / "adaptive_fedmix.jsonl")
    seeds = len({r["seed"] for r in rows})
    return bench.table(rows, seeds)


def attack_bands() -> str:
    import attack_bands as bench

    rows = _jsonl(RESULTS / "attack_bands.jsonl")
    return bench.table(rows) if rows else _missing(RESULTS / "attack_bands.jsonl")


def cnn_init() -> str:
    import cnn_init as bench

    rows = _jsonl(RESULTS / "cnn_init.jsonl")
    return bench.table(rows) if rows else _missing(RESULTS / "cnn_init.jsonl")


def fedavp_copies() -> str:
    import fedavp_copies as bench

    rows = _jsonl(RESULTS / "fedavp_copies.jsonl")
    return bench.table(rows) if rows else _missing(RESULTS / "fedavp_copies.jsonl")


# The reproductions (benchmarks/reproduce/): module name -> where its rows are.
REPRODUCTIONS = {
    "gradient-inversion": ("gradient_inversion", "gradient_inversion.jsonl"),
    "fedmix": ("fedmix", "fedmix/results.jsonl"),
    "dp": ("dp", "dp/results.jsonl"),
    "fedzda": ("fedzda", "fedzda/results.jsonl"),
    "cvae": ("cvae", "cvae.jsonl"),
    "fedavp": ("fedavp", "fedavp/results.jsonl"),
    "fedmix-taylor": ("fedmix_taylor", "fedmix_taylor.jsonl"),
}


def _reproduction(name: str):
    import importlib

    from privbench.results.report import is_default_run

    module, store = REPRODUCTIONS[name]
    path = RESULTS / "reproduce" / store
    # privbench rows of a default changed since (the cnn's init) are left out: their
    # points run again; a script's own rows (no config) carry what they ran with
    rows = [r for r in _jsonl(path) if "config" not in r or is_default_run(r)]
    return importlib.import_module(module), rows, path


def _held(repro, rows: list[dict]) -> list[dict]:
    """The rows a reproduction's verdicts and curves read: a script that keeps runs out
    of them (FedMix: its learning-rate search, runs at a rate it did not choose) says
    which with in_grid()."""
    return getattr(repro, "in_grid", lambda rs: rs)(rows)


def _reproduction_table(name: str) -> Callable[[], str]:
    def render() -> str:
        repro, rows, path = _reproduction(name)
        if not rows:
            return _missing(path)
        # a script whose page shows more than its table says so with page()
        return getattr(repro, "page", repro.table)(rows)

    return render


def reproduction_cost() -> str:
    """Compute each reproduction's recorded runs took: a run's ``wall_s`` (training,
    evaluation and attacks) or, for attack-only rows, ``attack_s``; each configuration
    once (a rerun that replaced an error counts its last try; a run resumed from a round
    checkpoint counts only the process that finished it). A script's own rows count by
    the key it stores them by; rows without a timing (early rows, and the CVAE script's
    pre-trained model, whose compute is its fine-tuning run's) are counted apart."""
    lines = [
        "| reproduction | runs timed | hours recorded | mean minutes per run |",
        "|---|---|---|---|",
    ]
    for name in REPRODUCTIONS:
        repro, rows, _ = _reproduction(name)
        own_key = getattr(repro, "key", None)  # a script's own rows: the key it stores by
        last: dict = {}
        untimed = 0
        for r in rows:
            seconds = r.get("wall_s", r.get("attack_s"))
            if seconds is None:
                untimed += 1
                continue
            key = r.get("config_hash") or (
                own_key(r) if own_key else (r.get("setting"), r.get("variant"), r.get("seed"))
            )
            last[key] = float(seconds)
        if not last:
            lines.append(f"| {name} | 0 ({untimed} untimed rows) | - | - |")
            continue
        total = sum(last.values())
        runs = f"{len(last)} (+{untimed} untimed rows)" if untimed else str(len(last))
        lines.append(f"| {name} | {runs} | {total / 3600:.1f} | {total / 60 / len(last):.1f} |")
    return "\n".join(lines)


def _reproduction_verdicts(name: str) -> Callable[[], str]:
    def render() -> str:
        repro, rows, path = _reproduction(name)
        rows = _held(repro, rows)
        lines = repro.verdicts(rows) if rows else []
        if lines:
            return "\n".join(lines)
        if rows:  # measured, but no claim has all its runs yet
            return (
                f"*{len(rows)} runs recorded in `{path.relative_to(HERE.parent)}`; no claim "
                f"has all the runs it compares yet.*"
            )
        return _missing(path)

    return render


# The README's summary of the reproductions: source -> (its name there, its section's
# anchor on docs/reproductions.md).
README_SOURCES = {
    "gradient-inversion": ("DLG / iDLG", "dlg-and-idlg-zhu-et-al-2019-zhao-et-al-2020"),
    "fedmix": ("FedMix", "fedmix-yoon-et-al-iclr-2021"),
    "fedmix-taylor": ("FedMix's Taylor term (diagnostic)", "where-the-claim-fails-and-why"),
    "fedzda": ("Fed-ZDA", "fed-zda-zero-shot-data-augmentation"),
    "cvae": ("CVAE imputation", "federated-cvae-imputation-the-thesis"),
    "fedavp": ("FedAvP", "fedavp-federated-augmentation-policies"),
    "dp": ("Tuned DP-SGD", "defenses-dp-tuned-at-fixed-budgets"),
}
README_BEGIN = "<!-- readme:verdicts (python benchmarks/pages.py --readme) -->"
README_END = "<!-- /readme:verdicts -->"
VERDICTS = ("holds", "partly", "does not hold")


def readme_verdicts() -> str:
    """Per reproduction, how many of its claims hold, partly hold or do not, as its
    page's verdict lines say, and the runs they read per seed (validation-split runs,
    and runs a script keeps out with in_grid, left out): the README's summary,
    regenerated with the stores so it cannot go stale."""
    lines = [
        "| source | holds | partly | does not hold | runs by seed (0 · 1 · 2) |",
        "|---|---|---|---|---|",
    ]
    for name, (label, anchor) in README_SOURCES.items():
        repro, rows, _ = _reproduction(name)
        rows = _held(repro, rows)
        said = repro.verdicts(rows) if rows else []
        counts = [sum(f"**{v}**" in line for line in said) for v in VERDICTS]
        seeds = [r["seed"] for r in rows if not str(r.get("dataset", "")).endswith(":validation")]
        by_seed = " · ".join(str(seeds.count(s)) for s in range(max([2, *seeds]) + 1))
        # a diagnostic (the Taylor term) says what it measured, not whether a claim holds
        cells = [str(c) for c in counts] if sum(counts) else ["-", "-", "-"]
        lines.append(
            f"| [{label}](docs/reproductions.md#{anchor}) | {' | '.join(cells)} | {by_seed} |"
        )
    return "\n".join(lines)


def refresh_readme(readme: Path = HERE.parent / "README.md") -> bool:
    """Rewrite the README's generated block (between README_BEGIN and README_END) from
    the stores; True if it changed."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    new = f"{text[:start]}\n{readme_verdicts()}\n{text[end:]}"
    if new != text:
        readme.write_text(new)
    return new != text


def defense_curve() -> str:
    import defense_curve as bench

    from privbench import ResultStore

    store = ResultStore(str(RESULTS / "defense_curve"))
    seeds = 1 + max((r["seed"] for r in store.read()), default=-1)
    return bench.table(seeds, store) if seeds else _missing(RESULTS / "defense_curve")


def tuning() -> str:
    """The tuned learning rates per dataset x model, from ``privbench/tuned.json``."""
    import tune

    from privbench.tuning import tuned

    found = tuned()["lr"]
    # The search's own order first (mnist before fashionmnist, LeNet first), then others.
    datasets = list(dict.fromkeys([*tune.DATASETS, *(k.split("/")[0] for k in found)]))
    models = list(dict.fromkeys([*tune.MODELS, *(k.split("/")[1] for k in found)]))
    datasets = [d for d in datasets if any(k.startswith(d + "/") for k in found)]
    models = [m for m in models if any(k.endswith("/" + m) for k in found)]
    lines = [
        "| dataset | " + " | ".join(f"`{m}`" for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for dataset in datasets:
        cells = []
        for m in models:
            v = found.get(f"{dataset}/{m}")
            if v is None:
                cells.append("-")
                continue
            acc = v["validation_accuracy"][f"{v['lr']:g}"]
            runs = "/".join(map(str, v.get("rounds", []))) or "?"
            setup = "".join(f", {s}" for s in v.get("setup", []))
            cells.append(f"{v['lr']:g} (val. acc {sum(acc) / len(acc):.2f}, {runs} rounds{setup})")
        lines.append(f"| `{dataset}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "results:headline": headline_table("headline"),
    "results:headline-mnist": headline_table("headline_mnist"),
    "results:headline-progress": headline_progress("headline"),
    "results:headline-mnist-progress": headline_progress("headline_mnist"),
    "results:headline-ig": headline_ig("headline"),
    "results:headline-mnist-ig": headline_ig("headline_mnist"),
    "results:headline-dp-mnist": headline_dp("mnist"),
    "results:headline-dp-digits": headline_dp("digits"),
    "results:fedmix": fedmix,
    "results:fedavp": fedavp,
    "results:generative": generative,
    "results:adaptive-fedmix": adaptive_fedmix,
    "results:attack-bands": attack_bands,
    "results:defense-curve": defense_curve,
    "results:tuning": tuning,
    "results:cnn-init": cnn_init,
    "results:fedavp-copies": fedavp_copies,
    "results:reproduce-cost": reproduction_cost,
    **{f"results:reproduce-{name}": _reproduction_table(name) for name in REPRODUCTIONS},
    **{f"verdicts:reproduce-{name}": _reproduction_verdicts(name) for name in REPRODUCTIONS},
}


def _frontier(store: str = "headline") -> Callable[[str], str]:
    def draw(out: str) -> str:
        from privbench.results.companions import leaked
        from privbench.results.plots import frontier
        from privbench.results.report import worst_case_view

        rows = _headline_rows(store)
        if not rows:
            return _placeholder(out, f"no rows yet in benchmarks/results/{store}")
        rows = worst_case_view(rows)
        # where a method augments from a public op space, its leakage is the
        # reconstruction against the private image under the draw it matches
        # (RandAugment: 11 dB as is, 86 dB so): the frontier must not read the
        # augmentation as a defense
        for r in rows:
            r["psnr"] = leaked(r)
        return frontier(rows, out)

    return draw


def _curves(out: str) -> str:
    from privbench.results.plots import curves

    # one row per run: the worst-case row carries the run's history like any other
    rows = [r for r in _headline_rows() if r["attack"] == "worst-case"]
    return curves(rows, out, by=("method",), panels=("defense",))


def _reconstructions(out: str) -> str:
    from privbench.results.plots import plot
    from privbench.results.report import load_rows

    # One image per defense point: the photos victim of seed 0 under DLG.
    rows = [
        r
        for r in load_rows(str(RESULTS / "defense_curve"))
        if r["dataset"] == "photos"
        and r["seed"] == 0
        and r["attack"] == "dlg"
        and r.get("reconstruction_file")
    ]
    return plot("reconstructions", rows, out, results_dir=str(RESULTS / "defense_curve"))


def _fedavp_views(out: str) -> str:
    """FedAvP's MNIST headline victims (no defense, every seed) above the identity
    view's reconstructions, DLG's and IG's: the digit under the op pairs it drew. The
    grid's rows where they have landed, else the earlier grid's (before @copies)."""
    from privbench.results.plots import plot
    from privbench.results.report import latest, load_rows

    store = RESULTS / "headline_mnist"

    def shown(rows):
        return [
            r
            for r in rows
            if r["method"] == "fedavp"
            and r["defense"] == "none"
            and r["attack"] in ("dlg@identity", "ig@identity")
            and r.get("status") == "ok"
            and r.get("reconstruction_file")
        ]

    rows = shown(_headline_rows("headline_mnist"))
    if not rows and (store / "results.jsonl").exists():
        rows = shown(latest(load_rows(str(store))))
    if not rows:
        return _placeholder(out, "no FedAvP rows yet in benchmarks/results/headline_mnist")
    rows.sort(key=lambda r: (r["seed"], r["attack"]))
    return plot("reconstructions", rows, out, results_dir=str(store))


def _reproduction_curves(name: str, partition: str | None = None) -> Callable[[str], str]:
    """Accuracy per round of a reproduction's runs, one line per dataset and method
    (mean ± std over seeds), of one partition kind when given."""

    def draw(out: str) -> str:
        from privbench.results.plots import curves

        repro, rows, path = _reproduction(name)
        rows = [
            r
            for r in _held(repro, rows)
            if r.get("status") == "ok" and partition in (None, r["config"]["partition"])
        ]
        # a script that plots only some of its runs says which with curve_rows(), and
        # how they are split into lines and panels with CURVE_BY and CURVE_PANELS
        rows = getattr(repro, "curve_rows", lambda rs: rs)(rows)
        if not rows:
            return _placeholder(out, f"no rows yet in {path.relative_to(HERE.parent)}")
        by = getattr(repro, "CURVE_BY", ("dataset", "partition", "method"))
        return curves(rows, out, by=by, panels=getattr(repro, "CURVE_PANELS", ()))

    return draw


def _inversion_grid(out: str) -> str:
    repro, rows, path = _reproduction("gradient-inversion")
    folder = path.parent / repro.ARRAYS
    drawn = repro.grid_figure(rows, folder, out)
    return drawn or _placeholder(out, f"no reconstructions saved yet in {folder.name}/")


def _placeholder(out: str, text: str) -> str:
    """A figure that says its benchmark has not run yet (the site still builds)."""
    from privbench.results.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    fig.savefig(out)
    plt.close(fig)
    return out


FIGURES: dict[str, Callable[[str], str]] = {
    "figures/headline_frontier.png": _frontier(),
    "figures/headline_mnist_frontier.png": _frontier("headline_mnist"),
    "figures/headline_curves.png": _curves,
    "figures/headline_mnist_fedavp.png": _fedavp_views,
    "figures/defense_reconstructions.png": _reconstructions,
    "figures/reproduce_fedmix_curves.png": _reproduction_curves("fedmix", "shards"),
    "figures/reproduce_fedzda_curves.png": _reproduction_curves("fedzda", "multimodal"),
    "figures/reproduce_fedavp_curves.png": _reproduction_curves("fedavp"),
    "figures/reproduce_gradient_inversion.png": _inversion_grid,
}


# The README shows these two (MNIST's headline: the primary, complete grid); its copies
# live in docs/img (redrawn by main()).
README_FIGURES = ("figures/headline_mnist_frontier.png", "figures/defense_reconstructions.png")


def main(argv: list[str] | None = None) -> None:
    """Draw the README's figures into a folder (``docs/img`` by default); with
    ``--readme``, rewrite the README's reproduction summary from the stores instead."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--figures", default=str(HERE.parent / "docs" / "img"))
    ap.add_argument(
        "--readme", action="store_true", help="rewrite the README's reproduction summary"
    )
    args = ap.parse_args(argv)
    if args.readme:
        print("README.md " + ("rewritten" if refresh_readme() else "already current"))
        return
    for uri in README_FIGURES:
        draw = FIGURES[uri]
        target = Path(args.figures) / Path(uri).name
        target.parent.mkdir(parents=True, exist_ok=True)
        print(draw(str(target)))


if __name__ == "__main__":
    main()
