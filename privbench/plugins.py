"""Third-party plugins: in-process decorators and the ``privbench.plugins`` entry points.

In-process (a script or notebook)::

    @privbench.register_attack("my-attack", params=(Param("iters", int, 50, "steps", low=1),))
    class MyAttack(Attack): ...

From a separately installed package, declare a module (imported: its decorators
register) or a zero-argument function (called) in the ``privbench.plugins`` group::

    [project.entry-points."privbench.plugins"]
    my_plugins = "my_package.privbench_plugins"

Entry points load the first time the registries are used, in every process (CLI,
sweep workers, Ray tasks). A plugin that fails to load is reported, by name and error,
as a warning and in ``privbench list``; it never stops the built-ins from working.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

from privbench.registry import Param

log = logging.getLogger("privbench")

GROUP = "privbench.plugins"


@dataclass(frozen=True)
class FailedPlugin:
    name: str  # the entry point's name
    value: str  # what it points at
    distribution: str
    error: str


_loaded = False
FAILED: list[FailedPlugin] = []


def load_entry_points() -> list[FailedPlugin]:
    """Import every ``privbench.plugins`` entry point once; return those that failed."""
    global _loaded
    if _loaded:
        return FAILED
    _loaded = True  # set first: a plugin importing privbench must not recurse here
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, ModuleType):
                obj()
        except Exception as err:  # a broken third-party plugin is reported, not fatal
            failed = FailedPlugin(ep.name, ep.value, dist, f"{type(err).__name__}: {err}")
            FAILED.append(failed)
            log.warning(
                "privbench plugin '%s' (%s, from %s) failed to load: %s",
                ep.name,
                ep.value,
                dist,
                failed.error,
            )
    return FAILED


def _decorator(kind: str, public: str) -> Callable[..., Callable[[Any], Any]]:
    def register(
        name: str,
        *,
        params: Iterable[Param] = (),
        description: str | None = None,
        tags: Iterable[str] = (),
    ) -> Callable[[Any], Any]:
        from privbench import registries

        return registries()[kind].register(name, params=params, description=description, tags=tags)

    register.__name__ = register.__qualname__ = f"register_{public}"
    register.__doc__ = (
        f"Decorator registering a {kind} plugin under ``name`` (see privbench.plugins)."
    )
    return register


register_augmenter = _decorator("method", "augmenter")
register_attack = _decorator("attack", "attack")
register_defense = _decorator("defense", "defense")
register_model = _decorator("model", "model")
register_dataset = _decorator("dataset", "dataset")
register_partition = _decorator("partition", "partition")
