"""Which of a sweep's points run, and in which tasks: the points still pending, the
points to run again as one training (``--rejoin``), grouped by training."""

from __future__ import annotations

from typing import Any

from privbench.results.store import settled

Point = Any  # privbench.results.sweep.Point (imported by sweep: no import back)


def together(points: list[Point]) -> list[list[Point]]:
    """Points that train the same and differ in their attacks (a grid's companion cases),
    as one task each: trained once (``pipeline.run_shared``), in first-point order."""
    from privbench.pipeline import training_hash

    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(training_hash(p.config), []).append(p)
    return list(groups.values())


def settled_attacks(out: str) -> dict[str, set[str]]:
    """The attacks with a settled row in ``out`` (ok, or diverged: a rerun diverges
    again), by configuration hash."""
    from privbench.results import ResultStore

    ok: dict[str, set[str]] = {}
    for r in ResultStore(out).read():
        if settled(r):
            ok.setdefault(r["config_hash"], set()).add(r["attack"])
    return ok


def pending(points: list[Point], out: str) -> list[Point]:
    ok = settled_attacks(out)
    return [p for p in points if not set(p.attacks) <= ok.get(p.config_hash, set())]


def rejoined(points: list[Point], out: str) -> list[Point]:
    """The points whose training has stored runs that disagree on accuracy (companion
    runs made on machines whose float rounding differs, :func:`companions.split_trainings`),
    with every other point of that training: run again as one training, their new rows
    replace the old (``report.latest``)."""
    from privbench.results import ResultStore
    from privbench.results.companions import split_trainings

    # Only the grid's own runs: a stored run of a configuration the grid no longer holds
    # (an attack list changed since) is never run again, so it cannot be rejoined, and
    # its accuracy must not send the grid's points round again and again.
    ours = {p.config_hash for p in points}
    split = split_trainings(r for r in ResultStore(out).read() if r.get("config_hash") in ours)
    again = set()
    for group in together(points):
        if any(p.config_hash in split for p in group):
            again |= {p.index for p in group}
    return [p for p in points if p.index in again]
