"""Hardening: bad input, failing user code, malformed result files and meaningless
combinations end as one-line errors (exit 2 or a PrivbenchError), never as a traceback
or as a result row with ``status="ok"``. Cases are generated (hypothesis)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import types

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import privbench
from privbench import AttackConfig, FedConfig, RunConfig, registries
from privbench.cli.main import main
from privbench.errors import DivergedError, PrivbenchError
from privbench.testing import tiny_config

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
NON_FINITE = st.sampled_from([math.inf, -math.inf, math.nan])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert err.startswith("privbench: error: ") and "\n" not in err, err
    return err


# -- 1. non-finite or meaningless numbers -----------------------------------------------

FLOAT_PARAMS = [
    (kind, name, p)
    for kind, reg in registries().items()
    for name in reg.names()
    for p in reg.entry(name).params
    if p.type is float and not p.allow_inf
]


@SETTINGS
@given(st.sampled_from(FLOAT_PARAMS), NON_FINITE)
def test_no_plugin_float_parameter_takes_nan_or_infinity(spec, value):
    kind, name, p = spec
    with pytest.raises(PrivbenchError, match=f"'{p.name}' parameter of {kind} '{name}'"):
        registries()[kind].resolve_params(name, {p.name: value})


CONFIG_FLOATS = [
    (part, f.name)
    for part, cls in (("fed", FedConfig), ("attack", AttackConfig))
    for f in dataclasses.fields(cls)
    if f.type in ("float", "float | None")
]


@SETTINGS
@given(st.sampled_from(CONFIG_FLOATS), NON_FINITE)
def test_no_config_float_field_takes_nan_or_infinity(field, value):
    part, name = field
    cfg = tiny_config(**{part: {name: value}})
    with pytest.raises(PrivbenchError, match=f"'{name}' parameter") as err:
        cfg.resolve()
    assert "\n" not in str(err.value)


WRONG_TYPES = st.one_of(
    st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2), st.just(object())
)


@SETTINGS
@given(
    st.sampled_from(
        [
            ("fed", "clients"),
            ("fed", "rounds"),
            ("fed", "fraction"),
            ("fed", "batch_size"),
            ("attack", "victims"),
            ("attack", "round"),
            ("top", "seed"),
        ]
    ),
    WRONG_TYPES,
)
def test_wrong_field_types_are_parameter_errors(field, value):
    part, name = field
    if isinstance(value, bool) and name == "fraction":
        value = "x"  # a bool is refused everywhere; keep the case meaningful
    cfg = tiny_config(**({name: value} if part == "top" else {part: {name: value}}))
    with pytest.raises(PrivbenchError, match=f"'{name}' parameter"):
        privbench.run(cfg)


@pytest.mark.parametrize("bad", [{"method": "fedavg"}, "fedavg", 3, FedConfig()])
def test_run_refuses_what_is_not_a_config(bad):
    with pytest.raises(PrivbenchError, match="'config' argument of privbench.run"):
        privbench.run(bad)


class _Overflowing(torch.nn.Module):
    """Weights so large that the first step's output overflows: training diverges."""

    def __init__(self, shape, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(math.prod(shape), num_classes)
        torch.nn.init.constant_(self.fc.weight, 3e38)

    def forward(self, x):
        return self.fc(x.flatten(1)) * 1e10


def test_a_diverged_run_is_an_error_row_not_an_accuracy(tmp_path):
    rows = privbench.run(
        tiny_config(attack={"names": ("dlg",)}), model=_Overflowing, out=str(tmp_path)
    )
    assert [r.status for r in rows] == ["error"]
    assert "diverged" in rows[0].error and rows[0].accuracy is None
    stored = privbench.ResultStore(str(tmp_path)).read()
    assert [r["status"] for r in stored] == ["error"]


def test_a_run_that_diverges_after_its_attacked_round_still_records_the_attacks(
    tmp_path, monkeypatch
):
    """The adversary received round 0's messages before training diverged in round 1:
    the attacks run on them and score what the same run that did not diverge scores;
    every row stays an error row (no accuracy) that says so, and settles its point, as
    does the same run through ``run_shared``."""
    import privbench.engine.experiment as experiment
    from privbench.pipeline import run_shared
    from privbench.results.store import settled

    cfg = tiny_config(attack=dict(names=("idlg", "dlg"), params={"iters": 2}))
    clean = {r.attack: r for r in privbench.run(cfg)}
    assert set(clean) == {"idlg", "dlg", "worst-case"} and clean["dlg"].status == "ok"

    def diverge_in_round_1(state, rnd, lr):
        if rnd == 1:
            raise DivergedError("Training diverged in round 1: (a test's)")

    monkeypatch.setattr(experiment, "check_finite_state", diverge_in_round_1)
    out = tmp_path / "run"
    rows = {r.attack: r for r in privbench.run(cfg, out=str(out))}
    assert set(rows) == set(clean)
    for name, row in rows.items():
        assert row.status == "error" and row.accuracy is None and row.bytes_up is None
        assert row.error.startswith("DivergedError: Training diverged in round 1")
        assert "the attacks ran on the messages of round 0, sent before it" in row.error
        assert row.psnr == clean[name].psnr and row.ssim == clean[name].ssim
    assert rows["worst-case"].worst_of == clean["worst-case"].worst_of
    stored = privbench.ResultStore(str(out)).read()
    assert len(stored) == 3 and all(settled(r) for r in stored)
    assert privbench.ResultStore(str(out)).finished_hashes() == {cfg.resolve().hash()}
    [shared] = run_shared([cfg], store=privbench.ResultStore(str(tmp_path / "shared")))
    assert [(r.attack, r.status, r.psnr) for r in shared] == [
        (r.attack, r.status, r.psnr) for r in rows.values()
    ]
    # No attack: no victim's message to attack, an error row as before.
    [row] = privbench.run(tiny_config(), out=str(tmp_path / "none"))
    assert row.status == "error" and "attacks ran" not in row.error


def test_a_diverged_attack_row_from_before_attacks_ran_on_it_is_retried():
    """Rows written before a run that diverged after its attacked round got its attacks'
    scores do not settle their point (a rerun scores them); the rest still do."""
    from privbench.engine.federated import check_finite_state
    from privbench.results.store import settled

    # The round is read from the loop's own message: built by the loop, not by hand.
    with pytest.raises(DivergedError) as raised:
        check_finite_state({"w": torch.tensor([float("nan")])}, 2, 0.1)
    old = f"DivergedError: {raised.value}"
    row = {"status": "error", "attack": "dlg", "attack_round": 0, "error": old}
    assert not settled(row)
    assert not settled({**row, "attack_round": 2})  # diverged after the upload
    assert settled({**row, "attack_round": 3})  # diverged before the attacked round
    assert settled({**row, "attack": "none"})  # no attack to run
    assert settled({**row, "attack_round": None})  # a row that does not say
    new = old + " (the attacks ran on the messages of round 0, sent before it)"
    assert settled({**row, "error": new})
    assert settled({**row, "error": new + "; then PrivbenchError: NaN or infinite"})


@SETTINGS
@given(NON_FINITE, st.integers(0, 3))
def test_an_attack_refuses_a_non_finite_update(value, where):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    grads = [torch.zeros_like(p) for p in model.parameters()]
    grads[where % len(grads)].view(-1)[0] = value
    with pytest.raises(PrivbenchError, match="NaN or infinite"):
        privbench.attack_update(model, grads, input_shape=(1, 8, 8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"update_or_gradient": [torch.zeros(3)]}, "has 1 tensors but the model has 2"),
        ({"update_or_gradient": "grads"}, "must be a dict"),
        ({"update_or_gradient": [torch.zeros(10, 64), torch.zeros(9)]}, "shaped"),
        ({"model": "lenet"}, "'model' argument of attack_update"),
        ({"input_shape": (3, 5, 5)}, "fails on an input shaped"),
    ],
)
def test_attack_update_misuse_is_a_privbench_error(kwargs, message):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    args = {
        "model": model,
        "update_or_gradient": [torch.zeros_like(p) for p in model.parameters()],
        "input_shape": (1, 8, 8),
        **kwargs,
    }
    with pytest.raises(PrivbenchError, match=message):
        privbench.attack_update(args.pop("model"), args.pop("update_or_gradient"), **args)


# -- 2. user code that fails -------------------------------------------------------------

EXCEPTIONS = st.sampled_from([ValueError, RuntimeError, KeyError, ZeroDivisionError, OSError])
NOT_MODULES = st.one_of(st.integers(), st.text(max_size=4), st.none(), st.just({"a": 1}))


@pytest.fixture
def user_module(monkeypatch):
    module = types.ModuleType("privbench_user_code")
    monkeypatch.setitem(sys.modules, "privbench_user_code", module)
    return module


_names = iter(range(10**6))


def _attach(module, fn) -> str:
    """``fn`` under a fresh name of ``module`` (imported callables are cached by name)."""
    name = f"fn{next(_names)}"
    setattr(module, name, fn)
    return f"privbench_user_code:{name}"


def _load(**_):
    g = torch.Generator().manual_seed(0)
    return torch.rand(60, 1, 8, 8, generator=g), torch.arange(60) % 3


@SETTINGS
@given(EXCEPTIONS, st.text(min_size=1, max_size=20).filter(lambda t: "\n" not in t))
def test_a_dataset_loader_that_raises_is_one_line(user_module, capsys, exc, text):
    def load(**_):
        raise exc(text)

    spec = _attach(user_module, load)
    assert main(["run", "fedavg", "--dataset", spec, "--no-save"]) == 2
    err = one_line_error(capsys)
    assert "--dataset" in err and spec in err and exc.__name__ in err


@SETTINGS
@given(EXCEPTIONS)
def test_a_model_factory_that_raises_is_one_line(user_module, capsys, exc):
    def make(shape, num_classes):
        raise exc("no")

    argv = ["run", "fedavg", "--dataset", _attach(user_module, _load), "--no-save"]
    assert main([*argv, "--model", _attach(user_module, make)]) == 2
    err = one_line_error(capsys)
    assert "--model" in err and exc.__name__ in err


@SETTINGS
@given(NOT_MODULES)
def test_a_model_factory_returning_no_module_is_one_line(user_module, capsys, value):
    argv = ["run", "fedavg", "--dataset", _attach(user_module, _load), "--no-save"]
    assert main([*argv, "--model", _attach(user_module, lambda shape, num_classes: value)]) == 2
    assert "must return a torch.nn.Module" in one_line_error(capsys)


def test_a_module_that_fails_on_import_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_user_mod.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["run", "fedavg", "--dataset", "broken_user_mod:load", "--no-save"]) == 2
    assert "half written" in one_line_error(capsys)


def test_traceback_flag_shows_the_full_traceback(user_module, capsys):
    def load(**_):
        raise RuntimeError("deep")

    argv = ["run", "fedavg", "--dataset", _attach(user_module, load), "--no-save"]
    assert main([*argv, "--traceback"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: deep" in err


def test_a_corrupt_image_in_an_imagefolder_is_one_line(tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("L", (8, 8), color=40 * i).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "b" / "3.png").write_bytes(b"\x89PNG not really")
    argv = ["run", "fedavg", "--dataset", "imagefolder", "--data-root", str(tmp_path)]
    assert main([*argv, "--no-save", "--clients", "2"]) == 2
    assert "cannot read image" in one_line_error(capsys)


# -- 3. result files with lines that are not rows ----------------------------------------

NOT_ROWS = st.one_of(
    st.text(max_size=30).filter(lambda t: "\n" not in t and t.strip()),
    st.lists(st.integers(), max_size=3).map(json.dumps),
    st.integers().map(json.dumps),
    st.dictionaries(st.sampled_from(["a", "method", "status"]), st.integers(), max_size=2).map(
        json.dumps
    ),
)


@pytest.fixture(scope="module")
def good_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    privbench.run(tiny_config(attack={"names": ("dlg",)}, dataset_params={}), out=str(out))
    return (out / "results.jsonl").read_text().splitlines()


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(NOT_ROWS, min_size=1, max_size=6), st.randoms())
@example(junk=["0\r0"], rnd=random.Random(0))  # found by Hypothesis: "\r" is not a row end
def test_commands_skip_lines_that_are_not_rows_with_one_warning(
    good_rows, tmp_path_factory, capsys, junk, rnd
):
    folder = tmp_path_factory.mktemp("junk")
    lines = [*good_rows, *junk]
    rnd.shuffle(lines)
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    not_rows = [x for x in junk if not _is_row(x)]
    for argv in (
        ["table", str(folder)],
        ["baseline", str(folder), "-o", str(folder / "b.json")],
        ["check", str(folder), "--baseline", str(folder / "b.json")],
        ["plot", str(folder), "--kind", "frontier", "--out", str(folder / "f.png")],
    ):
        assert main(argv) == 0, argv
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        warnings = [x for x in err.splitlines() if x.startswith("privbench: warning: ")]
        if not_rows:
            assert len(warnings) == 1 and f"skipped {len(not_rows)} line(s)" in warnings[0]
        else:
            assert warnings == []


def _is_row(line: str) -> bool:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and {"method", "attack", "status", "config_hash"} <= set(obj)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.npz", "a/../../b.npz", ""])
def test_a_row_cannot_name_a_file_outside_its_folder(good_rows, tmp_path, capsys, name):
    row = json.loads(next(x for x in good_rows if '"dlg"' in x))
    row["reconstruction_file"] = name
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    argv = ["plot", str(tmp_path), "--kind", "reconstructions", "--out", str(tmp_path / "r.png")]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "result folder" in err or "No rows with saved reconstructions" in err


# -- 5. combinations with no clear meaning -------------------------------------------------


@pytest.mark.parametrize("method", ["fedavg", "randaugment", "zdac"])
def test_a_defense_with_nothing_to_act_on_is_refused(method):
    with pytest.raises(PrivbenchError, match="nothing to act on"):
        tiny_config(method=method, defenses=("artifact-noise",)).resolve()


def test_artifact_noise_is_accepted_where_something_is_shared():
    tiny_config(method="fedmix", defenses=("artifact-noise",)).resolve()


def test_two_guarantees_of_one_level_are_refused_and_two_levels_warned():
    with pytest.raises(PrivbenchError, match="both give record-level"):
        tiny_config(defenses=("dp-sgd", "dp-sgd")).resolve()
    with pytest.warns(UserWarning, match="epsilon_record, epsilon_client"):
        tiny_config(defenses=("dp-sgd", "client-dp")).resolve()


def test_a_view_the_method_gives_nothing_to_is_named_as_the_view_it_runs():
    """``idlg@copies`` on FedAvg or FedMix runs the method's own (expected) view: the run
    says so in one line; the methods that have what a view models stay silent."""
    import warnings

    with pytest.warns(UserWarning) as caught:
        tiny_config(attack=dict(names=("idlg@copies", "dlg@enumerate", "ig@joint"))).resolve()
    assert [str(w.message) for w in caught] == [
        "attack 'idlg@copies': method 'fedavg' trains on no augmented copies of an image, "
        "so its guess=copies view runs as the expected view.",
        "attack 'dlg@enumerate': method 'fedavg' shares nothing to enumerate, so its "
        "guess=enumerate view runs as the expected view.",
        "attack 'ig@joint': method 'fedavg' mixes no private synthetic samples, so its "
        "synthetic=joint view runs as the estimate view.",
    ]
    with pytest.warns(UserWarning, match="'fedmix' trains on no augmented copies.*expected"):
        tiny_config(method="fedmix", attack=dict(names=("dlg@copies",))).resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method, attack in [("fedavp", "idlg@copies"), ("fedmix", "dlg@enumerate")]:
            tiny_config(method=method, attack=dict(names=(attack,))).resolve()
        tiny_config(method="zdac", attack=dict(names=("ig@joint",))).resolve()
        tiny_config(attack=dict(names=("dlg", "idlg@identity"))).resolve()


def test_run_config_type_check_covers_every_field():
    """Every field of the three config dataclasses has an annotation the checker knows."""
    from privbench.validation import field_problems

    assert field_problems(RunConfig()) == []
