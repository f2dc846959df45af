"""Plugin parameters under their plugin's name: CLI (--set / --PLUGIN.PARAM), sweep TOML
tables, the API's nested dict; flat flags where unambiguous."""

from __future__ import annotations

import pytest

import privbench
from privbench.cli.parser import UsageError, build_parser, config_from_args
from privbench.config import AttackConfig, RunConfig
from privbench.errors import ParameterError, PrivbenchError
from privbench.results.sweep import expand
from privbench.testing import tiny_config


def cli_config(*argv: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["run", *argv]))


def test_nested_and_dotted_params_are_the_same():
    base = RunConfig(method="fedmix", attack=AttackConfig(names=("dlg", "ig")))
    nested = base.with_params({"fedmix": {"lam": 0.2}, "dlg": {"iters": 7}})
    dotted = base.with_params({"fedmix.lam": 0.2, "dlg.iters": 7})
    assert nested == dotted
    r = nested.resolve()
    assert r.method_params["lam"] == 0.2
    assert r.attack.params["dlg"]["iters"] == 7
    assert r.attack.params["ig"]["iters"] != 7  # only the plugin named


def test_with_params_keeps_flat_params_of_the_others():
    base = RunConfig(attack=AttackConfig(names=("dlg", "ig"), params={"restarts": 2}))
    r = base.with_params({"ig.iters": 3}).resolve()
    assert r.attack.params["dlg"]["restarts"] == r.attack.params["ig"]["restarts"] == 2
    assert r.attack.params["ig"]["iters"] == 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"naivemix.lam": 0.1}, "'naivemix' is not a plugin of this run"),
        ({"fedmix.lamb": 0.1}, "has no parameter 'lamb' (its parameters: lam,"),
        ({"lam": 0.1}, "must be named PLUGIN.PARAM"),
    ],
)
def test_with_params_says_what_is_wrong(params, message):
    with pytest.raises(ParameterError) as err:
        RunConfig(method="fedmix").with_params(params)
    assert message in str(err.value)


def test_a_namespaced_value_is_validated_with_the_rest():
    cfg = RunConfig(method="fedmix").with_params({"fedmix": {"lam": 2.0}})
    with pytest.raises(PrivbenchError, match="'lam' parameter"):
        cfg.resolve()


def test_cli_namespaced_forms():
    cfg = cli_config(
        "fedmix", "--attack", "dlg", "--attack", "ig",
        "--dlg.iters", "5", "--set", "ig.iters=3", "--fedmix.lam=0.2",
    )  # fmt: skip
    r = cfg.resolve()
    assert (r.attack.params["dlg"]["iters"], r.attack.params["ig"]["iters"]) == (5, 3)
    assert r.method_params["lam"] == 0.2


def test_cli_flat_flag_equals_its_namespaced_form():
    flat = cli_config("fedmix", "--lam", "0.2", "--attack", "dlg", "--iters", "9")
    named = cli_config("fedmix", "--fedmix.lam", "0.2", "--attack", "dlg", "--dlg.iters", "9")
    assert flat.resolve() == named.resolve()
    assert flat.resolve().hash() == named.resolve().hash()


@pytest.mark.parametrize(
    ("argv", "forms"),
    [
        (
            ["fedavg", "--attack", "dlg", "--attack", "ig", "--iters", "5"],
            ["--dlg.iters 5", "--ig.iters 5"],
        ),
        (
            ["fedavg", "--defense", "dp-sgd", "--defense", "client-dp", "--noise-multiplier", "1"],
            ["--dp-sgd.noise-multiplier 1", "--client-dp.noise-multiplier 1"],
        ),
    ],
)
def test_cli_refuses_an_ambiguous_flat_flag(argv, forms):
    with pytest.raises(PrivbenchError) as err:
        cli_config(*argv)
    for form in forms:
        assert form in str(err.value)


def test_cli_bad_namespaced_input():
    with pytest.raises(UsageError, match="PLUGIN.PARAM=VALUE"):
        cli_config("fedmix", "--set", "fedmix.lam")
    with pytest.raises(ParameterError, match="not a plugin of this run"):
        cli_config("fedmix", "--naivemix.lam", "0.1")


def test_cli_entry_reports_ambiguity_in_one_line(capsys):
    from privbench.cli import main

    assert main(["run", "fedavg", "--attack", "dlg", "--attack", "ig", "--iters", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dlg.iters" in err[0]


def test_sweep_plugin_tables_and_dotted_axes():
    grid = {
        "sweep": {"dataset": "digits", "rounds": 1, "attack": "dlg", "dlg": {"iters": 3}},
        "fedmix": {"lam": 0.1},
        "grid": {"method": ["fedavg", "fedmix", "naivemix"], "naivemix": {"lam": [0.05, 0.2]}},
    }
    points, problems = expand(grid)
    assert problems == []
    by_method = {}
    for p in points:
        by_method.setdefault(p.config.method, []).append(p.config)
    # fedavg and fedmix do not have naivemix.lam: one point each, not two copies.
    assert [len(by_method[m]) for m in ("fedavg", "fedmix", "naivemix")] == [1, 1, 2]
    assert by_method["fedmix"][0].method_params["lam"] == 0.1
    assert sorted(c.method_params["lam"] for c in by_method["naivemix"]) == [0.05, 0.2]
    assert all(c.attack.params["dlg"]["iters"] == 3 for cs in by_method.values() for c in cs)
    assert "--set" in points[0].argv and "dlg.iters=3" in points[0].argv


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"sweep": {"method": "fedmix", "fedmix": {"lamb": 1}}}, "has no parameter 'lamb'"),
        ({"sweep": {"method": "fedmix", "nosuch.x": 1}}, "no plugin is named 'nosuch'"),
        ({"sweep": {"method": "fedmix"}, "nosuch": {"x": 1}}, "unknown section(s) nosuch"),
    ],
)
def test_sweep_bad_namespaced_keys(grid, message):
    _, problems = expand(grid)
    assert any(message in p for p in problems), problems


def test_api_params_reach_the_plugin():
    (row,) = privbench.run(tiny_config(method="fedmix"), params={"fedmix": {"lam": 0.3}})
    assert row.status == "ok", row.error
    assert row.config["method_params"]["lam"] == 0.3


def test_every_plugin_default_is_written_once_in_its_param():
    """A registered plugin class takes its defaults from its ``Param``s: built with no
    argument it holds exactly them, and no ``__init__`` repeats a default."""
    import inspect

    from privbench.registry import Configurable

    checked = 0
    for kind, reg in privbench.registries().items():
        for name in reg.names():
            entry = reg.entry(name)
            factory = entry.factory
            if not (isinstance(factory, type) and issubclass(factory, Configurable)):
                continue
            for klass in factory.__mro__:
                init = klass.__dict__.get("__init__")
                if init is None or klass is Configurable:
                    continue
                for p in inspect.signature(init).parameters.values():
                    assert p.default is inspect.Parameter.empty or p.name == "self", (
                        f"{kind} '{name}': {klass.__name__}.__init__ repeats a default ({p.name})"
                    )
            if kind == "dataset":
                continue
            defaults = {p.name: p.default for p in entry.params}
            assert defaults.items() <= factory().params.items(), (kind, name)
            checked += 1
    assert checked >= 20
    with pytest.raises(TypeError, match="unexpected parameter.*lamda"):
        privbench.registries()["method"].entry("fedmix").factory(lamda=0.1)
