"""Round checkpoints: a long run killed between rounds resumes where it stopped.

A run with a result store (``privbench.run(cfg, out=...)``, the CLI, sweeps, the
reproduction scripts) saves the round loop's whole state under the store's
``checkpoints/`` folder, keyed by the config hash, at the end of a round once
``every`` seconds have passed since the last save (short runs never write one). The
state is everything the loop carries from one round to the next: the global model, the
clients' states, the method's client and server roles, the defenses (their
accountants), the channel's log, the sampling RNG, torch's global RNG, the victims'
records and the history. A rerun of the same configuration loads it and continues
with the next round; the finished row is the row an uninterrupted run writes (a test
checks every field but the timings), and the checkpoint is deleted once the row is
stored.

A checkpoint written by other code (a digest of privbench's and its built-in plugins'
source files: an edited checkout counts), other versions (torch, NumPy, ...), another
thread count, or one that no longer unpickles, is not used: the run starts again from
round 0 and says so.
"""

from __future__ import annotations

import copyreg
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from privbench.errors import ParameterError

log = logging.getLogger("privbench")

FORMAT = 1
DEFAULT_EVERY_S = 300.0  # seconds between saves: a killed run loses at most this much


def _readonly(d: dict) -> MappingProxyType:
    return MappingProxyType(d)


def _mappingproxy(m: MappingProxyType) -> tuple:
    return _readonly, (dict(m),)


class _Pickler(pickle.Pickler):
    """Pickles the loop's state; the experiment itself (its data and ground truth, rebuilt
    identically from the config) is a reference, not a copy. Read-only views (the frozen
    payloads the channel recorded) are saved as their contents."""

    dispatch_table = {**copyreg.dispatch_table, MappingProxyType: _mappingproxy}

    def __init__(self, fh, experiment: Any):
        super().__init__(fh, protocol=pickle.HIGHEST_PROTOCOL)
        self._experiment = experiment

    def persistent_id(self, obj: Any) -> str | None:
        return "experiment" if obj is self._experiment else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, experiment: Any):
        super().__init__(fh)
        self._experiment = experiment

    def persistent_load(self, pid: Any) -> Any:
        if pid != "experiment":
            raise pickle.UnpicklingError(f"unknown reference in a checkpoint: {pid!r}")
        return self._experiment


CODE_PACKAGES = ("privbench", "augmenters", "attacks", "defenses")


@lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 over the source files of privbench and its built-in plugin packages: the
    code whose objects a checkpoint holds (the version string does not change when a
    checkout is edited)."""
    digest = hashlib.sha256()
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for path in sorted(Path(root).rglob("*.py")):
                digest.update(f"{name}/{path.relative_to(root)}".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _stamp() -> dict[str, Any]:
    """What must match for a saved state to continue bit for bit."""
    from privbench.results.machine import packages

    return {
        "format": FORMAT,
        "code": code_digest(),
        # not the CPU: resumed on another one a run continues within float rounding
        "versions": packages(),
        "threads": torch.get_num_threads(),
    }


class RoundCheckpoint:
    """The checkpoint of one configuration (``path``), saved every ``every`` seconds."""

    def __init__(self, path: str, *, every: float = DEFAULT_EVERY_S):
        if not every >= 0:  # also refuses NaN
            raise ParameterError(
                f"checkpoint_every: given {every!r}; allowed: seconds >= 0 (0: after every "
                "round), or None for no checkpoints"
            )
        self.path = os.path.abspath(path)
        self.every = float(every)
        self._last = time.monotonic()

    @classmethod
    def in_store(cls, directory: str, config_hash: str, **kw: Any) -> RoundCheckpoint:
        return cls(os.path.join(directory, "checkpoints", f"{config_hash}.pkl"), **kw)

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def save(self, experiment: Any, state: dict[str, Any]) -> None:
        """Write ``state`` (the loop's variables after a round) atomically. State that
        cannot be saved (a plugin holding an open file, a lambda), or a write that fails
        (a full disk), stops checkpointing for this run with a warning that names it;
        the run goes on."""
        buf = io.BytesIO()
        try:
            _Pickler(buf, experiment).dump(
                {"stamp": _stamp(), "torch_rng": torch.get_rng_state(), "state": state}
            )
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            log.warning("no checkpoints for this run: its state cannot be saved (%s)", err)
            self.every = float("inf")
            return
        try:
            self._write(buf)
        except OSError as err:  # a full disk costs the checkpoints, not the run
            log.warning("no more checkpoints for this run: writing %s failed (%s)", self.path, err)
            self.every = float("inf")
            return
        self._last = time.monotonic()
        log.info("checkpoint after round %d: %s", state["next_round"], self.path)

    def _write(self, buf: io.BytesIO) -> None:
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def load(self, experiment: Any) -> dict[str, Any] | None:
        """The saved state (torch's RNG restored), or None: no checkpoint, or one that
        cannot continue this run bit for bit (then it is ignored, with a warning)."""
        if not os.path.exists(self.path):
            return None
        try:
            with open(self.path, "rb") as fh:
                saved = _Unpickler(fh, experiment).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            log.warning(
                "checkpoint %s cannot be read (%s): starting again from round 0", self.path, err
            )
            return None
        stamp = _stamp()
        if saved.get("stamp") != stamp:
            log.warning(
                "checkpoint %s was written by %s, this run is %s: starting again from round 0",
                self.path,
                saved.get("stamp"),
                stamp,
            )
            return None
        torch.set_rng_state(saved["torch_rng"])
        log.warning("resuming from the checkpoint after round %d", saved["state"]["next_round"])
        return saved["state"]

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
