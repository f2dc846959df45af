"""The strongest adversary of a run: attack variants (NAME@GUESS), ``all-gradient`` and the
worst-case row, which takes per victim the attack that leaked most."""

from __future__ import annotations

import pytest

import privbench
from privbench import registries
from privbench.adversary import expand_attacks
from privbench.errors import PrivbenchError
from privbench.evaluation.attacking import AttackScores, worst_case
from privbench.evaluation.metrics import LeakageScore
from privbench.results.report import summarize
from tests.conftest import tiny_config


def _score(psnr: float, n: int = 1) -> LeakageScore:
    return LeakageScore(psnr, psnr / 100, 1 / psnr, 1.0, (psnr,) * n, n, psnr + 1)


def _achieved(*per_victim: float) -> AttackScores:
    return AttackScores(None, None, None, None, [_score(p) for p in per_victim])


def test_worst_case_takes_each_victims_best_attack_by_hand():
    got = worst_case(
        {"dlg": _achieved(10.0, 40.0, 5.0), "ig": _achieved(30.0, 20.0, 5.0), "x": _achieved()}
    )
    assert got is not None
    score, names = got
    assert names == ["ig", "dlg", "dlg"]  # equal PSNR: the attack that ran first
    assert score.psnr == pytest.approx((30 + 40 + 5) / 3)
    assert score.psnr_affine == pytest.approx((31 + 41 + 6) / 3)
    # One attack, or attacks that scored different victims: no worst case.
    assert worst_case({"dlg": _achieved(10.0)}) is None
    assert worst_case({"dlg": _achieved(10.0), "ig": _achieved(1.0, 2.0)}) is None


def test_worst_case_counts_the_augmented_copy_an_attack_rebuilt():
    """An attack that rebuilt the augmented copy the victim trained on (low PSNR to the
    private image, high to the copy) leaked more than one that scored a little higher
    against the private image alone: the worst case takes it (metrics.leaked_db)."""
    from dataclasses import replace

    copy = AttackScores(None, None, None, None, [replace(_score(8.0), psnr_augmented=45.0)])
    plain = AttackScores(None, None, None, None, [replace(_score(12.0), psnr_augmented=12.5)])
    score, names = worst_case({"dlg@sigmoid": plain, "dlg@identity": copy})
    assert names == ["dlg@identity"]
    assert (score.psnr, score.psnr_augmented) == (8.0, 45.0)
    # without an augmented score the PSNR decides, as before
    score, names = worst_case({"a": _achieved(12.0), "b": _achieved(8.0)})
    assert names == ["a"]


def test_variant_names_set_the_guess_and_are_validated():
    reg = registries()["attack"]
    assert reg.resolve_params("dlg@enumerate", {"iters": 3})["guess"] == "enumerate"
    assert "dlg@enumerate" in reg and reg.entry("dlg@enumerate") is reg.entry("dlg")
    assert reg.resolve_params("ig@joint", {})["synthetic"] == "joint"
    with pytest.raises(PrivbenchError, match="'@everything' is not a variant.*@enumerate"):
        reg.resolve_params("dlg@everything", {})
    assert reg.resolve_params("idlg@sigmoid", {})["box"] == "sigmoid"
    with pytest.raises(PrivbenchError, match="'@sigmoid' is not a variant of 'ig'"):
        reg.resolve_params("ig@sigmoid", {})
    with pytest.raises(PrivbenchError, match="'averaged-data' has no variants"):
        reg.entry("averaged-data@enumerate")


def test_all_gradient_expands_to_every_gradient_attack_and_the_guesses_that_apply():
    assert expand_attacks(("all-gradient",), "fedavg") == ("dlg", "idlg", "ig", "ig-inversefed")
    assert expand_attacks(("all-gradient",), "zdac")[:2] == ("dlg", "dlg@joint")
    # FedAvP's view applies image ops: the L-BFGS attacks (not IG) also run in the box.
    # FedAvP's identity and copies guesses (what rebuilds its victims) run for every one.
    assert expand_attacks(("all-gradient",), "fedavp") == (
        "dlg",
        "dlg@sigmoid",
        "dlg@identity",
        "dlg@copies",
        "idlg",
        "idlg@sigmoid",
        "idlg@identity",
        "idlg@copies",
        "ig",
        "ig@identity",
        "ig@copies",
        "ig-inversefed",
        "ig-inversefed@identity",
        "ig-inversefed@copies",
    )
    assert expand_attacks(("averaged-data", "all-gradient", "dlg"), "fedmix") == (
        "averaged-data",
        "dlg",
        "dlg@enumerate",
        "idlg",
        "idlg@enumerate",
        "ig",
        "ig@enumerate",
        "ig-inversefed",
        "ig-inversefed@enumerate",
    )
    # A plugin's namespaced parameter reaches its variants too.
    cfg = tiny_config(method="fedmix", attack=dict(names=("all-gradient",)))
    cfg = cfg.with_params({"dlg.iters": 4, "ig": {"iters": 6}}).resolve()
    params = cfg.attack.params
    assert params["dlg"]["iters"] == params["dlg@enumerate"]["iters"] == 4
    assert params["ig@enumerate"]["iters"] == 6 and params["ig@enumerate"]["guess"] == "enumerate"


@pytest.mark.slow
def test_all_gradient_run_writes_a_worst_case_row_at_least_as_strong_as_each_attack(tmp_path):
    cfg = tiny_config(method="fedmix", attack=dict(names=("all-gradient",), victims=2))
    cfg = cfg.with_params(
        {"dlg.iters": 30, "idlg.iters": 30, "ig.iters": 60, "ig-inversefed.iters": 60}
        | {f"{a}.restarts": 1 for a in ("dlg", "idlg", "ig")}
    )
    rows = privbench.run(cfg, out=str(tmp_path))
    by = {r.attack: r for r in rows}
    assert list(by) == [*expand_attacks(("all-gradient",), "fedmix"), "worst-case"]
    assert all(r.status == "ok" for r in rows), [r.error for r in rows]
    worst = by["worst-case"]
    winners = worst.worst_of.split(",")
    assert len(winners) == 2 and set(winners) <= set(by) - {"worst-case"}
    # Equal images per victim: the pooled best-per-victim is >= every attack's pool,
    # the mean-guess DLG row included (by construction).
    for name, row in by.items():
        assert worst.psnr >= row.psnr - 1e-9, name
    assert worst.accuracy == by["dlg"].accuracy and worst.config_hash == by["dlg"].config_hash
    # The table shows the worst case for this run's gradient attacks unless asked.
    shown = summarize(rows, by=("attack",), metrics=("psnr",))
    assert list(shown["attack"]) == ["worst-case"]
    every = summarize(rows, by=("attack",), metrics=("psnr",), all_attacks=True)
    assert len(every) == len(rows)


def test_parameters_added_later_leave_earlier_hashes_alone():
    """Hashes of this session's start (commit 42aadd7, its plugins included), before
    the DLG/iDLG box and client-dp's target_epsilon existed: stores recorded then still
    resume. A non-default value is a new configuration."""
    from privbench import AttackConfig, RunConfig

    def hashed(**kw):
        return RunConfig(**kw).resolve().hash()

    attacks = AttackConfig(names=("dlg", "idlg@enumerate"))
    assert hashed(attack=attacks) == "5284dc1838aea2a0"
    assert hashed(defenses=("client-dp",)) == "9a40a3717c64d284"
    boxed = AttackConfig(names=("dlg@sigmoid", "idlg@enumerate"))
    assert hashed(attack=boxed) != hashed(attack=attacks)
    calibrated = {"client-dp": {"target_epsilon": 8.0}}
    assert hashed(defenses=("client-dp",), defense_params=calibrated) != "9a40a3717c64d284"
