"""The statistics store of incremental refresh, under ``<output.path>/state/``.

Layout::

    state/store.json               the commit record, replaced atomically, written last
    state/cells-<run_id>.parquet   one row per source file and cell
    state/files-<run_id>.parquet   one row per source file

``files``, sorted by ``path``: ``path``, ``size``, ``mtime_ns`` (the file's
stamp when it was read) and its rows ``read``, ``used`` and dropped by
reason.  ``cells``, sorted by file: ``__file_index`` (the file's row in
``files``), the key columns as ``k0``, ``k1`` … (the order of the
identity's ``keys``; original types), ``__n`` (rows), ``__mean_<i>`` and
``__comoment_<i>_<j>`` (i ≤ j) of the model's numeric variables, centred
at the store's shifts (:func:`pooljob.scan.merge.merge_moments` merges
them); with observation weights ``__n`` is ``Σ w``, the means and
co-moments are weighted, and ``__count`` (rows) and ``__log_w`` (``Σ log w``)
follow (they add); for a binomial or Poisson model instead the per-file counts of
``sql/file_count_stats.sql`` (:func:`count_stat_columns`: used rows, bad
responses, the sums of responses, trials or exposure and log-likelihood
constants, the min and max of the offset and of each covariate; merged by
:func:`pooljob.scan.cell_counts.merge_count_parts`), and shifts all 0.
Every column name is pooljob's own, whatever the source's columns are
called: the keys' names are in the identity only.

``store.json``: ``format``, ``identity`` (what the statistics are: pooljob
version, the source path and ``where`` filter, the formula and family, the
observation weights' column (null without), the
scan's keys and variables, the source's columns and types), ``shifts``,
``run_id`` (the run that wrote it) and each table's file name, size and
SHA-256.

A store is saved only after its run is published: the tables first
(synced), then ``store.json`` through a temporary file renamed over it, so
a reader finds the old store or the new one, whole.  Tables no record names
(left by a killed run) are removed by the next save.  A store that cannot be
read, whose tables do not match their record, or whose identity differs
from the run's is not used: :class:`UnusableStoreError` says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.durable import fsync_path
from pooljob.scan.cell_counts import count_columns
from pooljob.scan.cell_moments import DROP_REASONS, key_aliases

STATE = "state"
RECORD = "store.json"
#: Version of the layout above; a store of another format is rebuilt.
#: 2: the key columns of ``cells`` are named ``k<i>``, not as in the source.
#: 3: the family is part of the identity; binomial and Poisson stores hold counts.
#: 4: the observation weights' column is part of the identity; a weighted store's
#: cells hold weight sums, weighted moments, rows and Σ log w; files count zero weights.
STORE_FORMAT = 4
#: Per-file row accounting, as :func:`pooljob.scan.cell_moments.row_totals` sums it,
#: and the rows of weight 0 (always 0 without observation weights).
FILE_STATS = ("read", "used", *DROP_REASONS, "zero_weight")
#: The extra statistics columns of a weighted store's cells: rows, and Σ log w.
WEIGHTED_STATS = ("__count", "__log_w")
FILE_STAMP = ("path", "size", "mtime_ns")
#: The column of ``cells`` naming a part's file: its row in ``files``.
FILE_INDEX = "__file_index"

_LABELS = {
    "format": "store format",
    "pooljob": "pooljob version",
    "source": "[source] path",
    "where": "[source] where filter",
    "formula": "formula",
    "family": "family",
    "weights": "[model] weights",
    "keys": "scan's key columns",
    "variables": "scan's variables",
}


class UnusableStoreError(Exception):
    """The store cannot serve this run; the message says why (it goes to the log)."""


@dataclass(frozen=True)
class Store:
    """Per-file cell statistics and the stamps of the files they came from.

    Attributes
    ----------
    identity : dict
        What the statistics are (module docstring); JSON values.
    shifts : ndarray, shape (m,)
        The centring shifts every mean is taken about.
    files : polars.DataFrame
        One row per file, sorted by path: ``path``, ``size``, ``mtime_ns``,
        ``read``, ``used`` and one column per drop reason.
    cells : polars.DataFrame
        One row per file and cell, sorted by ``__file_index``, the file's
        row in ``files``.
    run_id : str
        The run that saved it ("" until saved).
    """

    identity: dict[str, Any]
    shifts: NDArray[np.float64]
    files: pl.DataFrame
    cells: pl.DataFrame
    run_id: str = ""


def stat_columns(m: int) -> list[str]:
    """The statistics columns of ``cells`` for ``m`` variables."""
    names = ["__n", *(f"__mean_{i}" for i in range(m))]
    return names + [f"__comoment_{i}_{j}" for i in range(m) for j in range(i, m)]


def count_stat_columns(covariates: int) -> list[str]:
    """The statistics columns of ``cells`` of a count model with ``covariates`` covariates."""
    return [f"__{c}" for c in count_columns(covariates)]


def _difference(stored: dict[str, Any], identity: dict[str, Any]) -> str:
    """Why a store of identity ``stored`` cannot serve ``identity`` ("" if it can)."""
    for key, now in identity.items():
        was = stored.get(key)
        if was == now:
            continue
        if key == "columns" and isinstance(was, dict):
            changes = [f"new column {c!r}" for c in now if c not in was]
            changes += [f"column {c!r} is gone" for c in was if c not in now]
            changes += [
                f"{c!r} {was[c]} -> {t}" for c, t in now.items() if c in was and was[c] != t
            ]
            return "the source's columns changed: " + ", ".join(changes[:3])
        return f"the {_LABELS.get(key, key)} changed ({was!r} -> {now!r})"
    return ""


def _line(exc: BaseException) -> str:
    """The first line of an exception's message (logs are one line per event)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_table(folder: Path, entry: Any, columns: list[str]) -> pl.DataFrame:
    name = str(entry["file"])
    if Path(name).name != name:
        raise UnusableStoreError(f"{RECORD} names a table outside {str(folder)!r}: {name!r}")
    try:
        data = (folder / name).read_bytes()
    except OSError as exc:
        raise UnusableStoreError(f"its table {name} cannot be read ({exc.strerror})") from None
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UnusableStoreError(f"its table {name} does not match {RECORD} (changed or truncated)")
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # polars and Arrow raise many kinds for a damaged file
        raise UnusableStoreError(f"its table {name} is not valid Parquet ({_line(exc)})") from None
    if frame.columns != columns:
        raise UnusableStoreError(f"its table {name} has columns {frame.columns}, not {columns}")
    return frame


def load_store(output: Path, identity: dict[str, Any], stats: list[str] | None = None) -> Store:
    """Read the store of ``output`` if it can serve a run of ``identity``.

    ``stats`` are the statistics columns its cells must have (default: the
    moments of the identity's variables, :func:`stat_columns`).

    Raises
    ------
    UnusableStoreError
        No store yet, an unreadable or damaged one, or one of another
        identity; the message says which.
    """
    folder = output / STATE
    path = folder / RECORD
    if not path.exists():
        raise UnusableStoreError("there is no statistics store yet")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        stored, tables, run_id = record["identity"], record["tables"], str(record["run_id"])
        shifts = np.asarray(record["shifts"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnusableStoreError(
            f"{str(path)!r} is not a readable store record ({_line(exc)})"
        ) from None
    if not isinstance(stored, dict):
        raise UnusableStoreError(f"{str(path)!r} is not a readable store record (no identity)")
    difference = _difference(stored, identity)
    if difference:
        raise UnusableStoreError(difference)
    m = len(identity["variables"])
    if shifts.shape != (m,):
        raise UnusableStoreError(f"{RECORD} has {shifts.size} shifts for {m} variables")
    try:
        files = _read_table(folder, tables["files"], [*FILE_STAMP, *FILE_STATS])
        keys = [FILE_INDEX, *key_aliases(tuple(identity["keys"]))]
        cells = _read_table(folder, tables["cells"], keys + (stats or stat_columns(m)))
    except (KeyError, TypeError) as exc:
        raise UnusableStoreError(f"{RECORD} does not describe its tables ({_line(exc)})") from None
    if cells.height and int(cells[FILE_INDEX].to_numpy().max()) >= files.height:
        raise UnusableStoreError("its cells name files its file table does not list")
    if not files["path"].is_sorted() or not cells[FILE_INDEX].is_sorted():
        raise UnusableStoreError("its tables are not sorted by file")
    return Store(identity=stored, shifts=shifts, files=files, cells=cells, run_id=run_id)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_store(output: Path, run_id: str, store: Store) -> Path:
    """Save ``store`` as the store of ``output``, atomically; return ``store.json``'s path.

    Tables are written and synced under names of their own, then the record
    is renamed over ``store.json`` (the commit), then the folder is synced
    and the tables of older stores removed.  If anything fails before the
    rename, what this call wrote is removed and the old store stays whole.
    """
    folder = output / STATE
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / RECORD
    tmp = folder / f".{RECORD}.{run_id}"
    written: list[Path] = []
    tables: dict[str, dict[str, Any]] = {}
    try:
        for name, frame in (("cells", store.cells), ("files", store.files)):
            buffer = io.BytesIO()
            frame.write_parquet(buffer)
            data = buffer.getvalue()
            path = folder / f"{name}-{run_id}.parquet"
            written.append(path)
            _write(path, data)
            tables[name] = {
                "file": path.name,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        record = {
            "format": STORE_FORMAT,
            "run_id": run_id,
            "saved_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "identity": store.identity,
            "shifts": [float(s) for s in store.shifts],
            "files": store.files.height,
            "cells": store.cells.height,
            "tables": tables,
        }
        written.append(tmp)
        _write(tmp, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
        os.replace(tmp, record_path)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    with contextlib.suppress(OSError):
        fsync_path(folder)
    keep = {t["file"] for t in tables.values()}
    for entry in folder.iterdir():
        old_table = entry.name.startswith(("cells-", "files-")) and entry.suffix == ".parquet"
        if (old_table and entry.name not in keep) or entry.name.startswith(f".{RECORD}."):
            with contextlib.suppress(OSError):
                entry.unlink()
    return record_path
