"""The flow of one experiment: case -> round loop -> attacks -> rows.

:func:`run` builds the case (:class:`~privbench.engine.experiment.Experiment`), trains
it, hands each attack its observations (:mod:`privbench.evaluation.attacking`) and
writes one row per attack. Configuration errors raise before anything runs; a failure
during training or an attack becomes an error row with the message, never silence.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from privbench.adversary import WORST_CASE
from privbench.config import RunConfig
from privbench.confighash import config_hash
from privbench.engine.checkpoint import DEFAULT_EVERY_S, RoundCheckpoint
from privbench.engine.experiment import Experiment
from privbench.engine.outcome import TrainingOutcome
from privbench.errors import AttackDivergedError, DivergedError, PrivbenchError
from privbench.evaluation.attacking import AttackScores, attack_victims, worst_case
from privbench.results import Result, Results, ResultStore, versions
from privbench.results.companions import without_attackers
from privbench.results.store import ATTACKED_BEFORE

log = logging.getLogger("privbench")


def base_row(cfg: RunConfig, attack: str) -> Result:
    return Result(
        method=cfg.method,
        attack=attack,
        defense="+".join(cfg.defenses) or "none",
        threat=cfg.attack.threat,
        dataset=cfg.dataset,
        partition=cfg.partition,
        model=cfg.model,
        algorithm=cfg.fed.algorithm,
        seed=cfg.seed,
        rounds=cfg.fed.rounds,
        clients=cfg.fed.clients,
        clients_per_round=cfg.fed.clients_per_round,
        attack_round=cfg.attack.round,
        victims=cfg.attack.victims,
        attack_batch=cfg.attack.batch,
        victim_steps=cfg.attack.steps,
        config_hash=cfg.hash(),
        versions=versions(),
        config=cfg.to_dict(),
    )


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def run(
    config: RunConfig,
    *,
    store: ResultStore | None = None,
    model=None,
    data=None,
    checkpoint_every: float | None = DEFAULT_EVERY_S,
) -> Results:
    """Train once, run every configured attack, return (and store) one row per attack.

    Configuration errors raise before anything runs. A failure during training or an
    attack becomes a row with ``status="error"`` and the message, never silence. With a
    store, the round loop saves a checkpoint every ``checkpoint_every`` seconds (None:
    never) and a rerun resumes from it (:mod:`privbench.engine.checkpoint`); a run on
    your own model or data does not (the config hash does not identify them).
    """
    t0 = time.perf_counter()
    exp = Experiment(config, model=model, data=data)  # raises PrivbenchError on bad input
    cfg = exp.cfg
    exp.records_observations = bool(cfg.attack.names)  # nothing reads them otherwise
    if store is not None and checkpoint_every is not None and model is None and data is None:
        exp.checkpoint = RoundCheckpoint.in_store(
            store.directory, cfg.hash(), every=checkpoint_every
        )
    rows = _rows(cfg)
    try:
        outcome = exp.train()
    except Exception as err:  # a failed trial is a row, not silence
        rows = training_failed(exp, err, rows, store, t0)
    else:
        rows = finish_rows(exp, outcome, rows, store, t0)
    if exp.checkpoint is not None:  # the rows are stored: the run is over
        exp.checkpoint.remove()
    return rows


def training_hash(cfg: RunConfig) -> str:
    """What a resolved configuration trains and which messages its attacks receive: its
    hash with the attacks' names and parameters left out. Whether any attack runs stays
    in (the attacked round forces the victims into its sample); so do the attacked
    round, the victims, their batch and steps, and the threat model."""
    d = without_attackers(cfg.to_dict())
    d["attack"]["attacked"] = bool(cfg.attack.names)
    return config_hash(d)


def run_shared(
    configs: Sequence[RunConfig],
    *,
    store: ResultStore | None = None,
    checkpoint_every: float | None = DEFAULT_EVERY_S,
) -> list[Results]:
    """Configurations that train the same (:func:`training_hash`) and differ in their
    attacks train once; each one's attacks then run on that training and it gets its
    own rows: those a separate :func:`run` of it writes, timings aside (the random
    states training leaves are restored before each one's attacks; a test compares).
    Each row's ``train_s`` is the shared training's; the round checkpoint is keyed by
    the training, so a rerun of any of them resumes it. A configuration the case
    rejects gets error rows (stored) and the others go on. One result list per
    configuration, in order."""
    t0 = time.perf_counter()
    exp, cfgs, out = None, [], []
    for config in configs:
        try:
            case = Experiment(config)  # the case's own checks, each configuration's
        except PrivbenchError as err:
            cfgs.append(None)
            out.append(fail_rows(_rows(_resolved(config)), err, store, t0))
            continue
        exp = exp or case  # the first valid configuration trains; the others' cases go
        cfgs.append(case.cfg)
        out.append(_rows(case.cfg))
    live = [i for i, c in enumerate(cfgs) if c is not None]
    if exp is None:
        return out
    if len({training_hash(cfgs[i]) for i in live}) > 1:
        raise PrivbenchError(
            "run_shared: these configurations train differently; only their attacks "
            "(names and parameters) may differ"
        )
    exp.records_observations = any(cfgs[i].attack.names for i in live)
    if store is not None and checkpoint_every is not None:
        # Keyed by the training: a rerun of any of these points resumes from it.
        exp.checkpoint = RoundCheckpoint.in_store(
            store.directory, training_hash(exp.cfg), every=checkpoint_every
        )
    try:
        outcome, failure = exp.train(), None
    except Exception as err:  # a failed trial is a row, not silence
        outcome, failure = attackable(err), err
        if outcome is None:
            for i in live:
                out[i] = fail_rows(out[i], err, store, t0)
    if outcome is not None:
        trained = time.perf_counter() - t0
        states = _random_states()
        for i in live:
            _restore_random_states(states)
            exp.cfg = cfgs[i]  # only the attacks differ: the trained case is shared
            out[i] = finish_rows(
                exp, outcome, out[i], store, time.perf_counter() - trained, diverged=failure
            )
    if exp.checkpoint is not None:
        exp.checkpoint.remove()
    return out


def _rows(cfg: RunConfig) -> Results:
    """One row per attack of ``cfg`` (``none`` without attacks), not yet filled."""
    return Results(base_row(cfg, n) for n in cfg.attack.names or ("none",))


def _resolved(cfg: RunConfig) -> RunConfig:
    try:
        return cfg.resolve()
    except PrivbenchError:  # the error rows name the configuration as given
        return cfg


def _random_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _restore_random_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


def attackable(err: BaseException) -> TrainingOutcome | None:
    """What a failed training still gives the attacks: the outcome up to the round that
    diverged when the attacked round came before it (its messages were sent), else
    None."""
    return err.outcome if isinstance(err, DivergedError) else None


def training_failed(
    exp: Experiment, err: Exception, rows: Results, store: ResultStore | None, t0: float
) -> Results:
    """The rows of a training that raised ``err``: the attacks' rows of a run that
    diverged after its attacked round (:func:`finish_rows`), else error rows."""
    if (outcome := attackable(err)) is not None:
        return finish_rows(exp, outcome, rows, store, t0, diverged=err)
    return fail_rows(rows, err, store, t0)


def fail_rows(rows: Results, err: Exception, store: ResultStore | None, t0: float) -> Results:
    """Training failed: every row becomes an error row with the message (and is stored)."""
    for row in rows:
        row.status, row.error = "error", _error_text(err)
        row.wall_s = time.perf_counter() - t0
    _log_traceback(err)
    if store is not None:
        store.append(rows)
    return rows


def finish_rows(
    exp: Experiment,
    outcome: TrainingOutcome,
    rows: Results,
    store: ResultStore | None,
    t0: float,
    diverged: DivergedError | None = None,
) -> Results:
    """Fill the rows from a finished training run, run each attack, store the rows.

    ``diverged``: the training diverged after its attacked round (``outcome`` is what it
    produced until then). The adversary received the victims' messages, so the attacks
    run on them as on any run's; every row is an error row that says so, with no
    accuracy, and carries the attack's scores."""
    u = outcome.utility
    achieved: dict[str, AttackScores] = {}
    for row in rows:
        if diverged is not None:
            row.status, row.error = "error", diverged_text(diverged, row.attack_round)
            if row.attack != "none":
                achieved_scores(exp, row, outcome, store, achieved)
            continue
        row.accuracy, row.client_acc_mean, row.client_acc_var = (
            u.accuracy,
            u.client_acc_mean,
            u.client_acc_var,
        )
        row.class_acc_var, row.macro_f1 = u.class_acc_var, u.macro_f1
        row.bytes_up, row.bytes_down = outcome.channel.bytes_up, outcome.channel.bytes_down
        row.bytes_by_kind = outcome.channel.bytes_by_kind()
        row.epsilon, row.delta, row.accountant = outcome.spend
        row.epsilon_record, row.delta_record = outcome.levels.get("record", (None, None))
        row.epsilon_client, row.delta_client = outcome.levels.get("client", (None, None))
        row.history = outcome.history
        row.synthetic_share = outcome.synthetic_share
        row.train_s = outcome.seconds
        if row.attack != "none":
            achieved_scores(exp, row, outcome, store, achieved)
    if (worst := worst_case(achieved)) is not None:
        rows.append(_worst_case_row(rows, *worst))
        if diverged is not None:
            rows[-1].status = "error"
            rows[-1].error = diverged_text(diverged, rows[-1].attack_round)
    wall = time.perf_counter() - t0
    for row in rows:
        row.wall_s = wall
    if store is not None:
        store.append(rows)
    return rows


def achieved_scores(
    exp: Experiment,
    row: Result,
    outcome: TrainingOutcome,
    store: ResultStore | None,
    achieved: dict[str, AttackScores],
) -> None:
    """Run ``row``'s attack on the outcome's observations and fill its scores (into
    ``achieved`` too); an attack that fails makes ``row`` an error row that says why,
    after any error it already states."""
    ta = time.perf_counter()
    try:
        got = achieved[row.attack] = attack_victims(exp, row.attack, outcome, store)
        row.label_dist_error, row.guess_identified = got.label_error, got.identified
        if got.score is not None:  # None: a label-distribution attack, no images
            _set_score(row, got.score)
        row.reconstruction_file = got.path
    except Exception as err:  # record the failed attack as an error row
        text = _error_text(err)
        row.status, row.error = "error", f"{row.error}; then {text}" if row.error else text
        _log_traceback(err)
    row.attack_s = time.perf_counter() - ta


def diverged_text(err: DivergedError, attack_round: int | None) -> str:
    return f"{_error_text(err)} ({ATTACKED_BEFORE} {attack_round}, sent before it)"


def _set_score(row: Result, score) -> None:
    row.psnr, row.ssim, row.mse = score.psnr, score.ssim, score.mse
    row.psnr_affine, row.psnr_augmented = score.psnr_affine, score.psnr_augmented
    row.label_acc, row.n_images = score.label_acc, score.num_images


def _worst_case_row(rows: Results, score, names: list[str]) -> Result:
    """The run's ``worst-case`` row: utility and accounting as every row of the run, the
    leakage of the best attack per victim, which one in ``worst_of``."""
    first = rows[0]
    row = replace(
        first,
        attack=WORST_CASE,
        worst_of=",".join(names),
        guess_identified=None,
        label_dist_error=None,
        reconstruction_file=None,
        status="ok",
        error=None,
        attack_s=sum(r.attack_s or 0.0 for r in rows if r.attack in set(names)),
    )
    _set_score(row, score)
    return row


def _log_traceback(err: BaseException) -> None:
    if isinstance(err, (PrivbenchError, AttackDivergedError)):
        return  # a known, explained failure: the row's message says it all

    # The row carries the message; the traceback goes to stderr for whoever debugs it.
    log.warning("trial failed:\n%s", traceback.format_exc())
