import pytest

from privbench.errors import ParameterError, UnknownNameError
from privbench.registry import Param, Registry


def make():
    r = Registry("widget")

    @r.register(
        "box",
        params=(
            Param("size", int, 1, "edge", low=1),
            Param("alpha", float, 0.5, "mix", low=0.0, low_open=True, high=1.0),
            Param("mode", str, "a", "mode", choices=("a", "b")),
        ),
        description="a box",
    )
    def make_box(size, alpha, mode):
        return (size, alpha, mode)

    @r.register("bag", description="a bag")
    def make_bag():
        return "bag"

    return r


def test_create_fills_defaults_and_parses_strings():
    r = make()
    assert r.create("box") == (1, 0.5, "a")
    assert r.create("box", size="3", alpha="0.25", mode="b") == (3, 0.25, "b")


def test_unknown_name_lists_sorted_names_and_suggests():
    with pytest.raises(UnknownNameError) as err:
        make().create("bxo")
    msg = str(err.value)
    assert "Did you mean 'box'?" in msg
    assert msg.endswith("Valid widgets: bag, box.")


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"size": 0}, "The 'size' parameter of widget 'box' must be an integer >= 1. Got 0"),
        ({"alpha": 0.0}, "must be a finite number > 0 and <= 1. Got 0.0"),
        ({"alpha": "x"}, "Got 'x' instead"),
        ({"mode": "c"}, "must be one of 'a', 'b'. Got 'c'"),
        ({"size": 1.5}, "Got 1.5 instead"),
        ({"size": True}, "Got True instead"),
        ({"alpha": float("nan")}, "Got nan instead"),
    ],
)
def test_bad_values_name_parameter_value_and_allowed(params, fragment):
    with pytest.raises(ParameterError) as err:
        make().create("box", **params)
    assert fragment in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ParameterError) as err:
        make().create("box", size=-1, alpha=2.0, colour="red")
    msg = str(err.value)
    assert "'size'" in msg and "'alpha'" in msg and "no parameter 'colour'" in msg


def test_duplicate_registration_refused():
    r = make()
    with pytest.raises(ValueError):
        r.register("box")(lambda: None)


def test_build_takes_resolved_params_only():
    from privbench import registries

    reg = registries()["defense"]
    resolved = reg.resolve_params("prune", {"prune": 0.5})
    assert reg.build("prune", resolved).params == reg.create("prune", prune=0.5).params
    with pytest.raises(ValueError, match="resolved parameters"):
        reg.build("prune", {})
