"""One contract test over every registry: a plugin is tested the day it is registered."""

import math

import pytest
import torch

import privbench
from privbench import registries
from privbench.errors import ParameterError
from privbench.models import classifier_weight_name
from privbench.registry import Param
from tests.conftest import tiny_config

ALL = [(kind, name) for kind, reg in registries().items() for name in reg.names()]
EMBEDDED = ("digits", "photos", "faces")


def _bad_values(p: Param):
    """Values the spec must reject."""
    bad = [object()]
    if p.choices is not None:
        bad.append("__not-a-choice__")
    if p.type in (int, float):
        bad.append("not-a-number")
        if p.low is not None:
            bad.append(p.low if p.low_open else p.low - 1)
        if p.high is not None:
            bad.append(p.high if p.high_open else p.high + 1)
    if p.type is int:
        bad.append(0.5)
    if p.type is float:
        bad.append(math.nan)
    if not p.nullable:
        bad.append(None)
    return bad


@pytest.mark.parametrize("kind, name", ALL)
def test_plugin_declares_a_description_and_valid_defaults(kind, name):
    entry = registries()[kind].entry(name)
    assert entry.description, f"{kind} '{name}' has no description for `privbench list`"
    resolved = registries()[kind].resolve_params(name, {})
    assert set(resolved) == {p.name for p in entry.params}


@pytest.mark.parametrize("kind, name", ALL)
def test_plugin_rejects_bad_parameters_by_name(kind, name):
    reg = registries()[kind]
    for p in reg.entry(name).params:
        for value in _bad_values(p):
            with pytest.raises(ParameterError) as err:
                reg.resolve_params(name, {p.name: value})
            assert f"'{p.name}' parameter of {reg.kind} '{name}'" in str(err.value)
    with pytest.raises(ParameterError, match="no parameter 'no_such_knob'"):
        reg.resolve_params(name, {"no_such_knob": 1})


def test_parameter_names_are_unique_across_kinds():
    owner = {}
    for kind, reg in registries().items():
        for name in reg.names():
            for p in reg.entry(name).params:
                assert owner.setdefault(p.name, kind) == kind, (
                    f"parameter '{p.name}' is declared by a {owner[p.name]} and a {kind}: "
                    "the CLI's flat flags would be ambiguous"
                )


@pytest.mark.parametrize("name", registries()["model"].names())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 25, 25)])
def test_models_follow_the_dataset_shape(name, shape):
    model = registries()["model"].entry(name).factory(shape, 7)
    assert model(torch.rand(2, *shape)).shape == (2, 7)
    assert classifier_weight_name(model, 7) in dict(model.named_parameters())


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_datasets_load_offline(name):
    from privbench.data import load_dataset

    d = load_dataset(name)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1
    assert len(d.class_names) == d.num_classes


def _dry(kind, name):
    own = {p.name for p in registries()[kind].entry(name).params}
    return {"iters": 2} if "iters" in own else {}


@pytest.mark.parametrize("name", registries()["method"].names())
def test_every_method_trains_and_can_be_attacked(name):
    cfg = tiny_config(method=name, attack=dict(names=("idlg",), params={"iters": 2}))
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    assert row.bytes_up > 0 and row.accuracy is not None


def _method_feeding(attack) -> str:
    """A registered method that puts on the channel what ``attack`` consumes."""
    if set(attack.consumes) & {"gradient", "update"}:
        return "fedavg"
    reg = registries()["method"]
    for name in reg.names():
        if set(attack.consumes) & set(getattr(reg.entry(name).factory, "shares", ())):
            return name
    raise AssertionError(f"no registered method shares what {attack.name} consumes")


@pytest.mark.parametrize("name", registries()["attack"].names())
def test_every_attack_returns_a_scored_reconstruction(name):
    attack = registries()["attack"].create(name)
    assert attack.consumes and attack.target in ("batch", "dataset")
    cfg = tiny_config(
        method=_method_feeding(attack),
        attack=dict(names=(name,), batch=2, params=_dry("attack", name)),
    )
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error
    assert row.psnr is not None and row.ssim is not None
    if attack.target == "batch":
        assert row.n_images == 2
    else:
        assert row.n_images >= 1


@pytest.mark.parametrize("name", registries()["defense"].names())
def test_every_defense_runs(name):
    cfg = tiny_config(defenses=() if name == "none" else (name,))
    (row,) = privbench.run(cfg)
    assert row.status == "ok", row.error


@pytest.mark.parametrize("name", registries()["partition"].names())
def test_every_partition_runs(name):
    (row,) = privbench.run(tiny_config(partition=name))
    assert row.status == "ok", row.error


@pytest.mark.parametrize("name", registries()["algorithm"].names())
def test_every_algorithm_runs(name):
    (row,) = privbench.run(tiny_config(fed=dict(algorithm=name)))
    assert row.status == "ok", row.error


@pytest.mark.parametrize("name", registries()["threat"].names())
def test_every_threat_model_observes_something(name):
    from privbench.runner import Experiment

    exp = Experiment(tiny_config(attack=dict(threat=name)))
    out = exp.train()
    assert out.channel.observations, f"threat '{name}' observed nothing"
