"""Plugin registries and their typed parameters.

Every plugin kind (augmenters, attacks, defenses, datasets, partitions, models,
algorithms, threat models) has one :class:`Registry`. A plugin declares its
parameters as :class:`Param` specs; ``Registry.create`` validates them all at once
and raises a :class:`~privbench.errors.ParameterError` naming the parameter, the
value given and what is allowed. The CLI's flags, ``privbench list`` and every
"valid values" message are built from these registries, never from hand-kept lists.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from privbench.errors import ParameterError, UnknownNameError

T = TypeVar("T")

_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One typed, range-checked plugin parameter.

    ``low``/``high`` bound numbers (``low_open``/``high_open`` make the bound strict);
    ``choices`` restricts to a set; ``nullable`` allows ``None``; ``parse`` turns a
    CLI string into the value (defaults to ``type``). A float must be finite unless
    ``allow_inf`` (NaN never passes).
    """

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    parse: Callable[[str], Any] | None = None
    allow_inf: bool = False

    def allowed(self) -> str:
        """Human description of the allowed values, used in error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        number = "a number" if self.allow_inf else "a finite number"
        kind = {int: "an integer", float: number, bool: "true or false", str: "a string"}.get(
            self.type, self.type.__name__
        )
        text = kind + (" " + " and ".join(parts) if parts else "")
        return text + (" (or none)" if self.nullable else "")

    def check(self, value: Any, owner: str) -> Any:
        """Coerce and validate ``value``; raise ParameterError otherwise."""

        def fail() -> ParameterError:
            return ParameterError(
                f"The '{self.name}' parameter of {owner} must be {self.allowed()}. "
                f"Got {value!r} instead."
            )

        if value is None:
            if self.nullable:
                return None
            raise fail()
        if isinstance(value, str) and (self.type is not str or self.parse):
            try:
                value = self.parse(value) if self.parse else _parse_scalar(self.type, value)
            except (TypeError, ValueError):
                raise fail() from None
            if value is None and self.nullable:
                return None
        if self.type is bool:
            if not isinstance(value, bool):
                raise fail()
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise fail()
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail()
            value = float(value)
            if math.isnan(value) or (math.isinf(value) and not self.allow_inf):
                raise fail()
        elif not isinstance(value, self.type):
            raise fail()
        if self.choices is not None and value not in self.choices:
            raise fail()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                raise fail()
            if self.high is not None and (
                value > self.high or (self.high_open and value == self.high)
            ):
                raise fail()
        return value


def _parse_scalar(kind: type, text: str) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    raise TypeError(kind)


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'.{hint} Valid {kind}s: {', '.join(valid)}."


@dataclass
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    params: tuple[Param, ...]
    description: str
    tags: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """Top-level package that registered it ('privbench' for built-ins)."""
        return (getattr(self.factory, "__module__", None) or "?").split(".")[0]


def first_doc_line(obj: Any) -> str:
    """The first line of an object's docstring ('' without one): its one-line description."""
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return lines[0] if lines else ""


def import_object(spec: str, kind: str) -> Any:
    """The object an import string ``package.module:attribute`` names.

    The working directory is importable, as with ``python -m``: a ``nets.py`` next to
    the user's shell is found by ``--model nets:make_net``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UnknownNameError(
            f"'{spec}' is not an import string for a {kind}: write 'package.module:callable'."
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownNameError(
            f"Cannot import {kind} '{spec}': {err}. The module must be importable from the "
            "working directory or PYTHONPATH."
        ) from None
    except Exception as err:  # the user's module fails while it is imported
        from privbench.errors import UserCodeError

        raise UserCodeError(
            f"Cannot import {kind} '{spec}': importing '{module_name}' raised "
            f"{type(err).__name__}: {err}"
        ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))
            raise UnknownNameError(
                f"Cannot import {kind} '{spec}': '{module_name}' has no attribute '{attr}' "
                f"(it has: {', '.join(public[:20]) or 'nothing public'})."
            )
        obj = getattr(obj, part)
    return obj


class Configurable:
    """A plugin whose parameters are the ``Param``s it is registered with: each default is
    written once, in its ``Param``. Built with any subset of them (the registry passes all,
    resolved), the rest take their declared defaults; ``params`` holds them all. A name
    it does not declare is a ``TypeError``, as for any Python call."""

    declared_params: tuple[Param, ...] = ()  # set by Registry.register

    def __init__(self, **params: Any):
        defaults = {p.name: p.default for p in type(self).declared_params}
        unknown = sorted(set(params) - set(defaults))
        if unknown and defaults:
            raise TypeError(
                f"{type(self).__name__} got unexpected parameter(s) {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(defaults))}"
            )
        self.params: dict[str, Any] = {**defaults, **params}


@dataclass
class Registry(Generic[T]):
    """Name -> plugin factory, with parameter validation and teaching errors.

    >>> r = Registry("widget")
    >>> @r.register("box", params=(Param("size", int, 1, "edge", low=1),))
    ... def make_box(size): return ("box", size)
    >>> r.create("box", size=3)
    ('box', 3)
    """

    kind: str
    entries: dict[str, Entry[T]] = field(default_factory=dict)
    # Turns the object an import string names ("pkg.mod:make") into an Entry; None: this
    # kind only takes registered names.
    importer: Callable[[str, Any], Entry[T]] | None = None
    # ``NAME@VALUE`` names plugin NAME with the one of these parameters whose choices
    # include VALUE set to it (attacks: the guess, ``dlg@enumerate``, or the synthetic
    # samples' model, ``dlg@joint``, or the dummy's box, ``dlg@sigmoid``), so one run can
    # hold several variants of one plugin.
    variant_params: tuple[str, ...] = ()
    _imported: dict[str, Entry[T]] = field(default_factory=dict, repr=False)

    def register(
        self,
        name: str,
        *,
        params: Iterable[Param] = (),
        description: str | None = None,
        tags: Iterable[str] = (),
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self.entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            declared = tuple(params) or tuple(getattr(factory, "PARAMS", ()))
            doc = description or first_doc_line(factory)
            self.entries[name] = Entry(name, factory, declared, doc, tuple(tags))
            if isinstance(factory, type) and issubclass(factory, Configurable):
                factory.declared_params = declared  # its defaults, written once
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self.entries)

    def is_import_string(self, name: object) -> bool:
        return self.importer is not None and isinstance(name, str) and ":" in name

    def split_variant(self, name: str) -> tuple[str, str | None]:
        """(plugin name, variant value) of ``NAME@VALUE``; (name, None) otherwise."""
        if not self.variant_params or not isinstance(name, str) or "@" not in name:
            return name, None
        base, _, value = name.partition("@")
        return base, value

    def variant_param(self, name: str) -> tuple[str, str] | None:
        """(parameter, value) that variant ``name`` sets; None for a plain name."""
        base, value = self.split_variant(name)
        if value is None:
            return None
        entry = self.entry(base)
        own = [p for p in entry.params if p.name in self.variant_params]
        for p in own:
            if p.choices is not None and value in p.choices:
                return p.name, value
        allowed = sorted({c for p in own for c in (p.choices or ())})
        raise UnknownNameError(
            f"{self.kind} '{name}': '@{value}' is not a variant of '{base}' "
            f"(its variants: {', '.join('@' + a for a in allowed) or 'none'})."
        )

    def __contains__(self, name: object) -> bool:
        base = self.split_variant(name)[0] if isinstance(name, str) else name
        return base in self.entries or self.is_import_string(base)

    def entry(self, name: str) -> Entry[T]:
        base, value = self.split_variant(name)
        if value is not None:
            entry = self.entry(base)
            if not any(p.name in self.variant_params for p in entry.params):
                raise UnknownNameError(
                    f"{self.kind} '{name}': '{base}' has no variants (no parameter "
                    f"{' or '.join(repr(v) for v in self.variant_params)})."
                )
            return entry
        if name in self.entries:
            return self.entries[name]
        if self.is_import_string(name):
            if name not in self._imported:
                self._imported[name] = self.importer(name, import_object(name, self.kind))
            return self._imported[name]
        message = unknown_name_message(self.kind, name, self.entries)
        if self.importer is not None:
            message += (
                f" Or give an import string 'package.module:callable' for your own {self.kind}."
            )
        raise UnknownNameError(message)

    def resolve_params(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate ``params`` for plugin ``name`` and fill in defaults.

        Every problem is collected and reported in one error.
        """
        entry = self.entry(name)
        params = dict(params or {})
        if (variant := self.variant_param(name)) is not None:
            params[variant[0]] = variant[1]  # the variant's value wins over a flat parameter
        owner = f"{self.kind} '{name}'"
        specs = {p.name: p for p in entry.params}
        problems: list[str] = []
        for key in sorted(set(params) - set(specs)):
            valid = ", ".join(sorted(specs)) or "none"
            problems.append(f"{owner} has no parameter '{key}' (its parameters: {valid}).")
        resolved: dict[str, Any] = {}
        for spec in entry.params:
            value = params.get(spec.name, spec.default)
            try:
                resolved[spec.name] = spec.check(value, owner)
            except ParameterError as err:
                problems.append(str(err))
        if problems:
            raise ParameterError(" ".join(problems))
        return resolved

    def create(self, name: str, **params: Any) -> T:
        resolved = self.resolve_params(name, params)
        return self.entry(name).factory(**resolved)

    def build(self, name: str, resolved: dict[str, Any]) -> T:
        """Create plugin ``name`` from parameters already validated and completed (by
        :meth:`resolve_params`, as ``RunConfig.resolve`` does): each parameter is checked
        once, when the configuration resolves, not again for every object built."""
        entry = self.entry(name)
        if set(resolved) != {p.name for p in entry.params}:
            raise ValueError(
                f"{self.kind} '{name}': build() takes resolved parameters (all of "
                f"{sorted(p.name for p in entry.params)}); got {sorted(resolved)}"
            )
        return entry.factory(**resolved)
