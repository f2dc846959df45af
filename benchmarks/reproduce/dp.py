"""Reproduction: what DP costs on MNIST when its knobs are tuned, at fixed budgets.

Record level (DP-SGD, Abadi et al. 2016, with Opacus): for each target ε in
{1, 3, 8} (δ = 1e-5; Opacus picks σ for the schedule that runs), the clip norm C, the
learning rate and the batch size are searched on a validation split carved from the
training images (10% per class; the test set is never used in the search), then, around
each ε's winner, larger batches and a longer schedule (the number of rounds) with the
learning rate again, and one step at a time past an edge its winner sits on (longer
schedule, larger or smaller learning rate or clip, larger batch); the best setting per
ε is then trained on all training images and evaluated on the test set over ``--seeds``
seeds. Client level (DP-FedAvg, McMahan et al. 2018): 100 clients, Poisson sampling at
q = 0.1, central noise; the clip C is searched on the validation split per noise
multiplier z (and walked past an end of the grid the same way), and the reported ε is
the accountant's for the schedule that ran.

Scaled to 2 CPU cores: a fixed subset of ``--train-size`` MNIST training images, the
``cnn`` model, short schedules (``--rounds``). The published DP-SGD MNIST numbers
(Abadi et al.: ~95% at ε = 2, ~97% at ε = 8 with a PCA front end and centralised
training) are the reference point for the trend, not a number to match: this is
federated training on a tenth of the data.

Every run is a privbench row in ``benchmarks/results/reproduce/dp/`` (resumable):

    python benchmarks/reproduce/dp.py --data-root ../shared/data
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np
from _common import current, measure, parse, parser

from privbench import FedConfig, ResultStore, RunConfig
from privbench.data.datasets import load_dataset
from privbench.engine.case import client_splits
from privbench.results.report import mean_std as ms

OUT = Path(__file__).resolve().parents[1] / "results" / "reproduce" / "dp"
EPSILONS = (1.0, 3.0, 8.0)
# Clipped steps are at most lr * C long: the grid reaches lr 2 (clipping alone at C 1 and
# lr 0.5 ends at 0.67 on MNIST after 5 rounds, at lr 2 at 0.91).
RECORD_GRID = {
    "max_grad_norm": (0.1, 1.0),
    "lr": (0.05, 0.2, 0.5, 2.0),
    "batch_size": (32, 128),
}
# The widening, around each ε's winner of RECORD_GRID (its C): DP-SGD at a fixed ε gains
# from larger batches (the noise on a step's mean gradient is σC/B) and may gain from
# more epochs (more steps, each noisier: Opacus raises σ); a larger batch takes fewer,
# less noisy steps, so the learning rate is searched again beside it.
WIDE_GRID = {
    "lr": (0.5, 2.0, 8.0),
    "batch_size": (128, 512),
    "rounds": (5, 15),
}
# The walk along an edge, after the widening: while a budget's winner has the longest
# schedule tried, the same knobs at 3x the rounds (up to MAX_ROUNDS); while it has the
# largest (smallest) learning rate or clip C tried, 4x (1/4) of it (C up to MAX_CLIP, at
# the same lr and at the lr that keeps lr * C, the longest clipped step);
# while it has the largest batch, 2x that batch, at most a client's records. The
# client level walks its clip the same way. 45 rounds won at ε 1 and 3 (seed 0), so the
# walk goes on to 135.
MAX_ROUNDS = 135
MAX_CLIP = 16.0
CLIENT_Z = (0.3, 0.5, 1.0)
CLIENT_CLIP = (0.05, 0.2, 1.0)


def _config(
    data: str, train_size: int, defense: str, params: dict, seed: int, fed: FedConfig
) -> RunConfig:
    """The runs of both levels: IID ``cnn`` on ``data`` (its training subset when it is
    the named dataset, not a provided validation split) under one DP defense."""
    return RunConfig(
        dataset=data,
        dataset_params={"train_size": train_size} if ":" not in data and train_size else {},
        partition="iid",
        model="cnn",
        defenses=(defense,),
        defense_params={defense: params},
        seed=seed,
        fed=fed,
    )


def record_config(
    eps: float | None,
    clip: float,
    lr: float,
    batch: int,
    seed: int,
    *,
    data: str,
    rounds: int,
    train_size: int,
    clients: int = 10,
) -> RunConfig:
    """DP-SGD at target ``eps`` (None: clipping alone, no noise) on ``clients`` IID
    clients, each accounting for its own records."""
    if eps is None:
        params = {"noise_multiplier": 0.0, "max_grad_norm": clip}
    else:
        params = {"target_epsilon": eps, "max_grad_norm": clip}
    fed = FedConfig(
        clients=clients, rounds=rounds, local_epochs=1, batch_size=batch, lr=lr, eval_every=0
    )
    return _config(data, train_size, "dp-sgd", params, seed, fed)


def client_config(
    z: float, clip: float, seed: int, *, data: str, rounds: int, train_size: int
) -> RunConfig:
    fed = FedConfig(
        clients=100,
        fraction=0.1,
        client_sampling="poisson",
        rounds=rounds,
        local_epochs=1,
        batch_size=10,
        eval_every=0,
    )
    return _config(data, train_size, "client-dp", {"noise_multiplier": z, "clip": clip}, seed, fed)


def search(level: str, dataset: str = "mnist", **kw) -> list[tuple[tuple, RunConfig]]:
    """(knobs, config) of the validation search of one level (record level: its first
    stage, RECORD_GRID at ``rounds``; :func:`widen` is the second)."""
    data = f"{dataset}:validation"
    if level == "record":
        return [
            ((eps, c, lr, b), record_config(eps, c, lr, b, 0, data=data, **kw))
            for eps, c, lr, b in product(EPSILONS, *RECORD_GRID.values())
        ]
    return [
        ((z, c), client_config(z, c, 0, data=data, **kw)) for z, c in product(CLIENT_Z, CLIENT_CLIP)
    ]


def _search_point(knobs: tuple, dataset: str, kw: dict) -> tuple[tuple, RunConfig]:
    """(knobs, config) of a record-level validation point at ``knobs`` (ε, C, lr, B,
    rounds): its own rounds, not the first stage's in ``kw``."""
    eps, clip, lr, batch, rounds = knobs
    kw = {**kw, "rounds": rounds}
    return knobs, record_config(eps, clip, lr, batch, 0, data=f"{dataset}:validation", **kw)


def widen(rows: list[dict], dataset: str = "mnist", **kw) -> list[tuple[tuple, RunConfig]]:
    """(knobs, config) of the record level's second stage: for each ε, WIDE_GRID at the
    clip C of the best search row so far (points the first stage ran are skipped by
    their hash when measured)."""
    return [
        _search_point((eps, clip, lr, batch, rounds), dataset, kw)
        for (level, eps), (clip, *_) in sorted(best(rows).items())
        if level == "record"
        for lr, batch, rounds in product(*WIDE_GRID.values())
    ]


def _beyond(
    value: float, values: set, factor: float, top: float | None = None, down: bool = True
) -> list:
    """The values one step past ``value`` when it is an end of the ``values`` tried (at
    least two): ``factor`` times the largest (up to ``top``) and, with ``down``,
    1/``factor`` of the smallest."""
    if len(values) < 2:
        return []
    out = []
    if value == max(values) and (top is None or factor * value <= top):
        out.append(factor * value)
    if down and value == min(values):
        out.append(value / factor)
    return out


def _clip_steps(clip: float, lr: float, clips: set, rest: tuple) -> list[tuple]:
    """4x (up to MAX_CLIP) or 1/4 of a clip at an end of the ``clips`` tried, each at
    the same lr and at the lr that keeps lr * C (the longest clipped step). An end is
    the largest (smallest) clip tried, or one whose step was tried at one lr only: the
    step's other lr is still owed."""
    if len(clips) < 2:
        return []
    out = []
    if (clip == max(clips) or 4 * clip in clips) and 4 * clip <= MAX_CLIP:
        out += [(4 * clip, lr, *rest), (4 * clip, lr / 4, *rest)]
    if clip == min(clips) or clip / 4 in clips:
        out += [(clip / 4, lr, *rest), (clip / 4, 4 * lr, *rest)]
    return out


def extend(
    rows: list[dict], dataset: str = "mnist", client_records: int | None = None, **kw
) -> list[tuple[tuple, RunConfig]]:
    """(knobs, config) of one step past the edge of the search, for each budget whose
    winner sits at an end of what was tried. Record level: 3x the longest schedule (up
    to :data:`MAX_ROUNDS`), 4x or 1/4 of the learning rate, 4x or 1/4 of the clip (up to
    :data:`MAX_CLIP`) at the same learning rate and at the one that keeps lr * C, 2x the
    largest batch (at most ``client_records``, a client's whole training set); client
    level: 4x or 1/4 of the clip. Points tried before are not proposed again, so
    repeating ``measure(extend(rows))`` ends."""
    seen = {_knobs(r) for r in rows if r["dataset"].endswith(":validation")}
    values = tried(rows)
    validation = f"{dataset}:validation"
    out = []
    for (level, budget), knobs in sorted(best(rows).items()):
        if level == "client":
            (clip,) = knobs
            out += [
                ((budget, c), client_config(budget, c, 0, data=validation, **kw))
                for c in _beyond(clip, values[(level, budget)][0], 4.0, MAX_CLIP)
                if (level, budget, c) not in seen
            ]
            continue
        clip, lr, batch, rounds = knobs
        clips, lrs, batches, schedules = values[(level, budget)]
        steps = [(clip, lr, batch, r) for r in _beyond(rounds, schedules, 3, MAX_ROUNDS, False)]
        steps += [(clip, x, batch, rounds) for x in _beyond(lr, lrs, 4.0)]
        steps += _clip_steps(clip, lr, clips, (batch, rounds))
        if client_records and len(batches) > 1 and batch == max(batches) < client_records:
            steps.append((clip, lr, min(2 * batch, client_records), rounds))
        out += [
            _search_point((budget, *step), dataset, kw)
            for step in steps
            if (level, budget, *step) not in seen
        ]
    return out


def _knobs(row: dict) -> tuple:
    c = row["config"]
    if not c["defenses"]:
        return ("none",)
    if "dp-sgd" in c["defense_params"]:
        d = c["defense_params"]["dp-sgd"]
        return (
            "record",
            d["target_epsilon"],
            d["max_grad_norm"],
            c["fed"]["lr"],
            c["fed"]["batch_size"],
            c["fed"]["rounds"],
        )
    d = c["defense_params"]["client-dp"]
    return ("client", d["noise_multiplier"], d["clip"])


def best(rows: list[dict]) -> dict[tuple, tuple]:
    """Per budget (record: ε; client: z), the knobs with the best validation accuracy;
    a failed run scores 0."""
    scores: dict[tuple, dict[tuple, float]] = {}
    for r in rows:
        if not r["dataset"].endswith(":validation"):
            continue
        k = _knobs(r)
        acc = r["accuracy"] if r["status"] == "ok" and r["accuracy"] is not None else 0.0
        scores.setdefault(k[:2], {})[k[2:]] = acc
    return {budget: max(s, key=s.get) for budget, s in scores.items()}


def finals(
    rows: list[dict], seeds: int, dataset: str = "mnist", **kw
) -> list[tuple[tuple, RunConfig]]:
    """The validation-best knobs per budget on the whole training set, ``seeds`` seeds
    (record level: the schedule's rounds are one of the knobs)."""
    out = []
    for (level, budget), knobs in sorted(best(rows).items()):
        for seed in range(seeds):
            if level == "record":
                clip, lr, batch, rounds = knobs
                kw_record = {**kw, "rounds": rounds}
                cfg = record_config(budget, clip, lr, batch, seed, data=dataset, **kw_record)
            else:
                cfg = client_config(budget, *knobs, seed, data=dataset, **kw)
            out.append(((level, budget, knobs, seed), cfg))
    return out


def _test_run(r: dict) -> bool:
    return r["status"] == "ok" and not r["dataset"].endswith(":validation")


def _final(r: dict) -> bool:
    """A test-set run of the main protocol: the 10 DP-SGD clients at a target ε, or
    client-level DP (not the search, not the ablation)."""
    k = _knobs(r)
    if not _test_run(r) or k[0] == "none":
        return False
    return k[0] == "client" or (k[1] is not None and r["clients"] == 10)


def best_finals(rows: list[dict]) -> list[dict]:
    """The finals of the validation-best knobs (finals of knobs that a wider search has
    since displaced are left out)."""
    chosen = {(level, b) + k for (level, b), k in best(rows).items()}
    return [r for r in rows if _final(r) and _knobs(r) in chosen]


def table(rows: list[dict]) -> str:
    """Test accuracy of the validation-best knobs per budget (:func:`best_finals`)."""
    lines = [
        "| level | budget | knobs (validation-best) | runs | test accuracy | ε (Opacus) |",
        "|---|---|---|---|---|---|",
    ]
    # every budget's winner, with no runs yet when its finals have not run
    groups: dict[tuple, list[dict]] = {(lv, b, *k): [] for (lv, b), k in best(rows).items()}
    for r in best_finals(rows):
        groups.setdefault(_knobs(r), []).append(r)
    for k, rs in sorted(groups.items()):
        level = k[0]
        budget = f"target ε {k[1]:g}" if level == "record" else f"z {k[1]:g}"
        knobs = (
            f"C {k[2]:g}, lr {k[3]:g}, batch {k[4]}, {k[5]} rounds"
            if level == "record"
            else f"C {k[2]:g}"
        )
        if not rs:
            lines.append(f"| {level} | {budget} | {knobs} | 0 | (test runs to come) | - |")
            continue
        eps = [r[f"epsilon_{level}"] for r in rs]
        lines.append(
            f"| {level} | {budget} | {knobs} | {len(rs)} | {ms(r['accuracy'] for r in rs)} "
            f"| {ms(eps) if all(e is not None for e in eps) else '-'} |"
        )
    return "\n".join(lines)


# Abadi et al. 2016 (DP-SGD, centralised MNIST with a PCA front end, δ = 1e-5): test
# accuracy at ε = 2 and ε = 8, the published reference for the trend.
ABADI = {2.0: 0.95, 8.0: 0.97}


def verdicts(rows: list[dict]) -> list[str]:
    """Per record-level budget, the test accuracy of the validation-chosen knobs against
    Abadi et al.'s centralised numbers: holds within 5 points of the nearest published
    budget at or above it, partly within 15, does not hold beyond."""
    out = []
    groups: dict[float, list[dict]] = {}
    for r in best_finals(rows):
        if _knobs(r)[0] == "record":
            groups.setdefault(_knobs(r)[1], []).append(r)
    for eps, rs in sorted(groups.items()):
        acc = float(np.mean([r["accuracy"] for r in rs]))
        ref = next((ABADI[e] for e in sorted(ABADI) if e >= eps), None)
        if ref is None:
            continue
        gap = ref - acc
        verdict = "holds" if gap <= 0.05 else "partly" if gap <= 0.15 else "does not hold"
        out.append(
            f"- record level, target ε {eps:g}: test accuracy {acc:.3f} over {len(rs)} runs "
            f"vs {ref:.2f} published at ε ≤ {min(e for e in ABADI if e >= eps):g}: **{verdict}**"
        )
    return out


WHY_EPS = 8.0
WHY_CLIENTS = 10  # the finals' clients (record_config's default)


def why_points(rows: list[dict], seeds: int, dataset: str = "mnist", **kw):
    """Where the accuracy goes at ε 8, with the validation-best knobs (C, lr, B): no DP
    (FedAvg at its tuned learning rate), clipping alone, DP-SGD on the 10 clients (the
    finals), and DP-SGD on one client holding every record (one accountant over all of
    them: the centralised setting of the published numbers, at this data size), at the
    finals' batch and at the ten clients' batch together (the finals' sampling rate and
    steps, so the finals' σ, on one model instead of an average of ten)."""
    knobs = best(rows).get(("record", WHY_EPS))
    if knobs is None:
        return []
    clip, lr, batch, rounds = knobs
    kw = {**kw, "rounds": rounds}
    out = []
    for seed in range(seeds):
        base = record_config(WHY_EPS, clip, lr, batch, seed, data=dataset, **kw)
        out += [
            (
                ("no DP", seed),
                replace(base, defenses=(), defense_params={}, fed=replace(base.fed, lr=None)),
            ),
            (
                ("clipping only", seed),
                record_config(None, clip, lr, batch, seed, data=dataset, **kw),
            ),
            (
                ("one client", seed),
                record_config(WHY_EPS, clip, lr, batch, seed, data=dataset, clients=1, **kw),
            ),
            (
                ("one client, the ten clients' batch", seed),
                record_config(
                    WHY_EPS, clip, lr, batch * WHY_CLIENTS, seed, data=dataset, clients=1, **kw
                ),
            ),
        ]
    return out


def _why_label(r: dict, knobs: tuple) -> str | None:
    """The ablation line a test run belongs to, for the ε-8 knobs ``knobs`` (C, lr, B,
    rounds)."""
    k = _knobs(r)
    if not _test_run(r) or r["rounds"] != knobs[3]:
        return None
    batch = r["config"]["fed"]["batch_size"]
    if (
        batch == knobs[2] * WHY_CLIENTS
        and r["clients"] == 1
        and k[1:] == (WHY_EPS, *knobs[:2], batch, knobs[3])
    ):
        return f"DP-SGD ε {WHY_EPS:g}, 1 client, batch {batch}"
    if batch != knobs[2]:
        return None
    if k[0] == "none" and r["clients"] == WHY_CLIENTS:
        return f"no DP (FedAvg at its tuned lr), {WHY_CLIENTS} clients"
    if k[0] != "record" or k[2:] != knobs:
        return None
    if k[1] is None:
        return f"clipping only (σ 0), {WHY_CLIENTS} clients"
    if k[1] == WHY_EPS:
        return f"DP-SGD ε {WHY_EPS:g}, {r['clients']} client{'s' if r['clients'] > 1 else ''}"
    return None


def why_table(rows: list[dict]) -> str:
    """The ablation: test accuracy, each client's records (its accountant's population)
    and the noise multiplier Opacus chose for that schedule."""
    knobs = best(rows).get(("record", WHY_EPS))
    if knobs is None:
        return ""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if label := _why_label(r, knobs):
            groups.setdefault(label, []).append(r)
    if len(groups) < 2:
        return ""
    lines = [
        f"| at ε {WHY_EPS:g} (C {knobs[0]:g}, lr {knobs[1]:g}, batch {knobs[2]} unless named, "
        f"{knobs[3]} rounds) "
        "| runs | records per client | SGD steps per client | σ (Opacus) | test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    order = ("no DP", "clipping", "DP-SGD ε 8, 10", "DP-SGD ε 8, 1 client")
    rank = {
        label: next((i for i, o in enumerate(order) if label.startswith(o)), 9) for label in groups
    }
    for label in sorted(groups, key=lambda s: (rank[s], "batch" in s, s)):
        rs = groups[label]
        fed = rs[0]["config"]["fed"]
        size = rs[0]["config"]["dataset_params"].get("train_size")  # None: the whole set
        records = steps = "-"
        if size:
            per_client = size // rs[0]["clients"]
            # ceil(records / B) steps an epoch (DP-SGD's q is its inverse: defenses/dpsgd.py)
            per_epoch = math.ceil(per_client / fed["batch_size"])
            records, steps = (
                f"{per_client:,}",
                f"{fed['rounds'] * fed['local_epochs'] * per_epoch:,}",
            )
        spent = rs[0]["accountant"] or ""
        sigma = spent.split("sigma=")[-1].rstrip(")") if "sigma=" in spent else "-"
        lines.append(
            f"| {label} | {len(rs)} | {records} | {steps} | {sigma} "
            f"| {ms(r['accuracy'] for r in rs)} |"
        )
    return "\n".join(lines)


def client_noise(rows: list[dict]) -> str:
    """Client level: the central noise against the signal it hides. The server adds
    N(0, (z C)^2) per coordinate to the sum of about qN clipped updates (norm <= C each)
    and divides by qN; over d parameters the noise's norm is z C sqrt(d) / (qN), the
    mean update's at most C."""
    from privbench import registries

    runs = [r for r in rows if _final(r) and _knobs(r)[0] == "client"]
    if not runs:
        return ""
    zs = sorted({r["config"]["defense_params"]["client-dp"]["noise_multiplier"] for r in runs})
    model = registries()["model"].entry("cnn").factory((1, 28, 28), 10)
    d = sum(p.numel() for p in model.parameters())
    per_round = runs[0]["clients"] * runs[0]["config"]["fed"]["fraction"]
    lines = [
        f"| z | noise norm / largest mean-update norm (d = {d:,}, {per_round:g} clients a round) |",
        "|---|---|",
    ]
    lines += [f"| {z:g} | {z * d**0.5 / per_round:.0f} |" for z in zs]
    return "\n".join(lines)


KNOB_NAMES = {"record": ("C", "lr", "batch", "rounds"), "client": ("C",)}


def tried(rows: list[dict]) -> dict[tuple, list[set]]:
    """Per budget ((level, ε or z)), the values each knob took in the validation search
    (failed runs included: they were tried)."""
    out: dict[tuple, list[set]] = {}
    for r in rows:
        if r["dataset"].endswith(":validation"):
            k = _knobs(r)
            sets = out.setdefault(k[:2], [set() for _ in k[2:]])
            for values, v in zip(sets, k[2:], strict=True):
                values.add(v)
    return out


def edges(rows: list[dict]) -> list[str]:
    """The chosen knobs that sit at an end of what the search tried for their budget
    (the largest or the smallest of at least two values): the best may lie beyond."""
    values_of = tried(rows)
    out = []
    for (level, budget), knobs in sorted(best(rows).items()):
        ends = [
            f"{name} {v:g} ({'largest' if v == max(values) else 'smallest'} of "
            f"{', '.join(f'{x:g}' for x in sorted(values))})"
            for name, v, values in zip(
                KNOB_NAMES[level], knobs, values_of[(level, budget)], strict=True
            )
            if len(values) > 1 and v in (min(values), max(values))
        ]
        if ends:
            name = f"target ε {budget:g}" if level == "record" else f"z {budget:g}"
            out.append(f"- {level} level, {name}: {'; '.join(ends)}")
    return out


def page(rows: list[dict]) -> str:
    out = table(rows)
    if ends := edges(rows):
        out += (
            "\n\nKnobs chosen at an end of the searched range (the best may lie beyond):"
            "\n\n" + "\n".join(ends)
        )
    if why := why_table(rows):
        out += f"\n\nWhere the record-level accuracy goes:\n\n{why}"
    if noise := client_noise(rows):
        out += f"\n\nClient level, the central noise against the signal:\n\n{noise}"
    return out


def client_records(data, clients: int = 10, seed: int = 0) -> int:
    """The smallest training set of the record level's IID clients on ``data`` (after
    each client's local test split), as a run of ``record_config`` builds them: the
    largest batch a run accepts."""
    cfg = record_config(None, 1.0, 1.0, 1, seed, data=data.name, rounds=1, train_size=0)
    cfg = replace(cfg, fed=replace(cfg.fed, clients=clients))
    return min(len(c.train) for c in client_splits(cfg, data.y_train.numpy()))


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, out=OUT, seeds=3, rounds=5)
    ap.add_argument("--client-rounds", type=int, default=30)
    ap.add_argument("--levels", nargs="+", default=["record", "client"])
    args = parse(ap, argv)
    store = ResultStore(args.out)
    full = load_dataset("mnist", {"train_size": args.train_size}, root=args.data_root)
    validation = full.validation_split(0.1, seed=0)
    for level in args.levels:
        rounds = args.rounds if level == "record" else args.client_rounds
        kw = {"rounds": rounds, "train_size": args.train_size}
        measure(search(level, **kw), store, validation)
        rows = [r for r in current(store.read()) if _knobs(r)[0] == level]
        if level == "record":
            measure(widen(rows, **kw), store, validation)
            rows = [r for r in current(store.read()) if _knobs(r)[0] == level]
        records = client_records(validation) if level == "record" else None
        while todo := extend(rows, client_records=records, **kw):
            measure(todo, store, validation)
            rows = [r for r in current(store.read()) if _knobs(r)[0] == level]
        measure(finals(rows, args.seeds, **kw), store, None)
        if level == "record":
            measure(why_points(rows, args.seeds, **kw), store, None)
    print(page(current(store.read())))
    searched = sum(r["dataset"].endswith(":validation") for r in store.read())
    print(f"validation search: {searched} runs")


if __name__ == "__main__":
    main()
