"""Result rows and the append-only JSONL store.

One flat row per (run, attack). Rows are appended with a single ``write`` on a file
opened with ``O_APPEND`` under an exclusive ``flock``, then fsynced: concurrent writers
never interleave, and a killed process leaves at most an incomplete last line, which
:meth:`ResultStore.read` skips. Reconstruction arrays are written to a temporary file
and renamed into place.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from privbench.errors import ATTACK_DIVERGED

RESULT_FIELDS = (
    "method",
    "attack",
    "defense",
    "threat",
    "dataset",
    "partition",
    "model",
    "algorithm",
    "seed",
    "rounds",
    "clients",
    "clients_per_round",
    "attack_round",
    "victims",
    "attack_batch",
    "victim_steps",
    "accuracy",
    "client_acc_mean",
    "client_acc_var",
    "class_acc_var",
    "macro_f1",
    "synthetic_share",
    "guess_identified",
    "worst_of",
    "psnr",
    "psnr_affine",
    "psnr_augmented",
    "ssim",
    "mse",
    "label_acc",
    "n_images",
    "bytes_up",
    "bytes_down",
    "bytes_by_kind",
    "epsilon",
    "delta",
    "accountant",
    "epsilon_record",
    "delta_record",
    "epsilon_client",
    "delta_client",
    "status",
    "error",
    "wall_s",
    "train_s",
    "attack_s",
    "config_hash",
    "versions",
)


@dataclass
class Result:
    """One row: utility, leakage, communication and privacy spend of one (run, attack)."""

    method: str
    attack: str
    defense: str
    threat: str
    dataset: str
    partition: str
    model: str
    algorithm: str
    seed: int
    rounds: int
    clients: int
    clients_per_round: int
    attack_round: int
    victims: int
    attack_batch: int
    victim_steps: int
    accuracy: float | None = None
    client_acc_mean: float | None = None
    client_acc_var: float | None = None
    class_acc_var: float | None = None
    macro_f1: float | None = None
    synthetic_share: float | None = None  # mean share of synthetic samples in training sets
    # guess=enumerate: share of victims whose private choice (FedMix's X_g entry) the
    # attack identified; None for other guesses and methods with nothing to enumerate
    guess_identified: float | None = None
    # attack "worst-case": per victim, the attack (NAME or NAME@GUESS) whose
    # reconstruction of its batch scored the highest PSNR, comma-separated in victim order
    worst_of: str | None = None
    psnr: float | None = None
    # PSNR after a per-channel least-squares affine fit of each reconstruction to its
    # private image (what a train-mode BatchNorm gradient determines); >= psnr
    psnr_affine: float | None = None
    # RandAugment, TrivialAugment: against the private image under the public augmentation
    # draw (of the method's op space) the reconstruction matches best, or as is when closer
    psnr_augmented: float | None = None
    ssim: float | None = None
    mse: float | None = None
    label_acc: float | None = None
    label_dist_error: float | None = None
    n_images: int | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    bytes_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None
    # Per level, never added: a record of a client (DP-SGD) and a whole client (client DP)
    epsilon_record: float | None = None
    delta_record: float | None = None
    epsilon_client: float | None = None
    delta_client: float | None = None
    status: str = "ok"
    error: str | None = None
    wall_s: float | None = None
    train_s: float | None = None
    attack_s: float | None = None
    config_hash: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    reconstruction_file: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


class Results(list):
    """The rows of a run: a plain list of :class:`Result` with a pandas view."""

    def to_frame(self):
        """One DataFrame row per result, columns in :data:`RESULT_FIELDS` order first."""
        import pandas as pd

        frame = pd.DataFrame([r.to_dict() for r in self])
        first = [c for c in RESULT_FIELDS if c in frame.columns]
        return frame[first + [c for c in frame.columns if c not in first]]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_json_safe(data), fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read_all(fd: int) -> bytes:
    size, chunks, offset = os.fstat(fd).st_size, [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _key_of(row: Any) -> tuple[Any, Any] | None:
    return (row.get("config_hash"), row.get("attack")) if isinstance(row, dict) else None


# Errors a rerun of the same configuration gives again (training on a CPU is
# deterministic): training diverged at this learning rate. Such a row settles its point
# as an ok row does, so a resumed sweep or benchmark does not run it again and write a
# second error row. Every other error (a worker that died, a full disk, user code that
# raised) is retried.
# An attack whose every restart diverged (AttackDivergedError) reproduces too; rows
# written before that error had a type of its own say RuntimeError.
DIVERGED = "DivergedError:"
REPRODUCIBLE_ERRORS = (DIVERGED, "AttackDivergedError:")
_ATTACK_DIVERGED_BEFORE = re.compile(rf"RuntimeError: [\w@.-]+: {re.escape(ATTACK_DIVERGED)}$")


def _error_starts(row: Any, prefixes: str | tuple[str, ...]) -> bool:
    return (
        isinstance(row, dict)
        and row.get("status") == "error"
        and str(row.get("error") or "").startswith(prefixes)
    )


def diverged(row: Any) -> bool:
    """Whether ``row`` is a run whose training diverged (NaN or infinite weights)."""
    return _error_starts(row, DIVERGED)


# What the rows of a run that diverged after its attacked round add to the divergence
# (the attacks ran on the messages sent before it).
ATTACKED_BEFORE = "the attacks ran on the messages of round"


def settled(row: Any) -> bool:
    """Whether ``row`` settles its (configuration, attack): ok, or an error that a rerun
    reproduces (:data:`REPRODUCIBLE_ERRORS`). An attack's row of a run that diverged in
    or after its attacked round, written before such attacks ran, does not: a rerun
    gives the attack's scores."""
    ok = isinstance(row, dict) and row.get("status") == "ok"
    old = _error_starts(row, "RuntimeError:") and _ATTACK_DIVERGED_BEFORE.match(row["error"])
    return ok or (_error_starts(row, REPRODUCIBLE_ERRORS) and not _unattacked(row)) or bool(old)


def _unattacked(row: dict) -> bool:
    error, attacked = str(row["error"]), row.get("attack_round")
    found = re.search(r"diverged in round (\d+)", error)
    late = found is not None and attacked is not None and int(found[1]) >= attacked
    return late and row.get("attack") not in (None, "none") and ATTACKED_BEFORE not in error


def _ok_keys(data: bytes) -> set[tuple[Any, Any]]:
    """(config hash, attack) of every settled row in a store's bytes (torn lines
    ignored)."""
    keys = set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if settled(row):
            keys.add(_key_of(row))
    return keys


# The fields every privbench row has; a line without them is not a row.
ROW_KEYS = ("method", "attack", "status", "config_hash")


def inside(directory: str, relative: Any) -> str:
    """``directory/relative``, refused with a :class:`ParameterError` when ``relative`` is
    not a relative path that stays inside ``directory``."""
    from privbench.errors import ParameterError

    root = os.path.realpath(directory)
    if (
        not isinstance(relative, str)
        or not relative
        or os.path.isabs(relative)
        or ".." in relative.replace("\\", "/").split("/")
    ):
        raise ParameterError(
            f"A row names the file {relative!r}; row files must be relative paths inside "
            f"the result folder {directory} (no absolute path, no '..')."
        )
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root:
        raise ParameterError(
            f"A row names the file {relative!r}, which resolves outside the result folder "
            f"{directory} (through a link); refused."
        )
    return path


class ResultStore:
    """``DIR/results.jsonl`` (or ``DIR/<filename>``) plus ``DIR/reconstructions/*.npz``."""

    def __init__(self, directory: str, filename: str = "results.jsonl", *, skip_done: bool = False):
        self.directory = os.path.abspath(directory)
        self.path = os.path.join(self.directory, filename)
        # True (sweep workers): under the write lock, drop every row whose configuration
        # and attack already have a settled row, so a late or repeated point never writes a
        # second row for what is done.
        self.skip_done = skip_done

    def append(self, rows: list[Result] | list[dict[str, Any]]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        text = "".join(
            json.dumps(r.to_dict() if isinstance(r, Result) else _json_safe(r), sort_keys=False)
            + "\n"
            for r in rows
        )
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if self.skip_done:
                    done = _ok_keys(_read_all(fd))
                    text = "".join(
                        line
                        for line in text.splitlines(keepends=True)
                        if _key_of(json.loads(line)) not in done
                    )
                data = text.encode()
                if not data:
                    return
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # after a torn line: start a line of our own
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def read(self, *, required: tuple[str, ...] = ROW_KEYS) -> list[dict[str, Any]]:
        """Every row of the file. Lines that are not rows — not JSON, JSON that is not an
        object, an object without the ``required`` fields — are skipped with one warning
        that counts them and says which lines and why (a torn last line is what a writer
        killed mid-write leaves). ``required=()`` reads any JSON objects (the benchmark
        scripts' own row stores)."""
        if not os.path.exists(self.path):
            return []
        rows: list[dict[str, Any]] = []
        skipped: list[str] = []
        # Rows end with "\n" only (JSON Lines): a "\r" inside a line is part of it.
        with open(self.path, encoding="utf-8", errors="replace", newline="") as fh:
            lines = [line + "\n" for line in fh.read().split("\n")]
        lines[-1] = lines[-1][:-1]  # the text after the last "\n": "" or a torn row
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                torn = lineno == len(lines) and not line.endswith("\n")
                skipped.append(f"{lineno} ({'torn: a writer was killed' if torn else 'not JSON'})")
                continue
            if not isinstance(obj, dict):
                skipped.append(f"{lineno} (JSON {type(obj).__name__}, not an object)")
                continue
            if missing := [k for k in required if k not in obj]:
                skipped.append(f"{lineno} (no {', '.join(missing)})")
                continue
            rows.append(obj)
        if skipped:
            shown = "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
            warnings.warn(
                f"{self.path}: skipped {len(skipped)} line(s) that are not result rows: "
                f"line {shown}",
                stacklevel=2,
            )
        return rows

    def file_path(self, relative: str) -> str:
        """The absolute path of a file a row names (``reconstruction_file``), refused unless
        it lies inside this result folder: a row cannot make a reader open an absolute
        path or climb out with ``..``."""
        return inside(self.directory, relative)

    def finished_hashes(self) -> set[str]:
        """Hashes of the configurations with a settled row (ok, or diverged: see
        :func:`settled`)."""
        return {r["config_hash"] for r in self.read() if settled(r)}

    def save_arrays(self, name: str, **arrays: np.ndarray) -> str:
        folder = os.path.join(self.directory, "reconstructions")
        os.makedirs(folder, exist_ok=True)
        final = os.path.join(folder, name + ".npz")
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, **arrays)
            os.replace(tmp, final)
        except BaseException:
            os.unlink(tmp)
            raise
        return os.path.relpath(final, self.directory)
