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


def _frontier_row(model, seed, psnr, acc, *, attack="dlg", defense="none", method="fedavg"):
    return {
        "method": method,
        "model": model,
        "defense": defense,
        "attack": attack,
        "seed": seed,
        "status": "ok",
        "accuracy": acc,
        "psnr": psnr,
        "epsilon": None,
        "victims": 1,
        "config_hash": f"{method}-{model}-{defense}-{seed}",
        "config": {"model": model, "seed": seed},
    }


def _legend_texts(fig) -> dict[str, list[str]]:
    from matplotlib.legend import Legend

    return {
        leg.get_title().get_text(): [t.get_text() for t in leg.get_texts()]
        for leg in fig.axes[0].findobj(Legend)
    }


def test_a_method_on_two_models_is_two_frontier_points(tmp_path, monkeypatch):
    from privbench.results import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, out: figures.append(fig) or out)
    rows = [_frontier_row("lenet-sigmoid", s, 40.0 + s, 0.9) for s in (0, 1)]
    rows += [_frontier_row("cnn-bn", s, 5.0, 0.98) for s in (0, 1)]
    plots.frontier(rows, str(tmp_path / "f.png"))
    methods = _legend_texts(figures[0])["method (colour)"]
    assert methods == ["fedavg (lenet-sigmoid)", "fedavg (cnn-bn)"]
    # one model: the method's name alone
    figures.clear()
    plots.frontier(rows[:2], str(tmp_path / "g.png"))
    assert _legend_texts(figures[0])["method (colour)"] == ["fedavg"]


def test_frontier_legends_name_each_method_and_defense_once(tmp_path, monkeypatch):
    """A headline grid puts dozens of (method, defense, attack) points on one figure: the
    legends name each colour (method) and marker (defense) once, every method gets its
    own colour, and an artifact attack's point is hollow where an attack on the update
    is filled."""
    import matplotlib.colors as mcolors

    from privbench.results import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, out: figures.append(fig) or out)
    methods = [f"m{i}" for i in range(13)]
    rows = [
        _frontier_row("lenet-sigmoid", 0, 10.0 + i, 0.5, method=m, defense=d, attack=a)
        for i, m in enumerate(methods)
        for d in ("none", "dp-sgd")
        for a in ("worst-case", "averaged-data")
    ]
    plots.frontier(rows, str(tmp_path / "f.png"))
    legends = _legend_texts(figures[0])
    assert sorted(legends["method (colour)"]) == sorted(methods)
    assert legends["defense (marker)"] == ["none", "dp-sgd"]
    ax = figures[0].axes[0]
    method_keys = next(
        leg for leg in ax.get_children() if getattr(leg, "get_title", None)
        and leg.get_title().get_text() == "method (colour)"
    ).legend_handles  # fmt: skip
    colours = {mcolors.to_hex(h.get_color()) for h in method_keys}
    assert len(colours) == 13
    faces = {mcolors.to_hex(line.get_markerfacecolor()) for line in ax.lines}
    edges = {mcolors.to_hex(line.get_color()) for line in ax.lines if line.get_marker() != "None"}
    assert "#ffffff" in faces  # the artifact points
    assert colours <= faces  # the worst-case points, filled in their method's colour
    assert colours <= edges
    assert all(not leg.get_clip_on() for leg in ax.artists)  # never cut off at the axes


def test_curves_split_into_panels_and_keep_each_lines_colour(tmp_path, monkeypatch):
    from privbench.results import plots

    def row(method, budget, seed, accs):
        return {
            "method": method,
            "budget": budget,
            "seed": seed,
            "status": "ok",
            "config_hash": f"{method}-{budget}-{seed}",
            "history": [{"round": 10 * (i + 1), "accuracy": a} for i, a in enumerate(accs)],
        }

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, out: figures.append(fig) or out)
    rows = [
        row("fedavg", "20 rounds", 0, [0.5, 0.7]),
        row("fedavg", "20 rounds", 1, [0.7, 0.9]),
        row("fedavp", "20 rounds", 0, [0.4, 0.6]),
        row("fedavp", "30 rounds", 0, [0.4, 0.6, 0.8]),
    ]
    plots.curves(rows, str(tmp_path / "c.png"), by=("method",), panels=("budget",))
    (fig,) = figures
    short, long = fig.axes[:2]
    assert [short.get_title(), long.get_title()] == ["20 rounds", "30 rounds"]
    lines = {ax.get_title(): {ln.get_label(): ln for ln in ax.get_lines()} for ax in fig.axes}
    assert list(lines["20 rounds"]["fedavg"].get_ydata()) == pytest.approx([0.6, 0.8])  # mean
    assert list(lines["30 rounds"]["fedavp"].get_xdata()) == [10, 20, 30]
    # fedavp is one colour in both panels, another than fedavg's
    assert lines["30 rounds"]["fedavp"].get_color() == lines["20 rounds"]["fedavp"].get_color()
    assert lines["20 rounds"]["fedavg"].get_color() != lines["20 rounds"]["fedavp"].get_color()


def test_curves_with_many_lines_share_one_legend_and_twenty_colours(tmp_path, monkeypatch):
    """Thirteen methods over four defense panels: one legend beside the panels (not one
    over each), and thirteen colours, none repeated."""
    from privbench.results import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, plt, out: figures.append(fig) or out)
    rows = [
        {
            "method": f"m{i}",
            "defense": d,
            "seed": 0,
            "status": "ok",
            "config_hash": f"m{i}-{d}",
            "history": [{"round": 1, "accuracy": 0.1 * i}, {"round": 2, "accuracy": 0.2}],
        }
        for i in range(13)
        for d in ("none", "dp-sgd", "client-dp", "artifact-noise")
    ]
    plots.curves(rows, str(tmp_path / "c.png"), by=("method",), panels=("defense",))
    (fig,) = figures
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"m{i}" for i in range(13)]
    colours = {str(ln.get_color()) for ln in fig.axes[0].get_lines()}
    assert len(colours) == 13
