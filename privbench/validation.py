"""Types and finiteness of the configuration's fields, checked before anything runs.

Every field of :class:`~privbench.RunConfig`, :class:`~privbench.FedConfig` and
:class:`~privbench.AttackConfig` is checked against its annotation: a float field takes
a finite int or float (never a bool, NaN or infinity), an int field an int (not a
bool), a string field a string, a tuple of names a tuple or list of strings, a params
field a mapping. Problems come back as one line each, naming the field, what it must
be and what was given, so misuse of the API is a :class:`~privbench.errors.ParameterError`
and never a torch or attribute error from deep inside a run.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

OPTIMIZERS = ("sgd", "adam")  # the clients' local optimisers (FedConfig.optimizer)

_NAMES = {
    int: "an integer",
    float: "a finite number",
    str: "a string",
    bool: "true or false",
    type(None): "None",
}


def _describe(annotation: Any) -> str:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return f"a tuple of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or annotation is dict:
        return "a dict"
    if annotation in _NAMES:
        return _NAMES[annotation]
    return f"a {getattr(annotation, '__name__', annotation)}"


def _fits(annotation: Any, value: Any) -> bool:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(_fits(args[0], v) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, Mapping)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        )
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def field_problems(obj: Any, prefix: str = "") -> list[str]:
    """One line per field of dataclass ``obj`` (and its nested config dataclasses) whose
    value does not fit the field's annotation."""
    problems: list[str] = []
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        annotation = hints[f.name]
        name = prefix + f.name
        if is_dataclass(annotation) and is_dataclass(value) and isinstance(value, annotation):
            problems += field_problems(value, name + ".")
        elif not _fits(annotation, value):
            problems.append(
                f"The '{f.name}' parameter ({type(obj).__name__}.{f.name}, config field "
                f"'{name}') must be {_describe(annotation)}. Got {value!r} "
                f"({type(value).__name__}) instead."
            )
    return problems


def require_config(config: Any, where: str) -> None:
    """A clear error unless ``config`` is a :class:`~privbench.RunConfig`."""
    from privbench.config import RunConfig
    from privbench.errors import ParameterError

    if not isinstance(config, RunConfig):
        hint = (
            " (build one with privbench.RunConfig(**your_dict))"
            if isinstance(config, Mapping)
            else ""
        )
        raise ParameterError(
            f"The 'config' argument of {where} must be a privbench.RunConfig{hint}. "
            f"Got a {type(config).__name__} instead."
        )


def nonfinite_tensors(payload: Any, prefix: str = "") -> list[str]:
    """Names of the floating tensors in ``payload`` (a tensor, or a dict / list / tuple of
    them, nested) that hold NaN or infinity."""
    import torch

    if isinstance(payload, torch.Tensor):
        if payload.is_floating_point() and not torch.isfinite(payload).all():
            return [prefix or "tensor"]
        return []
    if isinstance(payload, Mapping):
        items = payload.items()
    elif isinstance(payload, (list, tuple)):
        items = enumerate(payload)
    else:
        return []
    return [
        n for k, v in items for n in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    ]


def require_finite_message(payload: Any, what: str) -> None:
    """A clear error instead of a score when an attack is handed NaN or infinity."""
    from privbench.errors import ParameterError

    if bad := nonfinite_tensors(payload):
        raise ParameterError(
            f"{what} holds NaN or infinite values (in {', '.join(map(str, bad[:3]))}"
            f"{', ...' if len(bad) > 3 else ''}); an attack needs a finite message."
        )


def optimizer_problems(fed: Any, atk: Any) -> list[str]:
    """The local optimiser's problems: its name, the decay, and the combinations whose
    simulation assumes plain SGD (an attacked victim taking several steps, q-FFL)."""
    out = []
    if fed.optimizer not in OPTIMIZERS:
        out.append(f"The 'optimizer' parameter must be sgd or adam. Got {fed.optimizer!r} instead.")
    if fed.weight_decay < 0:
        out.append(f"The 'weight_decay' parameter must be >= 0. Got {fed.weight_decay!r} instead.")
    if not fed.plain_sgd:
        what = f"{fed.optimizer!r} (weight decay {fed.weight_decay:g})"
        if atk.names and atk.steps > 1:
            out.append(
                "The 'optimizer' parameter must be sgd without weight decay when the victim "
                f"takes several steps (the attacks simulate plain SGD). Got {what} instead."
            )
        if fed.algorithm == "qffl":
            out.append(
                "The 'optimizer' parameter must be sgd without weight decay under q-FFL (its "
                f"aggregation assumes SGD steps). Got {what} instead."
            )
    return out


def combination_problems(method: str, defenses: tuple[str, ...]) -> list[str]:
    """Defense combinations with no clear meaning, one line each: a defense with nothing
    to act on (``artifact-noise`` on a method that shares no artifact) and two formal
    guarantees of one level. Two guarantees of different levels are allowed and warned
    about: each goes to its own column, never summed."""
    import warnings

    from privbench import registries

    regs = registries()
    shares = set(getattr(regs["method"].entry(method).factory, "shares", ()) or ())
    problems: list[str] = []
    levels: dict[str, list[str]] = {}
    for name in defenses:
        factory = regs["defense"].entry(name).factory
        acts = getattr(factory, "acts_on", None)
        if acts is not None and not shares & set(acts):
            problems.append(
                f"Defense '{name}' has nothing to act on: it changes {', '.join(acts)} "
                f"messages and method '{method}' shares "
                f"{', '.join(sorted(shares)) or 'no artifact (model updates only)'}."
            )
        if (level := getattr(factory, "guarantee", None)) is not None:
            levels.setdefault(level, []).append(name)
    for level, names in levels.items():
        if len(names) > 1:
            problems.append(
                f"Defenses {', '.join(repr(n) for n in names)} both give {level}-level "
                "guarantees; their epsilons do not compose by adding: use one."
            )
    if len(levels) > 1:
        warnings.warn(
            "Two formal guarantees of different levels ("
            + ", ".join(f"{lvl}: {', '.join(n)}" for lvl, n in levels.items())
            + "): each is reported in its own column (epsilon_record, epsilon_client) and "
            "the row's epsilon is null; they are not one guarantee.",
            stacklevel=3,
        )
    return problems


# A view of the victim's private draws, the variant that calls for it, and what it is
# on a method that has nothing of the kind: the method's own attacker view (its
# ``attack_view`` returns itself, as for guess=expected), or no synthetic dummies.
_VIEWS = {
    ("guess", "copies"): ("@copies", "trains on no augmented copies of an image", "expected"),
    ("guess", "enumerate"): ("@enumerate", "shares nothing to enumerate", "expected"),
    ("synthetic", "joint"): ("@joint", "mixes no private synthetic samples", "estimate"),
}


def view_notices(method: str, attack_params: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Attacks asking for a view ``method`` gives nothing to (``idlg@copies`` on FedAvg):
    they run as the plain view, which the one-line notice names, so a table row labelled
    ``@copies`` is not read as the copies attack."""
    from privbench.adversary import method_variants

    have = set(method_variants(method))
    out = []
    for name, params in attack_params.items():
        for (key, value), (variant, lacks, plain) in _VIEWS.items():
            if (params or {}).get(key) == value and variant not in have:
                out.append(
                    f"attack '{name}': method '{method}' {lacks}, so its {key}={value} "
                    f"view runs as the {plain} view."
                )
    return out
