"""Default learning rates, tuned per dataset x model on a validation split.

``benchmarks/tune.py`` runs a grid of client learning rates for each dataset x model
with FedAvg on a validation split carved from the training set (never the test set),
keeps every run as a row in ``benchmarks/results/tuning/``, and writes the best value
with its search into ``privbench/tuned.json``. A run without ``--lr`` takes its value
from there (the row's resolved config shows the value used); an explicit ``--lr`` wins.

Where no tuning exists: the embedded datasets keep privbench's historical 0.5 (their
tables and golden values were measured with it); another dataset takes the smallest
value tuned for the same model on any dataset (the most conservative step known to
learn with that model); your own data (``privbench.run(data=...)``) keeps 0.5.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

FALLBACK_LR = 0.5
EMBEDDED = frozenset({"digits", "photos", "faces", "lfw"})
SAME_DATA = {"lfw": "faces"}  # a dataset registered under a second name shares its tuning


def best_lr(means: dict[float, float]) -> float:
    """A search's winner: the highest mean validation accuracy (rounded to 9 digits, so
    float noise is not a win); a tie goes to the smaller rate. ``benchmarks/tune.py`` and
    the FedMix reproduction's own search both choose by this rule."""
    return max(sorted(means), key=lambda lr: round(float(means[lr]), 9))


@lru_cache(maxsize=1)
def tuned() -> dict[str, Any]:
    """The committed tuning record: ``{"protocol": ..., "lr": {"dataset/model": {...}}}``."""
    text = resources.files("privbench").joinpath("tuned.json").read_text()
    return json.loads(text)


def default_lr(dataset: str, model: str, *, provided: bool = False) -> tuple[float, str]:
    """(learning rate, where it comes from) for a run that did not set ``--lr``. Provided
    data named ``NAME:SPLIT`` after a registered dataset (``mnist:validation``, a split
    of it) takes NAME's default, so a search on the split and the final run on NAME
    train at one rate."""
    if provided:
        from privbench import registries

        base = dataset.partition(":")[0]
        if ":" not in dataset or base not in registries()["dataset"]:
            return FALLBACK_LR, "privbench's default for your own data (not tuned)"
        dataset = base
    table = tuned()["lr"]
    searched = SAME_DATA.get(dataset, dataset)
    entry = table.get(f"{searched}/{model}")
    if entry is not None:
        return float(entry["lr"]), f"tuned on a validation split of {searched} for {model}"
    if dataset in EMBEDDED:
        return FALLBACK_LR, "privbench's historical default on the embedded data (not tuned)"
    same_model = {k: float(v["lr"]) for k, v in table.items() if k.endswith(f"/{model}")}
    if same_model:
        key = min(same_model, key=same_model.get)
        return same_model[key], f"not tuned for {dataset}: the smallest value tuned for {key}"
    return FALLBACK_LR, f"not tuned for {dataset}/{model}"


def defaults_table() -> dict[str, dict[str, Any]]:
    """Every registered dataset x model: the default learning rate and its source."""
    from privbench import registries

    regs = registries()
    return {
        f"{d}/{m}": dict(zip(("lr", "source"), default_lr(d, m), strict=True))
        for d in regs["dataset"].names()
        for m in regs["model"].names()
    }
