"""The configuration hash: what determines a run's result, and nothing else.

A row's ``config_hash`` is how a store knows a point is done, so a parameter added
after rows were recorded must not change the hash of those rows: at the default that
reproduces them it is left out (:data:`LATER_DEFAULTS`, and the fed fields below).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Plugin parameters added after rows were recorded, at the default that reproduces those
# rows: left out of the configuration hash at that value. (path to the plugin's resolved
# parameters in ``RunConfig.to_dict()``, "*" for every key there; parameter; value).
# A default changed since keeps its old value here: rows that ran it keep their hash,
# and a run at the new default hashes apart from them (it is a different run).
LATER_DEFAULTS = (
    (("model_params",), "weight_init", "pytorch"),  # the cnn's init (default he since)
    (("partition_params",), "over", "classes"),  # what the dirichlet partition splits
    (("defense_params", "client-dp"), "target_epsilon", None),  # client-dp's calibration
    (("attack", "params", "*"), "box", "free"),  # DLG/iDLG's dummy domain
)


# Defaults changed since rows were recorded: (path, parameter, the old default). A row
# that carries the old value ran before the change, or chose it.
CHANGED_DEFAULTS = ((("model_params",), "weight_init", "pytorch"),)  # the cnn: he since


def _holding(d: dict[str, Any], path: tuple[str, ...], key: str, value: Any) -> list[dict]:
    """The parameter dicts at ``path`` in ``d`` whose ``key`` is ``value``."""
    level = [d]
    for step in path:
        level = [
            v
            for node in level
            if isinstance(node, dict)
            for k, v in node.items()
            if step in ("*", k)
        ]
    return [p for p in level if isinstance(p, dict) and key in p and p[key] == value]


def drop_later_defaults(d: dict[str, Any]) -> None:
    """Remove from the config dict ``d`` every LATER_DEFAULTS parameter at its old value."""
    for path, key, plain in LATER_DEFAULTS:
        for params in _holding(d, path, key, plain):
            params.pop(key)


def at_changed_default(d: dict[str, Any]) -> bool:
    """Whether the config dict ``d`` holds a parameter at a default changed since
    (:data:`CHANGED_DEFAULTS`)."""
    return any(_holding(d, path, key, old) for path, key, old in CHANGED_DEFAULTS)


def config_hash(d: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over ``RunConfig.to_dict()`` ``d`` (modified in place),
    without where data live, the vectorisation switch, and fields at the value every
    earlier row ran with."""
    d.pop("data_root", None)
    d.pop("download", None)
    d["fed"].pop("vectorise", None)
    if d["fed"].get("client_sampling") in ("fixed", "auto"):
        d["fed"].pop("client_sampling")  # the sampling of every run before the option
    for key, plain in (("optimizer", "sgd"), ("weight_decay", 0.0)):
        if d["fed"].get(key) == plain:
            d["fed"].pop(key)  # the local training of every run before the options
    drop_later_defaults(d)
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
