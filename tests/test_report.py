"""Tables over seeds, baselines and regression checks: hand-worked rows, the three output
formats, exit codes, and the pytest helper on a real deterministic run."""

import json

import pytest

import privbench
from privbench.cli import main
from privbench.errors import ParameterError
from privbench.results import ResultStore
from privbench.results.report import check, format_table, make_baseline, summarize
from privbench.testing import assert_no_leakage_regression
from tests.conftest import tiny_config


def _row(seed, psnr, acc, *, status="ok", method="fedavg", defense="none", sigma=None):
    config = {"method": method, "defenses": [defense], "seed": seed, "sigma": sigma}
    return {
        "method": method,
        "attack": "dlg",
        "defense": defense,
        "threat": "server",
        "dataset": "digits",
        "partition": "iid",
        "model": "lenet-sigmoid",
        "algorithm": "fedavg",
        "rounds": 2,
        "clients": 4,
        "attack_batch": 1,
        "victim_steps": 1,
        "seed": seed,
        "status": status,
        "accuracy": acc if status == "ok" else None,
        "psnr": psnr if status == "ok" else None,
        "ssim": 0.5 if status == "ok" else None,
        "bytes_up": 2**20,
        "epsilon": None,
        "config_hash": f"{method}-{defense}-{sigma}-{seed}",
        "config": config,
    }


ROWS = [
    _row(0, 30.0, 0.8),
    _row(1, 40.0, 0.6),
    _row(2, None, None, status="error"),
    _row(0, 10.0, 0.7, defense="prune"),
]
CLEAN = [r for r in ROWS if r["status"] == "ok"]


def test_summary_is_mean_and_population_std_with_errors_counted():
    s = summarize(ROWS, by=("method", "defense"), metrics=("psnr", "accuracy", "bytes_up"))
    first = s.iloc[0]
    assert (first["method"], first["defense"], first["runs"], first["errors"]) == (
        "fedavg",
        "none",
        2,
        1,
    )
    assert first["psnr_mean"] == pytest.approx(35.0) and first["psnr_std"] == pytest.approx(5.0)
    assert first["accuracy_mean"] == pytest.approx(0.7)
    assert list(s["defense"]) == ["none", "prune"]  # first-seen order


def test_a_rerun_replaces_the_error_row_of_the_same_config():
    fixed = [*ROWS, _row(2, 50.0, 0.7)]
    s = summarize(fixed, by=("defense",), metrics=("psnr",))
    assert s.iloc[0]["runs"] == 3 and s.iloc[0]["errors"] == 0
    assert s.iloc[0]["psnr_mean"] == pytest.approx(40.0)


def test_formats_carry_units_and_values():
    s = summarize(ROWS, by=("defense",), metrics=("psnr", "bytes_up"))
    md = format_table(s, ("psnr", "bytes_up"), "md").splitlines()
    assert md[0] == "| defense | runs | errors | PSNR (dB) | up (MiB) |"
    assert md[2] == "| none | 2 | 1 | 35.00 ± 5.00 | 1.000 ± 0.000 |"
    assert md[3] == "| prune | 1 | 0 | 10.00 | 1.000 |"
    csv = format_table(s, ("psnr", "bytes_up"), "csv").splitlines()
    assert csv[0] == "defense,runs,errors,PSNR (dB) mean,PSNR (dB) std,up (MiB) mean,up (MiB) std"
    assert csv[1] == "none,2,1,35.0,5.0,1.0,0.0"
    tex = format_table(s, ("psnr",), "latex")
    assert r"\begin{tabular}{lrrr}" in tex and r"35.00 $\pm$ 5.00 \\" in tex


def test_every_row_metric_of_the_strongest_attacker_and_each_privacy_level_is_a_column():
    rows = [
        {**r, "psnr_affine": r["psnr"] + 1, "epsilon_record": 2.0, "guess_identified": 0.5}
        for r in CLEAN
    ]
    metrics = ("psnr_affine", "epsilon_record", "epsilon_client", "guess_identified")
    md = format_table(summarize(rows, by=("defense",), metrics=metrics), metrics).splitlines()
    assert md[0] == (
        "| defense | runs | errors | PSNR affine (dB) | ε record | ε client | guess identified |"
    )
    assert md[2] == "| none | 2 | 0 | 36.00 ± 5.00 | 2.00 ± 0.00 | - | 0.50 ± 0.00 |"


def test_unknown_metric_and_column_list_the_valid_ones():
    with pytest.raises(ParameterError, match="Unknown metric 'psnrr'.*psnr"):
        summarize(ROWS, metrics=("psnrr",))
    with pytest.raises(ParameterError, match="Unknown grouping column 'meth'"):
        summarize(ROWS, by=("meth",))


def test_check_flags_leakage_rise_accuracy_fall_missing_and_errors():
    base = make_baseline(CLEAN)
    assert len(base["groups"]) == 2  # sigma/defense differ: separate experiments
    assert check(CLEAN, base).ok
    leakier = [dict(r, psnr=r["psnr"] + 2 if r["psnr"] else None) for r in CLEAN]
    report = check(leakier, base, psnr_tol=1.0)
    assert not report.ok and "psnr rose 35.000 -> 37.000" in report.text()
    assert check(leakier, base, psnr_tol=2.5).ok
    worse = [dict(r, accuracy=r["accuracy"] - 0.05 if r["accuracy"] else None) for r in CLEAN]
    assert "accuracy fell" in check(worse, base).text()
    missing = check(CLEAN[:2], base)
    assert "in the baseline but not in the results" in missing.text()
    failing = check([*CLEAN, _row(3, 0.0, 0.0, status="error")], base)
    assert "error row" in failing.text()
    extra = check([*CLEAN, _row(0, 1.0, 0.1, method="fedmix")], base)
    assert extra.ok and "new experiment" in extra.text()


def test_cli_table_baseline_check_exit_codes(tmp_path, capsys):
    store = ResultStore(str(tmp_path / "r"))
    store.append(CLEAN)
    assert main(["table", store.directory, "--by", "defense", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("defense,runs,errors,accuracy mean")
    base = tmp_path / "base.json"
    assert main(["baseline", store.directory, "-o", str(base)]) == 0
    assert json.loads(base.read_text())["privbench_baseline"] == 1
    assert main(["check", store.directory, "--baseline", str(base)]) == 0
    bad = ResultStore(str(tmp_path / "bad"))
    bad.append([dict(r, psnr=r["psnr"] + 5) for r in CLEAN])
    capsys.readouterr()
    assert main(["check", bad.directory, "--baseline", str(base)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["table", str(tmp_path / "nowhere")]) == 2


def test_pytest_helper_on_a_real_deterministic_run():
    cfg = tiny_config(attack=dict(names=("dlg",), params={"iters": 3}))
    base = make_baseline(privbench.run(cfg))
    assert_no_leakage_regression(privbench.run(cfg), base)  # deterministic: same numbers
    # Had yesterday's code leaked 5 dB less, today's run is a regression.
    stricter = dict(base, groups=[dict(g, psnr=g["psnr"] - 5.0) for g in base["groups"]])
    with pytest.raises(AssertionError, match="psnr rose"):
        assert_no_leakage_regression(privbench.run(cfg), stricter)


def test_the_docs_list_every_table_metric():
    from privbench.results.report import METRICS
    from tests.test_docs import render

    text = render("sweeps.md")
    listed = text.split("`--metrics` takes any of", 1)[1].split("(ε per level", 1)[0]
    assert sorted(listed.replace("`", "").replace("\n", " ").replace(" ", "").split(",")) == sorted(
        METRICS
    )


def test_a_config_round_trips_through_its_dict_and_a_row_knows_whether_it_is_current():
    from privbench import RunConfig
    from privbench.results.report import is_current

    cfg = tiny_config(
        model="cnn", defenses=("dp-sgd",), attack={"names": ("dlg", "idlg")}
    ).resolve()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    row = {"config": cfg.to_dict(), "config_hash": cfg.hash()}
    assert is_current(row)
    # a cnn row from before the init option: it ran PyTorch's init, the default is He now
    old = json.loads(json.dumps(row))
    old["config"]["model_params"].pop("weight_init")
    old["config_hash"] = RunConfig.from_dict(
        {
            **old["config"],
            "model_params": {**old["config"]["model_params"], "weight_init": "pytorch"},
        }
    ).hash()
    assert not is_current(old)
    # a row from before the dirichlet's `over` option ran what the default runs today
    part = tiny_config(partition="dirichlet").resolve()
    older = {"config": part.to_dict(), "config_hash": part.hash()}
    older["config"]["partition_params"].pop("over")
    assert is_current(older)
    # data given as an object (a validation split named NAME:SPLIT) is a label, not a plugin
    split = tiny_config(dataset="digits:validation").resolve(provided=frozenset({"dataset"}))
    assert is_current({"config": split.to_dict(), "config_hash": split.hash()})
    assert not is_current({**row, "config_hash": "0" * 16})  # a hash from other code
    gone = json.loads(json.dumps(row))
    gone["config"]["method"] = "a-method-no-longer-registered"
    assert not is_current(gone) and not is_current({"config": {}, "config_hash": "x"})


def test_a_row_at_a_changed_default_is_current_but_not_a_default_run():
    """A cnn row recorded while PyTorch's init was the default carries it explicitly:
    today's code would still write it for that config, but not for the default."""
    from privbench.results.report import is_current, is_default_run

    he = tiny_config(model="cnn").resolve()
    old = tiny_config(model="cnn", model_params={"weight_init": "pytorch"}).resolve()
    lenet = tiny_config().resolve()
    rows = [{"config": c.to_dict(), "config_hash": c.hash()} for c in (he, old, lenet)]
    assert [is_current(r) for r in rows] == [True, True, True]
    assert [is_default_run(r) for r in rows] == [True, False, True]


def test_rows_stored_before_the_clear_upload_rule_are_read_without_a_guarantee():
    from privbench.results.report import load_rows

    note = "; no guarantee: averaged_data, label_counts uploaded outside the mechanism"
    old = {
        "method": "fedmix",
        "attack": "dlg",
        "status": "ok",
        "config_hash": "h",
        "epsilon": 8.0,
        "epsilon_record": 8.0,
        "epsilon_client": None,
        "accountant": "rdp (dp-sgd per client)",
        "bytes_by_kind": {
            "update": {"up": 10, "down": 0},
            "averaged_data": {"up": 5, "down": 5},
            "label_counts": {"up": 1, "down": 0},
            "model": {"up": 0, "down": 10},
        },
    }
    (row,) = load_rows([old])
    assert row["epsilon"] is None and row["epsilon_record"] is None
    assert row["accountant"] == "rdp (dp-sgd per client)" + note
    assert load_rows([row]) == [row]  # read again: the note once
    # only uploads count (a downloaded artifact is the server's), and only with a guarantee
    plain = {**old, "bytes_by_kind": {"update": {"up": 10, "down": 0}, "x": {"up": 0, "down": 3}}}
    assert load_rows([plain]) == [plain]
    none = {**old, "epsilon": None, "epsilon_record": None, "accountant": None}
    assert load_rows([none]) == [none]


def _attack_row(run, attack, psnr, *, names, seed=0, acc=0.9, victims=1, attacked_round=3):
    config = {
        "method": "fedmix",
        "seed": seed,
        "attack": {"names": names, "params": {}, "round": attacked_round, "victims": victims},
    }
    return {
        "method": "fedmix",
        "defense": "none",
        "attack": attack,
        "seed": seed,
        "status": "ok",
        "accuracy": acc,
        "psnr": psnr,
        "victims": victims,
        "config_hash": f"{run}-{seed}",
        "config": config,
        **({"worst_of": "idlg"} if attack == "worst-case" else {}),
    }


def _two_runs(seed=0, dlg=12.0, ig=27.0, **ig_kw):
    """A point measured by the DLG family, then its companion run attacked by IG."""
    names = ["dlg", "idlg", "averaged-data"]
    return [
        _attack_row("dlg-run", "dlg", dlg - 2, names=names, seed=seed),
        _attack_row("dlg-run", "idlg", dlg, names=names, seed=seed),
        _attack_row("dlg-run", "worst-case", dlg, names=names, seed=seed),
        _attack_row("dlg-run", "averaged-data", 14.0, names=names, seed=seed),
        _attack_row("ig-run", "ig", ig, names=["ig"], seed=seed, **ig_kw),
    ]


def test_a_companion_run_of_the_same_training_joins_the_points_worst_case():
    from privbench.results.report import worst_case_view

    view = worst_case_view(_two_runs())
    assert [(r["attack"], r["psnr"]) for r in view] == [
        ("worst-case", 27.0),
        ("averaged-data", 14.0),
    ]
    assert view[0]["worst_of"] == "ig" and view[0]["merged_runs"] == ["dlg-run-0", "ig-run-0"]
    # the DLG family wins another seed: the same experiment id, one row per seed
    other = worst_case_view(_two_runs(seed=1, dlg=40.0))
    assert other[0]["worst_of"] == "idlg" and other[0]["psnr"] == 40.0
    assert other[0]["experiment"] == view[0]["experiment"]
    table = summarize(_two_runs() + _two_runs(seed=1, dlg=40.0), by=("method", "attack"))
    worst = table[table["attack"] == "worst-case"].iloc[0]
    assert worst["runs"] == 2 and worst["psnr_mean"] == pytest.approx(33.5)


def test_a_companion_that_rebuilt_the_augmented_copy_wins_the_merged_worst_case():
    from privbench.results.report import worst_case_view

    rows = _two_runs(dlg=12.0, ig=9.0)
    rows[-1]["psnr_augmented"] = 40.0  # IG rebuilt the copy the victim trained on
    view = worst_case_view(rows)
    assert view[0]["worst_of"] == "ig" and view[0]["psnr_augmented"] == 40.0


def test_a_stored_worst_case_row_is_chosen_again_by_what_leaked_most():
    """A one-victim run whose worst-case row was chosen by PSNR to the private image
    (DLG, 12 dB) while iDLG rebuilt the augmented copy the victim trained on (60 dB):
    the view's worst case is iDLG's. A run of two victims keeps its pooled row."""
    from privbench.results.report import worst_case_view

    def run(run_id, victims):
        names = ["dlg", "idlg"]
        dlg = _attack_row(run_id, "dlg", 12.0, names=names, victims=victims)
        idlg = _attack_row(run_id, "idlg", 9.0, names=names, victims=victims)
        worst = _attack_row(run_id, "worst-case", 12.0, names=names, victims=victims)
        dlg["psnr_augmented"], idlg["psnr_augmented"] = 15.0, 60.0
        worst.update(psnr_augmented=15.0, worst_of="dlg")
        return [dlg, idlg, worst]

    (one,) = worst_case_view(run("one", 1))
    assert (one["attack"], one["worst_of"], one["psnr"], one["psnr_augmented"]) == (
        "worst-case",
        "idlg",
        9.0,
        60.0,
    )
    (two,) = worst_case_view(run("two", 2))
    assert (two["worst_of"], two["psnr_augmented"]) == ("dlg", 15.0)


def test_a_case_written_before_a_later_field_joins_its_companion_that_carries_it():
    """Rows store the config of their day: a case from before the local optimiser and
    the Dirichlet split's ``over`` existed joins a companion that holds them at the
    values the case ran with (the configuration hash leaves those out), and not one at
    another value."""
    from privbench.results.report import worst_case_view

    rows = _two_runs()
    for r in rows[-1:]:
        r["config"]["fed"] = {"optimizer": "sgd", "weight_decay": 0.0}
        r["config"]["partition_params"] = {"alpha": 0.5, "over": "classes"}
    for r in rows[:-1]:
        r["config"]["partition_params"] = {"alpha": 0.5}
    assert [r["attack"] for r in worst_case_view(rows)] == ["worst-case", "averaged-data"]
    rows[-1]["config"]["fed"]["weight_decay"] = 1e-4  # another training
    assert "ig" in [r["attack"] for r in worst_case_view(rows)]


def test_runs_that_did_not_train_the_same_model_stay_apart():
    from privbench.results.report import worst_case_view

    def attacks(rows):
        return sorted(r["attack"] for r in worst_case_view(rows))

    apart = ["averaged-data", "ig", "worst-case"]
    with pytest.warns(UserWarning, match="share a training configuration but not their accuracy"):
        assert attacks(_two_runs(acc=0.5)) == apart
    # runs made on two CPUs (float rounding): the warning names them and the remedy
    rows = _two_runs(acc=0.5)
    for r in rows:
        r["versions"] = {"cpu": "Intel Xeon" if r["config_hash"] == "ig-run-0" else "AMD EPYC"}
    with pytest.warns(UserWarning, match=r"made on AMD EPYC and Intel Xeon.*--rejoin"):
        assert attacks(rows) == apart
    assert attacks(_two_runs(attacked_round=4)) == apart  # another round: another message
    assert (
        attacks(_two_runs(seed=0) + _two_runs(seed=1)) == ["averaged-data"] * 2 + ["worst-case"] * 2
    )  # seeds never merge with each other
    rows = [dict(r, victims=2) for r in _two_runs()]  # pooled scores: no per-victim best
    assert attacks(rows) == apart
    # one attack at two settings (a parameter comparison, not a companion): apart
    longer = _attack_row("dlg-longer", "dlg", 30.0, names=["dlg"])
    longer["config"]["attack"]["params"] = {"dlg": {"iters": 3000}}
    assert attacks([*_two_runs()[:4], longer]) == ["averaged-data", "dlg", "worst-case"]
