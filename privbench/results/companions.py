"""Companion runs: the same training attacked by other attacks in a second run (a grid
case added to points already measured). The report takes a point's worst case over
them (:func:`merge_runs`, called by ``report.worst_case_view``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def without_attackers(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict with the attacks' names and parameters left out (the attacked
    round, batch, steps, victims and threat kept): what the run trained."""
    config = dict(config)
    attack = config.get("attack") or {}
    config["attack"] = {k: v for k, v in attack.items() if k not in ("names", "params")}
    return config


def _without_attackers(row: Mapping[str, Any]) -> dict[str, Any]:
    return {**row, "config": without_attackers(row.get("config") or {})}


def training_key(row: Mapping[str, Any]) -> str:
    """What a run trained and which messages its attacks received, seed included: two
    runs with the same key trained the same model and attacked the same victims. Hashed
    as the configuration hash is (``confighash.config_hash``), so a case written before
    a field was added joins a companion that carries the field at the value the case
    ran with."""
    import copy

    from privbench.confighash import config_hash

    config = copy.deepcopy(without_attackers(row.get("config") or {}))
    config.setdefault("fed", {})
    return f"{config_hash(config)}-{config.get('seed')}"


def leaked(row: Mapping[str, Any]) -> float | None:
    """A row's leakage in dB (``metrics.leaked_db`` of its ``psnr`` and
    ``psnr_augmented``): what a worst case maximises, the tables' `victims > 30 dB`."""
    from privbench.evaluation.metrics import leaked_db

    return leaked_db(row.get("psnr"), row.get("psnr_augmented"))


def split_trainings(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """The configuration hashes of runs of one training (:func:`training_key`) that do
    not all report the same accuracy: runs made apart on machines whose float rounding
    differs (training is deterministic on one machine, its CPU, versions and threads),
    which :func:`merge_runs` cannot join. Latest rows (``report.latest``), ok ones."""
    from privbench.results.report import latest

    runs: dict[str, dict[str, Any]] = {}
    for r in latest(rows):
        if r.get("status", "ok") == "ok" and r.get("accuracy") is not None and r.get("config"):
            runs.setdefault(training_key(r), {})[str(r.get("config_hash"))] = r["accuracy"]
    return {h for group in runs.values() if len(set(group.values())) > 1 for h in group}


def gradient_groups(rows: list[Mapping[str, Any]], gradient: set[str]) -> dict[str, list[int]]:
    """The indices of ``rows``' scored gradient rows (a gradient attack's or a
    worst-case row, ok, with a PSNR) by :func:`training_key`."""
    from privbench.adversary import WORST_CASE

    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        attack = str(r.get("attack"))
        if r.get("status", "ok") != "ok" or r.get("psnr") is None or not r.get("config"):
            continue
        if attack == WORST_CASE or attack.partition("@")[0] in gradient:
            groups.setdefault(training_key(r), []).append(i)
    return groups


def merge_runs(rows: list[dict[str, Any]], gradient: set[str]) -> list[dict[str, Any]]:
    """One worst-case row where several runs of one training (:func:`training_key`)
    split a point's gradient attacks between them (a grid's companion case adding an
    attack to points already measured): per victim, the attack that leaked most over
    all of them (``metrics.leaked_db``), as a run's own worst-case row takes it. Merged
    only when the runs name different attacks (runs of one attack at other parameters
    are a comparison, left apart), each attacked one victim (rows keep pooled scores,
    not each victim's) and every run reports the same accuracy (the trainings really
    were the same; if not, a warning and the rows as they are). The merged row is the
    winner's, with ``attack`` ``worst-case``, ``worst_of`` its attack and
    ``merged_runs`` the runs' hashes."""
    import warnings

    from privbench.adversary import WORST_CASE
    from privbench.results.report import experiment_id

    merged: dict[int, dict[str, Any] | None] = {}
    for idx in gradient_groups(rows, gradient).values():
        group = [rows[i] for i in idx]
        by_run = {str(r.get("config_hash")): r for r in group}
        runs = sorted(by_run)
        if len(runs) < 2 or any(r.get("victims") != 1 for r in group):
            continue
        names = [
            n for r in by_run.values() for n in (r["config"].get("attack") or {}).get("names", ())
        ]
        if len(names) != len(set(names)):  # the same attack at other parameters: compared
            continue
        accuracies = {r.get("accuracy") for r in group}
        if len(accuracies) > 1:
            cpus = sorted({str((r.get("versions") or {}).get("cpu", "?")) for r in group})
            where = (
                f"made on {' and '.join(cpus)}"
                if len(cpus) > 1 and "?" not in cpus
                else "made on machines whose float rounding differs?"
            )
            warnings.warn(
                f"runs {', '.join(runs)} share a training configuration but not their "
                f"accuracy ({', '.join(map(str, sorted(accuracies, key=str)))}; {where}): "
                "their gradient attacks are shown apart, not as one worst case; "
                "`privbench sweep GRID --rejoin` runs them again as one training",
                stacklevel=3,
            )
            continue
        # max keeps the first of equals
        best = max(group, key=leaked)  # every row of a group has a PSNR
        winner = best.get("worst_of") if best.get("attack") == WORST_CASE else best["attack"]
        row = {**best, "attack": WORST_CASE, "worst_of": winner, "merged_runs": runs}
        row["experiment"] = experiment_id(_without_attackers(best))  # the same for every seed
        merged.update({i: None for i in idx})
        merged[min(idx)] = row
    out = []
    for i, r in enumerate(rows):
        if i not in merged:
            out.append(r)
        elif merged[i] is not None:
            out.append(merged[i])
    return out


def rechosen(
    rows: list[dict[str, Any]], view: list[dict[str, Any]], gradient: set[str]
) -> list[dict[str, Any]]:
    """``view`` (``report.worst_case_view``'s rows, a run's worst-case row standing for
    its gradient attacks) with the worst-case row of each run that attacked one victim
    chosen again from that run's own gradient rows in ``rows`` by ``metrics.leaked_db``,
    where that finds one that leaked more: a row written before the worst case counted
    the augmented copy a client trained on was chosen by PSNR to the private image."""
    from privbench.adversary import WORST_CASE

    def leak(r: Mapping[str, Any]) -> float:
        value = leaked(r)
        return float("-inf") if value is None else value

    own: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok" and str(r.get("attack")).partition("@")[0] in gradient:
            own.setdefault(str(r.get("config_hash")), []).append(r)
    out = []
    for r in view:
        runs = own.get(str(r.get("config_hash")), [])
        if r.get("attack") == WORST_CASE and r.get("victims") == 1 and runs:
            best = max(runs, key=leak)  # max keeps the first of equals
            if leak(best) > leak(r):
                r = {**r, **best, "attack": WORST_CASE, "worst_of": best["attack"]}
        out.append(r)
    return out
