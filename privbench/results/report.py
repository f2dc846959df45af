"""Summaries of result rows over seeds: tables (Markdown, CSV, LaTeX), regression
baselines and checks. Used by ``privbench table|baseline|check``, the benchmarks and
:mod:`privbench.testing`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from privbench.errors import ParameterError


def mean_std(values: Iterable[float | None]) -> str:
    """'mean ± std' over seeds (population std), the single value for one seed, '-' for none."""
    arr = np.array([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return "-"
    return f"{arr.mean():.2f} ± {arr.std():.2f}" if len(arr) > 1 else f"{arr[0]:.2f}"


@dataclass(frozen=True)
class Metric:
    header: str  # column title with its unit
    scale: float  # row value * scale = shown value
    digits: int
    higher_leaks: bool | None = None  # leakage metrics: a rise is a regression


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", 1.0, 3),
    "macro_f1": Metric("macro-F1", 1.0, 3),
    "client_acc_mean": Metric("client acc", 1.0, 3),
    "client_acc_var": Metric("client acc var", 1.0, 4),
    "class_acc_var": Metric("class acc var", 1.0, 4),
    "psnr": Metric("PSNR (dB)", 1.0, 2, True),
    "psnr_affine": Metric("PSNR affine (dB)", 1.0, 2, True),
    "psnr_augmented": Metric("PSNR augmented (dB)", 1.0, 2, True),
    "ssim": Metric("SSIM", 1.0, 3, True),
    "mse": Metric("MSE", 1.0, 4),
    "label_acc": Metric("label acc", 1.0, 2, True),
    "label_dist_error": Metric("label-dist error", 1.0, 3),
    "bytes_up": Metric("up (MiB)", 2.0**-20, 3),
    "bytes_down": Metric("down (MiB)", 2.0**-20, 3),
    "epsilon": Metric("ε", 1.0, 2),
    "epsilon_record": Metric("ε record", 1.0, 2),
    "epsilon_client": Metric("ε client", 1.0, 2),
    "guess_identified": Metric("guess identified", 1.0, 2),
    "wall_s": Metric("wall (s)", 1.0, 1),
}
DEFAULT_BY = ("method", "attack", "defense")
DEFAULT_METRICS = ("accuracy", "psnr", "ssim", "bytes_up", "epsilon")
# What identifies an experiment apart from its seed: a baseline compares like with like.
BASELINE_KEY = (
    "experiment",
    "method",
    "attack",
    "defense",
    "threat",
    "dataset",
    "partition",
    "model",
    "algorithm",
    "rounds",
    "clients",
    "attack_batch",
    "victim_steps",
)


def load_rows(source: str | os.PathLike | Sequence[Any]) -> list[dict[str, Any]]:
    """Rows from a result folder, a ``results.jsonl`` file, or a list of rows/Results."""
    from privbench.engine.outcome import void_row
    from privbench.results import Result, ResultStore

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            store = ResultStore(path)
        elif os.path.isfile(path):
            store = ResultStore(os.path.dirname(os.path.abspath(path)))
            store.path = os.path.abspath(path)
        else:
            raise ParameterError(f"No results at '{path}': give a result folder or a .jsonl file.")
        rows = store.read()
    else:
        rows = [r.to_dict() if isinstance(r, Result) else dict(r) for r in source]
    # rows stored before the rule: no epsilon where artifacts left outside the mechanism
    return [void_row(r) for r in rows]


def grid_rows(
    rows: Sequence[Mapping[str, Any]], grids: Sequence[str], *, required: bool = True
) -> list[dict[str, Any]]:
    """The rows that are points of the sweep grid files ``grids`` (by configuration
    hash): a store that also holds other runs (an earlier version of the grid, a
    default changed since) tables what the grids run today. No row matching is an
    error when ``required``."""
    from privbench.results.sweep import expand, load_grid

    hashes: set[str] = set()
    for grid in grids:
        points, problems = expand(load_grid(grid))
        if problems:
            raise ParameterError(f"invalid grid '{grid}': {problems[0]}")
        hashes |= {p.config_hash for p in points}
    kept = [dict(r) for r in rows if r.get("config_hash") in hashes]
    if rows and not kept and required:
        raise ParameterError(f"None of the {len(rows)} rows is a point of {', '.join(grids)}.")
    return kept


def experiment_id(row: Mapping[str, Any]) -> str:
    """Hash of the row's resolved configuration without its seed: seeds of one
    experiment share it, any other difference (a defense's sigma, a method's knob) does not."""
    config = dict(row.get("config") or {})
    config.pop("seed", None)
    for key in ("data_root", "download"):
        config.pop(key, None)
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def latest(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (config, attack): the last one written (a rerun replaces an error);
    each with its ``experiment`` id."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        r = r.to_dict() if hasattr(r, "to_dict") else r  # Result objects from privbench.run
        out.pop((r.get("config_hash"), r.get("attack")), None)
        out[(r.get("config_hash"), r.get("attack"))] = {**r, "experiment": experiment_id(r)}
    return list(out.values())


def is_current(row: Mapping[str, Any]) -> bool:
    """Whether ``row`` is what today's code runs for its configuration: its config,
    resolved again with today's defaults (a parameter added since takes its default),
    hashes to its ``config_hash``. False for a row whose run a changed default now
    replaces (e.g. a ``cnn`` row from before He init became its default), or whose
    plugin no longer resolves."""
    from privbench import registries
    from privbench.config import RunConfig
    from privbench.errors import PrivbenchError

    config = row.get("config") or {}
    if not config or not row.get("config_hash"):
        return False
    regs = registries()
    provided = frozenset(  # data or a model given as an object: its name is a label
        kind for kind in ("dataset", "model") if config.get(kind) not in regs[kind].names()
    )
    try:
        cfg = RunConfig.from_dict(config).resolve(provided=provided)
    except (PrivbenchError, TypeError):  # a plugin or field that no longer exists
        return False
    return cfg.hash() == row["config_hash"]


def is_default_run(row: Mapping[str, Any]) -> bool:
    """:func:`is_current`, and run at today's defaults: no parameter holds a default that
    changed since (``confighash.CHANGED_DEFAULTS``; a ``cnn`` row that carries
    ``weight_init = "pytorch"`` ran before He init became the default, or chose it).
    What a benchmark that names no such parameter tables."""
    from privbench.confighash import at_changed_default

    return is_current(row) and not at_changed_default(row.get("config") or {})


def worst_case_view(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows a reader sees by default: where a run wrote a ``worst-case`` row, it
    stands for that run's gradient attacks (their own rows are left out: each victim's
    best is in it); every other row as is. Rows are :func:`latest` rows."""
    from privbench.adversary import WORST_CASE, gradient_attacks

    rows = latest(rows)
    gradient = set(gradient_attacks())
    covered = {r.get("config_hash") for r in rows if r.get("attack") == WORST_CASE}
    view = [
        r
        for r in rows
        if r.get("config_hash") not in covered
        or str(r.get("attack")).partition("@")[0] not in gradient
    ]
    from privbench.results.companions import merge_runs, rechosen

    return merge_runs(rechosen(rows, view, gradient), gradient)


def _check_names(names: Sequence[str], allowed: Iterable[str], what: str) -> None:
    allowed = list(allowed)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ParameterError(
            f"Unknown {what} {', '.join(repr(b) for b in bad)}; choose from {', '.join(allowed)}."
        )


def summarize(
    rows: Iterable[Mapping[str, Any]],
    by: Sequence[str] = DEFAULT_BY,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    all_attacks: bool = False,
) -> pd.DataFrame:
    """Mean and std over seeds of each metric, per group; groups keep first-seen order.
    A run's worst-case row stands for its gradient attacks (:func:`worst_case_view`)
    unless ``all_attacks``.

    Columns: ``by``..., ``runs`` (ok rows), ``errors`` (error rows, counted, never hidden),
    then ``<metric>_mean`` / ``<metric>_std`` over the ok rows. An epsilon of null (no
    formal guarantee) makes the group's epsilon NaN.
    """
    _check_names(metrics, METRICS, "metric")
    rows = latest(rows) if all_attacks else worst_case_view(rows)
    if not rows:
        raise ParameterError("No result rows to summarise.")
    _check_names(by, rows[0].keys(), "grouping column")
    frame = pd.DataFrame(rows)
    for m in metrics:
        frame[m] = pd.to_numeric(frame.get(m), errors="coerce")
    frame["_ok"] = frame["status"] == "ok"
    records = []
    for key, group in frame.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = group[group["_ok"]]
        rec = dict(zip(by, key, strict=True))
        rec["runs"], rec["errors"] = int(len(ok)), int((~group["_ok"]).sum())
        for m in metrics:
            vals = ok[m].astype(float)
            rec[f"{m}_mean"] = float(vals.mean()) if vals.notna().any() else math.nan
            rec[f"{m}_std"] = float(vals.std(ddof=0)) if vals.notna().any() else math.nan
            if m == "epsilon" and len(ok) and ok[m].isna().any():
                rec[f"{m}_mean"] = rec[f"{m}_std"] = math.nan  # some runs: no guarantee
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _cell(mean: float, std: float, metric: str, runs: int, sep: str = " ± ") -> str:
    if math.isnan(mean):
        return "-"
    m = METRICS[metric]
    value = f"{mean * m.scale:.{m.digits}f}"
    return value if runs < 2 else f"{value}{sep}{std * m.scale:.{m.digits}f}"


def format_table(summary: pd.DataFrame, metrics: Sequence[str], fmt: str = "md") -> str:
    """Render :func:`summarize`'s frame as ``md``, ``csv`` or ``latex``."""
    by = [c for c in summary.columns if not (c.endswith("_mean") or c.endswith("_std"))]
    by = [c for c in by if c not in ("runs", "errors")]
    if fmt == "csv":
        out = pd.DataFrame({c: summary[c] for c in by + ["runs", "errors"]})
        for m in metrics:
            scale = METRICS[m].scale
            out[f"{METRICS[m].header} mean"] = summary[f"{m}_mean"] * scale
            out[f"{METRICS[m].header} std"] = summary[f"{m}_std"] * scale
        return out.to_csv(index=False).rstrip("\n")
    headers = by + ["runs", "errors"] + [METRICS[m].header for m in metrics]
    body = []
    for _, r in summary.iterrows():
        cells = [str(r[c]) for c in by] + [str(r["runs"]), str(r["errors"])]
        sep = " ± " if fmt == "md" else r" $\pm$ "
        cells += [_cell(r[f"{m}_mean"], r[f"{m}_std"], m, r["runs"], sep) for m in metrics]
        body.append(cells)
    if fmt == "md":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines)
    if fmt == "latex":

        def esc(text: str) -> str:  # only names and headers; number cells are already TeX
            for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
                text = text.replace(a, b)
            return text.replace("ε", r"$\varepsilon$")

        n_by = len(by)
        lines = [
            r"\begin{tabular}{" + "l" * n_by + "r" * (len(headers) - n_by) + "}",
            r"\toprule",
            " & ".join(esc(h) for h in headers) + r" \\",
            r"\midrule",
        ]
        for cells in body:
            row = [esc(c) for c in cells[:n_by]] + cells[n_by:]
            lines.append(" & ".join(row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)
    raise ParameterError(f"The 'format' parameter must be one of md, csv, latex. Got {fmt!r}.")


# -- regression gates ---------------------------------------------------------------------

GATED = ("accuracy", "psnr", "ssim")


def make_baseline(rows: Iterable[Mapping[str, Any]], by: Sequence[str] = BASELINE_KEY) -> dict:
    """Per-experiment means of accuracy, PSNR and SSIM over seeds (ok rows only)."""
    summary = summarize(rows, by=by, metrics=GATED)
    groups = []
    for _, r in summary.iterrows():
        groups.append(
            {
                "key": {k: _plain(r[k]) for k in by},
                "runs": int(r["runs"]),
                **{m: None if math.isnan(r[f"{m}_mean"]) else r[f"{m}_mean"] for m in GATED},
            }
        )
    return {"privbench_baseline": 1, "by": list(by), "groups": groups}


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def load_baseline(source: str | os.PathLike | Mapping[str, Any]) -> dict:
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        try:
            with open(source, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as err:
            raise ParameterError(f"Cannot read baseline '{source}': {err}") from err
    if data.get("privbench_baseline") != 1 or "groups" not in data:
        raise ParameterError(f"'{source}' is not a privbench baseline (privbench baseline -o).")
    return data


@dataclass
class CheckReport:
    regressions: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.regressions

    def text(self) -> str:
        lines = [f"REGRESSION {p}" for p in self.regressions] + [f"note {n}" for n in self.notes]
        verdict = "FAIL" if self.regressions else "OK"
        lines.append(f"{verdict}: {len(self.regressions)} regression(s), {len(self.notes)} note(s)")
        return "\n".join(lines)


def check(
    rows: Iterable[Mapping[str, Any]],
    baseline: Mapping[str, Any],
    *,
    psnr_tol: float = 1.0,
    ssim_tol: float = 0.02,
    acc_tol: float = 0.02,
) -> CheckReport:
    """Compare results with a baseline: leakage (PSNR, SSIM) may not rise and accuracy may
    not fall beyond the tolerances; a baseline experiment missing from the results, or
    with error rows, is a regression too. New experiments are notes."""
    for name, tol in (("psnr_tol", psnr_tol), ("ssim_tol", ssim_tol), ("acc_tol", acc_tol)):
        if not tol >= 0:
            raise ParameterError(f"The '{name}' parameter must be >= 0. Got {tol} instead.")
    baseline = load_baseline(baseline)
    by = baseline["by"]
    summary = summarize(rows, by=by, metrics=GATED)
    current = {tuple(_plain(r[k]) for k in by): r for _, r in summary.iterrows()}
    regressions, notes = [], []
    tols = {"psnr": psnr_tol, "ssim": ssim_tol, "accuracy": acc_tol}
    seen = set()
    for group in baseline["groups"]:
        key = tuple(group["key"][k] for k in by)
        seen.add(key)
        label = ", ".join(f"{k}={v}" for k, v in group["key"].items() if k in DEFAULT_BY)
        label = label or str(key)
        now = current.get(key)
        if now is None:
            regressions.append(f"[{label}] in the baseline but not in the results")
            continue
        if now["errors"]:
            regressions.append(f"[{label}] {now['errors']} error row(s)")
        for m in GATED:
            old, new = group.get(m), now[f"{m}_mean"]
            if old is None or math.isnan(new):
                continue
            change = new - old
            if m == "accuracy" and change < -tols[m]:
                regressions.append(
                    f"[{label}] accuracy fell {old:.4f} -> {new:.4f} ({change:+.4f}, tol {acc_tol})"
                )
            elif m != "accuracy" and change > tols[m]:
                regressions.append(
                    f"[{label}] {m} rose {old:.3f} -> {new:.3f} ({change:+.3f}, tol {tols[m]})"
                )
    for key in current:
        if key not in seen:
            notes.append(f"new experiment not in the baseline: {dict(zip(by, key, strict=True))}")
    return CheckReport(regressions, notes)
