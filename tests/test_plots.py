"""Plots: the Pareto front by hand, and each kind of figure written as a real PNG from a
real result folder."""

import pytest

import privbench
from privbench.cli import main
from privbench.results.plots import pareto_front
from tests.conftest import tiny_config

pytest.importorskip("matplotlib")


def test_pareto_front_keeps_points_nothing_beats():
    # (leakage, accuracy): lower leakage and higher accuracy are better
    pts = [(10.0, 0.5), (20.0, 0.9), (15.0, 0.4), (30.0, 0.95), (25.0, 0.8)]
    assert pareto_front(pts) == [0, 1, 3]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots")
    for defense in ((), ("prune",)):
        cfg = tiny_config(
            defenses=defense,
            fed=dict(eval_every=1),
            attack=dict(names=("dlg",), params={"iters": 2}),
        )
        privbench.run(cfg, out=str(out))
    return out


@pytest.mark.parametrize("kind", ["frontier", "reconstructions", "curves"])
def test_each_kind_writes_a_png(results, kind, tmp_path):
    target = tmp_path / f"{kind}.png"
    assert main(["plot", str(results), "--kind", kind, "--out", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and target.stat().st_size > 5000


def test_plot_without_attacks_explains(tmp_path):
    privbench.run(tiny_config(), out=str(tmp_path))
    assert (
        main(["plot", str(tmp_path), "--kind", "frontier", "--out", str(tmp_path / "x.png")]) == 2
    )
