"""Progress bars on stderr (tqdm), off when stderr is not a terminal or when disabled."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

_ENABLED = True


def set_enabled(flag: bool) -> None:
    global _ENABLED
    _ENABLED = bool(flag)


def bar(total: int, desc: str, *, leave: bool = False, initial: int = 0):
    disable = (not _ENABLED) or (not sys.stderr.isatty())
    return tqdm(
        total=total,
        desc=desc,
        leave=leave,
        disable=disable,
        file=sys.stderr,
        dynamic_ncols=True,
        initial=initial,
    )
