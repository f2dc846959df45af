"""What FedAvP's copies view loses to the weights it cannot see, measured.

A FedAvP client's step weights each augmented copy's cross-entropy by the score of the
op pair it drew for that copy (``weighted_augmented_loss``). The attacker knows the
policy, so every score, but not which pair each copy drew. The copies view gives each
copy a free dummy; its weight can be

- ``expected``: the expected score sum(q * s) for every copy (the view's own loss, as
  the copies view had it before the weights were solved);
- ``true``: each copy's real score, replayed from the victim's private draws. Not an
  attacker: it bounds what knowing the weights is worth;
- ``solved``: each weight solved against the observed gradient, in closed form
  (``VictimSimulator.solved_gradient``): what the copies view does now for iDLG and IG,
  whose labels are fixed. DLG's free soft labels already scale each copy's term, and
  DLG keeps the expected weights (``_LBFGSAttack.solves_weights``); its ``solved``
  rows here force the solve, the measurement behind that choice.

Each attack rebuilds one victim image (B = 1, ``expansion`` 2) of a FedAvP run on
digits (4 IID clients, 3 rounds, the gradient of round 2), at each seed; the score is
the best PSNR of a reconstruction against the two copies the victim trained on.
Rows go to ``benchmarks/results/fedavp_copies.jsonl`` as they come (a rerun skips what
is there); the table prints at the end:

    python benchmarks/fedavp_copies.py [--seeds 3]
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

from _store import RESULTS, RowStore  # run as a script: benchmarks/ is on sys.path

from privbench import AttackConfig, FedConfig, RunConfig
from privbench.attacks import gradient
from privbench.attacks.base import ATTACKS
from privbench.augmenters import fedavp
from privbench.augmenters.base import per_sample_cross_entropy
from privbench.engine.experiment import Experiment
from privbench.engine.seeding import torch_generator
from privbench.evaluation.attacking import trained_views
from privbench.evaluation.metrics import psnr
from privbench.results.report import mean_std

FIELDS = ("attack", "weights", "seed")
WEIGHTS = ("expected", "true", "solved")
PLAN = (("dlg@copies", WEIGHTS), ("idlg@copies", WEIGHTS), ("ig@copies", ("expected", "solved")))


def victim(seed: int):
    """A trained FedAvP run's observed gradient, its victim's trained-on copies and the
    true score of each copy (copy-major, as the loss orders them)."""
    cfg = RunConfig(
        method="fedavp",
        partition="iid",
        seed=seed,
        fed=FedConfig(clients=4, rounds=3, eval_every=0),
        attack=AttackConfig(names=("dlg@copies",)),
    ).resolve()
    exp = Experiment(cfg)
    out = exp.train()
    obs = next(o for o in out.channel.observations if o.kind == "gradient")
    images = out.victims[0].images
    views = trained_views(exp, obs, images)
    method = exp.public_method
    generator = exp.private_generator(obs.round, obs.sender)
    scores, pairs, _ = method._draw(obs.context.received, len(images), generator)
    return out, obs, views, scores[pairs]


@contextmanager
def weighting(kind: str, true_scores):
    """The copies view with the weights of ``kind`` for the duration."""
    solves, loss = gradient.VictimSimulator.solves_weights, fedavp.PolicyGuess.local_loss
    lbfgs = gradient._LBFGSAttack.__dict__["solves_weights"]

    def true_loss(self, model, x, y, *, received, generator=None):
        if self.guess != "copies":
            return loss(self, model, x, y, received=received, generator=generator)
        return (per_sample_cross_entropy(model(x), y) * true_scores).mean()

    if kind != "solved":
        gradient.VictimSimulator.solves_weights = lambda self, k: False
    if kind == "true":
        fedavp.PolicyGuess.local_loss = true_loss
    if kind == "solved":  # DLG too
        gradient._LBFGSAttack.solves_weights = property(lambda self: True)
    try:
        yield
    finally:
        gradient.VictimSimulator.solves_weights = solves
        fedavp.PolicyGuess.local_loss = loss
        gradient._LBFGSAttack.solves_weights = lbfgs


def measure(seeds: int, store: RowStore, iters: int | None = None) -> None:
    for seed in range(seeds):
        todo = [(a, w) for a, ws in PLAN for w in ws if (a, w, seed) not in store]
        if not todo:
            continue
        out, obs, views, true_scores = victim(seed)
        lo, hi = float(views.min()), float(views.max())
        copies = views.flatten(0, 1).numpy()
        for name, kind in todo:
            params = {} if iters is None else {"iters": iters}
            with weighting(kind, true_scores):
                (rec,) = ATTACKS.create(name, **params).reconstruct_batch(
                    [obs], generators=[torch_generator(0, 2, 0)], seen=out.channel.observations
                )
            recs = rec.images.clamp(lo, hi).numpy()
            best = max(psnr(c[None], r[None]) for c in copies for r in recs)
            row = dict(zip(FIELDS, (name, kind, seed), strict=True))
            store.add(row | {"psnr_to_copy": best, "true_scores": true_scores.tolist()})
            print(f"  {name} {kind} seed {seed}: {best:.2f} dB", flush=True)


def table(rows: list[dict]) -> str:
    lines = [
        "| attack | copies' weights | runs | PSNR to the copy, dB | > 30 dB |",
        "|---|---|---|---|---|",
    ]
    for name, kinds in PLAN:
        for kind in kinds:
            got = [r["psnr_to_copy"] for r in rows if (r["attack"], r["weights"]) == (name, kind)]
            if got:
                hits = sum(v > 30 for v in got)
                lines.append(
                    f"| {name} | {kind} | {len(got)} | {mean_std(got)} | {hits} of {len(got)} |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=None, help="attack iterations (a smoke run)")
    ap.add_argument("--out", type=Path, default=Path(RESULTS) / "fedavp_copies.jsonl")
    args = ap.parse_args()
    store = RowStore(args.out, lambda r: tuple(r[f] for f in FIELDS))
    measure(args.seeds, store, args.iters)
    print(table(list(store)))


if __name__ == "__main__":
    main()
