"""Attack scheduling and per-target scoring: which observations each attack gets against
each victim, the attack's reconstructions, and their scores against the ground truth the
case kept aside (the attack never sees it; ``audit`` attacks are handed a victim's records
on purpose and say so)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from privbench.engine.channel import SERVER
from privbench.engine.experiment import Experiment
from privbench.engine.outcome import TrainingOutcome
from privbench.engine.seeding import torch_generator
from privbench.errors import IncompatibleError
from privbench.evaluation.metrics import (
    LeakageScore,
    combine_scores,
    label_distribution_error,
    leaked_db,
    score_nearest,
    score_pairs,
    score_reconstruction,
)
from privbench.results import ResultStore


@dataclass
class AttackScores:
    """What one attack achieved: the pooled ``score`` (None for a label-distribution
    attack), the label-distribution error, the reconstruction file, ``identified`` (the
    share of victims whose private choice an enumerating attack identified, or None),
    and, for attacks on a victim's batch, each victim's own score (``per_victim``)."""

    score: LeakageScore | None
    label_error: float | None
    path: str | None
    identified: float | None
    per_victim: list[LeakageScore] = field(default_factory=list)

    def __iter__(self):  # (score, label error, path, identified), as before
        return iter((self.score, self.label_error, self.path, self.identified))


def attack_victims(
    exp: Experiment, name: str, outcome: TrainingOutcome, store: ResultStore | None
) -> AttackScores:
    """Run attack ``name`` on every victim and score it (:class:`AttackScores`)."""
    cfg = exp.cfg
    attack = exp.regs["attack"].build(name, cfg.attack.params[name])
    seen = outcome.channel.observations
    scores, label_errors, arrays = [], [], {}
    observed = [
        observed_messages(exp, attack, name, vid, seen) for vid in range(cfg.attack.victims)
    ]
    generators = [torch_generator(cfg.seed, 2, vid) for vid in range(cfg.attack.victims)]
    if attack.target == "audit":  # handed each victim's records; scored pairwise
        recs = []
        for vid, (obs, gen) in enumerate(zip(observed, generators, strict=True)):
            gt, gt_labels = exp.client_data(vid)
            rec = attack.audit(obs[0], images=gt, labels=gt_labels, generator=gen, seen=seen)
            scores.append(score_pairs(gt, rec.images, gt_labels, rec.labels, exp.data.value_range))
            recs.append(rec)
    else:  # every victim in one call: batched attacks run their trials as one computation
        recs = attack.reconstruct_batch(
            [obs[0] for obs in observed], generators=generators, seen=seen
        )
    identified = guess_identified(exp, [obs[0] for obs in observed], recs)
    for vid, (obs, rec) in enumerate(zip(observed, recs, strict=True)):
        if attack.target == "labels":  # scored by label-distribution error only
            truth = label_hist(exp, vid)
            label_errors.append(label_distribution_error(rec.meta["label_hist"], truth))
            arrays[f"label_hist_{vid}"] = np.asarray(rec.meta["label_hist"], dtype=float)
            arrays[f"true_hist_{vid}"] = truth.numpy()
            continue
        images = rec.images.detach().clamp(*exp.data.value_range)
        if attack.target == "audit":
            gt, _ = exp.client_data(vid)
        elif attack.target == "batch":
            victim = outcome.victims[vid]
            gt = victim.images
            views = exp.public_method.augmented_views(victim.images)  # public draws
            if views is None:  # the copies it trained on, replayed from its private draws
                views = trained_views(exp, obs[0], victim.images)
            scores.append(
                score_reconstruction(
                    victim.images, images, victim.labels, rec.labels, exp.data.value_range, views
                )
            )
        else:
            gt, _ = exp.client_data(vid)
            population = None
            if obs[0].sender != vid:  # unattributed entries: score those nearest to vid
                population = (exp.data.x_train, owners(exp))
            scores.append(
                score_nearest(gt, images, exp.data.value_range, owner=vid, population=population)
            )
            if "label_hist" in rec.meta and obs[0].sender == vid:
                label_errors.append(
                    label_distribution_error(rec.meta["label_hist"], label_hist(exp, vid))
                )
        arrays[f"ground_truth_{vid}"] = gt.numpy()
        arrays[f"reconstruction_{vid}"] = images.numpy()
    path = None
    if store is not None:
        if attack.target == "batch":  # equal shapes: one (victims, B, C, H, W) array each
            arrays = {
                "ground_truth": np.stack([v for k, v in arrays.items() if k.startswith("ground")]),
                "reconstruction": np.stack([v for k, v in arrays.items() if k.startswith("recon")]),
            }
        path = store.save_arrays(f"{cfg.hash()}-{name}", **arrays)
    label_error = float(np.mean(label_errors)) if label_errors else None
    return AttackScores(
        combine_scores(scores) if scores else None,
        label_error,
        path,
        identified,
        scores if attack.target == "batch" else [],
    )


def worst_case(named: dict[str, AttackScores]) -> tuple[LeakageScore, list[str]] | None:
    """Per victim, the attack (and guess) that leaked most of its batch (highest
    ``leaked_db``: PSNR, or PSNR to the augmented copy where the method gives one; the
    first of equals, in the order the attacks ran), pooled over victims; and the
    winner's name per victim. None unless two or more attacks scored every victim."""
    runs = {n: a.per_victim for n, a in named.items() if a.per_victim}
    if len(runs) < 2 or len({len(v) for v in runs.values()}) != 1:
        return None
    best, names = [], []
    for vid in range(len(next(iter(runs.values())))):
        scores = {n: runs[n][vid] for n in runs}
        # max keeps the first of equals
        name = max(scores, key=lambda n: leaked_db(scores[n].psnr, scores[n].psnr_augmented))
        best.append(runs[name][vid])
        names.append(name)
    return combine_scores(best), names


def trained_views(exp: Experiment, observation, images: torch.Tensor) -> torch.Tensor | None:
    """Ground truth for scoring, never for attacks: the copies of the victim's batch its
    message trained on (``Augmenter.trained_views``), replayed from its private generator;
    None unless the message comes from one loss evaluation (one local step, no q-FFL
    loss at the global weights, which draws on the client's whole data first)."""
    ctx = observation.context
    if ctx.local_steps != 1 or (ctx.algorithm is not None and ctx.algorithm.needs_loss):
        return None
    generator = exp.private_generator(observation.round, observation.sender)
    return exp.public_method.trained_views(images, ctx.received, generator)


def guess_identified(exp: Experiment, observations, recs) -> float | None:
    """The share of victims for which an enumerating attack chose a candidate the victim
    really used (ground truth: the victim's private draws, replayed on the engine side);
    None when no reconstruction names a candidate."""
    hits = []
    for obs, rec in zip(observations, recs, strict=True):
        if "candidate" not in rec.meta:
            continue
        ctx = obs.context
        calls = ctx.local_steps + (
            1 if ctx.algorithm is not None and ctx.algorithm.needs_loss else 0
        )
        truth = exp.public_method.drawn_candidates(
            ctx.received, exp.private_generator(obs.round, obs.sender), calls
        )
        hits.append(float(rec.meta["candidate"] in truth))
    return float(np.mean(hits)) if hits else None


def observed_messages(exp: Experiment, attack, name: str, vid: int, seen) -> list:
    """The messages attack ``name`` may use against victim ``vid`` (it attacks the
    first)."""
    cfg = exp.cfg
    if attack.target == "batch":
        # The victim's message of the attacked round.
        obs = [
            o
            for o in seen
            if o.sender == vid and o.round == cfg.attack.round and o.kind in attack.consumes
        ]
    elif attack.target == "labels":  # the victim's own upload, nothing else
        obs = [o for o in seen if o.sender == vid and o.kind in attack.consumes]
    else:
        # Any artifact of the victim; a curious client gets only the server's
        # broadcasts (which mix everyone's entries, with no owner attached).
        obs = [o for o in seen if o.sender == vid and o.kind in attack.consumes] or [
            o for o in seen if o.sender == SERVER and o.kind in attack.consumes
        ]
    if not obs:
        raise IncompatibleError(
            f"attack '{name}' needs a {'/'.join(attack.consumes)} message from client "
            f"{vid}, which threat model '{cfg.attack.threat}' never sees in this run "
            f"(method '{cfg.method}'); see `privbench list` for what each attack needs."
        )
    from privbench.validation import require_finite_message

    require_finite_message(obs[0].payload, f"the {obs[0].kind} message of client {vid}")
    return obs


def label_hist(exp: Experiment, cid: int) -> torch.Tensor:
    """Client ``cid``'s true label counts over its training data."""
    return torch.bincount(exp.client_data(cid)[1], minlength=exp.data.num_classes).double()


def owners(exp: Experiment) -> torch.Tensor:
    owners = torch.full((len(exp.data.y_train),), -1, dtype=torch.long)
    for c in exp.clients:
        owners[torch.as_tensor(c.train)] = c.client_id
    return owners
