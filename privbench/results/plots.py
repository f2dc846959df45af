"""Figures from result rows (matplotlib, the ``plots`` extra): the privacy-utility
frontier, reconstruction grids and learning curves."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from privbench.errors import ParameterError, PrivbenchError
from privbench.results.report import latest, summarize, worst_case_view
from privbench.results.store import inside

KINDS = ("frontier", "reconstructions", "curves")


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise PrivbenchError(
            "plots need matplotlib: pip install 'privbench[plots]' (or pip install matplotlib)"
        ) from err
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (leakage, accuracy) points no other point beats on both: lower
    leakage and higher accuracy. Sorted by leakage."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def frontier(rows: Sequence[Mapping[str, Any]], out: str, *, leakage: str = "psnr") -> str:
    """Accuracy against leakage, one point per (method, model, defense, attack) with its
    spread over seeds: colour = method, marker = defense, filled = what an attack on the
    update gets (a gradient attack, or the worst case over them), hollow = an attack on a
    shared artifact. The legends name each colour, marker and fill once, so the figure
    stays readable with every method of a headline grid on it."""
    from matplotlib.lines import Line2D

    from privbench.adversary import WORST_CASE, base_name, gradient_attacks

    plt = _pyplot()
    attacked = [r for r in worst_case_view(rows) if r.get("attack") not in (None, "none")]
    if not attacked:
        raise ParameterError("The frontier needs rows with an attack (leakage on the x axis).")
    # a method run on two models (FedAvg on cnn-bn beside lenet-sigmoid) is two points,
    # never one averaged over both
    s = summarize(
        attacked,
        by=("method", "model", "defense", "attack"),
        metrics=("accuracy", leakage, "epsilon"),
    )
    s = s[s[f"{leakage}_mean"].notna() & s["accuracy_mean"].notna()].reset_index(drop=True)
    models = s.groupby("method", sort=False)["model"].nunique()
    if s.empty:
        raise ParameterError("No ok rows with both accuracy and leakage to plot.")
    fig, ax = plt.subplots(figsize=(10, 5.5))
    markers = "osD^v<>pP*X"
    labels = list(dict.fromkeys(_method_label(r, models) for _, r in s.iterrows()))
    colors = _distinct_colors(len(labels))
    defenses = list(dict.fromkeys(s["defense"]))
    on_update = {*gradient_attacks(), WORST_CASE}
    for _, r in s.iterrows():
        color = colors[labels.index(_method_label(r, models))]
        marker = markers[defenses.index(r["defense"]) % len(markers)]
        ax.errorbar(
            r[f"{leakage}_mean"],
            r["accuracy_mean"],
            xerr=r[f"{leakage}_std"],
            yerr=r["accuracy_std"],
            fmt=marker,
            color=color,
            markerfacecolor=color if base_name(str(r["attack"])) in on_update else "white",
            capsize=2,
        )
        if not math.isnan(r["epsilon_mean"]):
            ax.annotate(
                f"ε={r['epsilon_mean']:.3g}",
                (r[f"{leakage}_mean"], r["accuracy_mean"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
    pts = list(zip(s[f"{leakage}_mean"], s["accuracy_mean"], strict=True))
    front = pareto_front(pts)
    ax.step(
        [pts[i][0] for i in front],
        [pts[i][1] for i in front],
        where="post",
        color="0.5",
        linestyle="--",
        marker="o",
        markersize=14,
        markerfacecolor="none",
    )
    unit = " (dB)" if leakage == "psnr" else ""
    ax.set_xlabel(f"leakage: reconstruction {leakage.upper()}{unit}  (lower is more private)")
    ax.set_ylabel("test accuracy  (higher is more useful)")
    ax.set_title("Privacy-utility frontier (mean ± std over seeds)")
    ax.grid(alpha=0.3)

    def key(marker="s", color="0.4", face=None, ls="", **kw):
        face = color if face is None else face
        return Line2D([], [], marker=marker, color=color, markerfacecolor=face, ls=ls, **kw)

    legends = [
        ("method (colour)", [key(color=c) for c in colors], labels),
        (
            "defense (marker)",
            [key(markers[i % len(markers)]) for i in range(len(defenses))],
            defenses,
        ),
        (
            "attack",
            [
                key("o"),
                key("o", face="white"),
                key("o", color="0.5", face="none", ms=14, ls="--"),
            ],
            ["on the update (filled)", "on a shared artifact (hollow)", "Pareto front"],
        ),
    ]
    top = 1.0
    for title, handles, names in legends:
        legend = ax.legend(
            handles, names, title=title, fontsize=7, title_fontsize=8,
            loc="upper left", bbox_to_anchor=(1.01, top), borderaxespad=0,
        )  # fmt: skip
        ax.add_artist(legend).set_clip_on(False)  # add_artist clips to the axes
        fig.canvas.draw()  # the legend's height, to stack the next one below it
        box = legend.get_window_extent().transformed(ax.transAxes.inverted())
        top = box.y0 - 0.03
    return _save(fig, plt, out)


PALETTE_SIZE = 20  # colours before _distinct_colors repeats one


def _distinct_colors(n: int) -> list:
    """``n`` colours, the first ten matplotlib's defaults, then tab20's lighter shades
    (so 20 methods stay apart before any colour repeats)."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors
    palette = list(tab20[0::2]) + list(tab20[1::2])
    return [palette[i % len(palette)] for i in range(n)]


def _method_label(r, models) -> str:
    """The method, with its model where the plot shows it on more than one."""
    return f"{r['method']} ({r['model']})" if models.get(r["method"], 1) > 1 else r["method"]


def reconstructions(
    rows: Sequence[Mapping[str, Any]], out: str, *, results_dir: str, limit: int = 8
) -> str:
    plt = _pyplot()
    shown = [r for r in latest(rows) if r.get("reconstruction_file")][:limit]
    if not shown:
        raise ParameterError(
            "No rows with saved reconstructions (run attacks with a result folder, not --no-save)."
        )
    pairs = []
    for r in shown:
        path = inside(results_dir, r["reconstruction_file"])  # never outside the folder
        try:
            with np.load(path) as data:
                gt, rec = _first_image(data, "ground_truth"), _first_image(data, "reconstruction")
        except (OSError, ValueError, KeyError) as err:  # missing, unreadable or not ours
            raise ParameterError(
                f"Row {r.get('method')}/{r.get('attack')} names the reconstruction file "
                f"{r['reconstruction_file']!r}, which cannot be read: {type(err).__name__}: {err}"
            ) from None
        pairs.append((r, gt, rec))
    fig, axes = plt.subplots(2, len(pairs), figsize=(1.8 * len(pairs) + 0.6, 4.2), squeeze=False)
    for j, (r, gt, rec) in enumerate(pairs):
        for i, img in enumerate((gt, rec)):
            ax = axes[i][j]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][j].set_title(f"{r['method']}\n{r['attack']}/{r['defense']}", fontsize=8)
        psnr = r.get("psnr")
        axes[1][j].set_xlabel("-" if psnr is None else f"{psnr:.1f} dB", fontsize=9)
    axes[0][0].set_ylabel("private")
    axes[1][0].set_ylabel("reconstructed")
    fig.suptitle("Ground truth (top) and the attack's reconstruction (bottom), PSNR below")
    return _save(fig, plt, out)


def _first_image(data, key: str) -> np.ndarray:
    # Batch attacks save one array; dataset attacks one per victim (ground_truth_0, ...).
    name = key if key in data else sorted(k for k in data.files if k.startswith(key))[0]
    return image_hwc(data[name])


def image_hwc(arr: np.ndarray) -> np.ndarray:
    """The first (C, H, W) image of ``arr`` (leading batch axes dropped) for ``imshow``:
    (H, W) for one channel, else (H, W, C), clipped to [0, 1]."""
    while arr.ndim > 3:
        arr = arr[0]
    img = np.moveaxis(arr, 0, -1)  # C, H, W -> H, W, C
    return np.clip(img[..., 0] if img.shape[-1] == 1 else img, 0, 1)


def curves(
    rows: Sequence[Mapping[str, Any]],
    out: str,
    *,
    metric: str = "accuracy",
    by: Sequence[str] = ("method", "defense"),
    panels: Sequence[str] = (),
) -> str:
    """``metric`` per round, one line per value of the row fields ``by``; with
    ``panels``, one subplot per value of those fields (a line keeps its colour in every
    panel)."""
    plt = _pyplot()
    groups: dict[str, dict[str, dict[int, list[float]]]] = {}
    for r in latest(rows):
        if r.get("status") != "ok" or not r.get("history"):
            continue
        panel = " / ".join(str(r[k]) for k in panels)
        label = " / ".join(str(r[k]) for k in by)
        for h in r["history"]:
            if h.get(metric) is not None:
                by_round = groups.setdefault(panel, {}).setdefault(label, {})
                by_round.setdefault(int(h["round"]), []).append(h[metric])
    if not groups:
        raise ParameterError(f"No per-round '{metric}' history in these rows (--eval-every > 0).")
    # a line's index across panels: its colour (and style) in every panel
    index = {
        label: i
        for i, label in enumerate(dict.fromkeys(lb for lines in groups.values() for lb in lines))
    }
    colors = _distinct_colors(len(index))
    cols = min(len(groups), 2)
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7 if cols == 1 else 11, 4.5 * nrows))
    axes = np.atleast_1d(axes).ravel()
    handles: dict[str, Any] = {}
    for ax, (panel, lines) in zip(axes, groups.items(), strict=False):
        for label, by_round in lines.items():
            i = index[label]
            rounds = sorted(by_round)
            mean = np.array([np.mean(by_round[t]) for t in rounds])
            std = np.array([np.std(by_round[t]) for t in rounds])
            # the colours repeat after 20 lines: the line style tells them apart
            style = ("-", "--", ":", "-.")[(i // PALETTE_SIZE) % 4]
            (handles[label],) = ax.plot(
                rounds, mean, marker="o", ms=3, ls=style, color=colors[i], label=label
            )
            ax.fill_between(rounds, mean - std, mean + std, color=colors[i], alpha=0.15)
        ax.set_xlabel("round")
        ax.set_ylabel(f"global test {metric}")
        ax.grid(alpha=0.3)
        if len(index) <= 8:
            ax.legend(fontsize=8)
        if panel:
            ax.set_title(panel, fontsize=10)
    if len(index) > 8:  # one legend beside the panels, not one over each
        fig.legend(
            [handles[lb] for lb in index], list(index), fontsize=8,
            loc="upper left", bbox_to_anchor=(1.0, 0.95),
        )  # fmt: skip
    for ax in axes[len(groups) :]:
        ax.axis("off")
    fig.suptitle("Learning curves (mean ± std over seeds, deduplicated runs)")
    return _save(fig, plt, out)


def _save(fig, plt, out: str) -> str:
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = out + ".tmp.png"
    fig.tight_layout()
    # "tight" keeps what lies outside the axes (a frontier's legends) in the file
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)
    return out


def plot(kind: str, rows: Sequence[Mapping[str, Any]], out: str, *, results_dir: str = ".") -> str:
    if kind == "frontier":
        return frontier(rows, out)
    if kind == "reconstructions":
        return reconstructions(rows, out, results_dir=results_dir)
    if kind == "curves":
        return curves(rows, out)
    raise ParameterError(f"The 'kind' parameter must be one of {', '.join(KINDS)}. Got {kind!r}.")
