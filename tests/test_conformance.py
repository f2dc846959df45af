"""One contract test over every registry: a plugin is tested the day it is registered.

The checks live in :mod:`privbench.testing` so that plugin authors run the very same
ones on their plugins (``privbench.testing.check_plugin``)."""

import pytest

from privbench import registries
from privbench import testing as conformance

ALL = [(kind, name) for kind, reg in registries().items() for name in reg.names()]
EMBEDDED = ("digits", "photos", "faces", "lfw")


@pytest.mark.parametrize("kind, name", ALL)
def test_plugin_declares_a_description_and_valid_defaults(kind, name):
    conformance.check_declaration(kind, name)


@pytest.mark.parametrize("kind, name", ALL)
def test_plugin_rejects_bad_parameters_by_name(kind, name):
    conformance.check_rejects_bad_parameters(kind, name)


def test_parameter_names_are_unique_across_kinds():
    for kind, name in ALL:
        conformance.check_parameter_names(kind, name)


@pytest.mark.parametrize("name", registries()["model"].names())
def test_models_follow_the_dataset_shape(name):
    conformance.check_model(name)


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_datasets_load_offline(name):
    conformance.check_dataset(name)


@pytest.mark.parametrize("name", registries()["method"].names())
def test_every_method_trains_and_can_be_attacked(name):
    conformance.check_method(name)


@pytest.mark.parametrize("name", registries()["attack"].names())
def test_every_attack_returns_a_scored_reconstruction(name):
    conformance.check_attack(name)


@pytest.mark.parametrize("name", registries()["defense"].names())
def test_every_defense_runs(name):
    conformance.check_defense(name)


@pytest.mark.parametrize("name", registries()["partition"].names())
def test_every_partition_runs(name):
    conformance.check_partition(name)


@pytest.mark.parametrize("name", registries()["algorithm"].names())
def test_every_algorithm_runs(name):
    conformance.check_algorithm(name)


@pytest.mark.parametrize("name", registries()["threat"].names())
def test_every_threat_model_observes_something(name):
    conformance.check_threat(name)


def test_check_plugin_fails_on_a_broken_plugin():
    """check_plugin is not a rubber stamp: a model with the wrong output size fails."""
    import torch

    reg = registries()["model"]

    @reg.register("broken-net", description="outputs 3 logits whatever the classes")
    def broken(shape, num_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))

    try:
        with pytest.raises(AssertionError, match="broken-net"):
            conformance.check_plugin("model", "broken-net")
    finally:
        reg.entries.pop("broken-net")
