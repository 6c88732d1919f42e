"""Publish a run as Delta Lake tables (``[output] format = "delta"``), with delta-rs.

Layout under ``[output] path``::

    estimates/  effects/  coefficients/  components/    one Delta table per published table
    poststratified/  predictions/                       (with [poststratify], [predict])
    runs/                                               a Delta table: the readable runs
    state/  .lock                                       as with format = "parquet"

``[output] path`` may be ``s3://bucket/prefix``: the same tables under the
prefix, written by delta-rs with ``storage_options`` from the ``AWS_*``
environment (:func:`pooljob.scan.s3.storage_options`); the lock and the
statistics store are those of an S3 Parquet output.  delta-rs creates each
commit file with a conditional PUT (``If-None-Match: *``), so two writers
never both write one version; ``runs`` is committed conditionally on the
version this run read, and each table's commit is checked to be this run's,
so an overlapping run fails rather than loses a run (docs/object-storage.md).

Every run is one ``overwrite`` commit of each table, whose rows carry a last
column ``run_id`` and whose commit info carries ``pooljob.run_id``,
``pooljob.schema_version`` and ``pooljob.table`` (the key-value metadata of
the Parquet files of ``format = "parquet"``).  The tables are written one
after the other, each synced to disk, and then ``runs`` is overwritten in
one commit with one row per readable run: ``run_id``, ``sequence``,
``finished_at``, ``schema_version``, ``tables`` (JSON: each table's Delta
version written by the run) and ``manifest`` (JSON).  A Delta commit is
atomic, so a run killed at any moment leaves every table at a complete
version, and ``runs`` naming only runs all of whose tables were committed.

**The protocol for a consistent run**: read ``runs`` (its latest version),
take the row with the greatest ``sequence``, and open each table at the
version ``tables`` names (time travel by version).  :func:`latest_run`
does the first step.  Reading a table's latest version instead gives a
complete table, but after a run killed between two tables, not
necessarily the same run as another table's latest version: its
``run_id`` column tells.

**Retention** (``keep_runs``): ``runs`` keeps the last ``keep_runs`` runs;
after each run every table is vacuumed (delta-rs, with no retention period)
keeping the files of the versions those runs name, and removing the files
of older versions and of killed runs.  The commit log itself is kept as
Delta keeps it (``delta.logRetentionDuration``, 30 days by default, once a
checkpoint is written: every 10 commits, ``delta.checkpointInterval`` of
the tables pooljob creates).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pooljob.durable import fsync_path
from pooljob.errors import ConfigError, InputError, PooljobError, PublishError
from pooljob.outputs.oserror import errno_of, os_error
from pooljob.outputs.schema import SCHEMA_VERSION, table_metadata, write_table
from pooljob.scan import s3

__all__ = [
    "RUNS_TABLE",
    "DeltaRun",
    "check_layout",
    "export_run",
    "is_delta_output",
    "latest_run",
    "location",
    "publish_delta",
    "require_deltalake",
]

#: The Delta table of the readable runs.
RUNS_TABLE = "runs"
#: The column every Delta table gains.
RUN_ID = "run_id"

log = logging.getLogger("pooljob")


def require_deltalake() -> None:
    """Import deltalake or raise a one-line ConfigError saying how to install it."""
    try:
        import deltalake  # noqa: F401
    except ImportError:
        raise ConfigError(
            '[output] format = "delta" needs the deltalake package, which is not installed; '
            "install it with: pip install 'pooljob[delta]'"
        ) from None


#: An output: a local folder, or an ``s3://bucket/prefix`` URL (a str).
Output = Path | str


def location(output: str | Path) -> Output:
    """``output`` as :data:`Output`: an ``s3://`` URL (no trailing ``/``) or a Path."""
    text = str(output)
    return text.rstrip("/") if s3.is_s3(text) else Path(output)


def _uri(output: Output, table: str) -> str:
    return f"{output}/{table}" if isinstance(output, str) else str(output / table)


def _options(output: Output) -> dict[str, str] | None:
    """delta-rs ``storage_options`` of an S3 output (from ``AWS_*``); None for a local one."""
    return s3.storage_options(PublishError) if isinstance(output, str) else None


def _has_log(output: Output, table: str) -> bool:
    """Whether ``table`` of ``output`` has a ``_delta_log`` (a listing: no deltalake needed)."""
    if isinstance(output, Path):
        return (output / table / "_delta_log").is_dir()
    return bool(s3.list_names(f"{output}/{table}/_delta_log", s3.filesystem(PublishError)))


def _open(output: Output, table: str) -> Any:
    """The Delta table ``table`` of ``output`` at its latest version; None if there is none."""
    if isinstance(output, Path) and not (output / table / "_delta_log").is_dir():
        return None
    from deltalake.exceptions import TableNotFoundError

    try:  # (not DeltaTable.is_deltatable: its listing hangs against some S3 servers)
        return _table(output, table)
    except TableNotFoundError:
        return None


def is_delta_output(output: Output) -> bool:
    """Whether ``output`` holds a ``runs`` Delta table (a listing; no deltalake needed).

    Raises
    ------
    InputError
        S3 cannot be read, or the ``AWS_*`` settings are inconsistent.
    """
    try:
        return _has_log(output, RUNS_TABLE)
    except PooljobError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"reading {str(output)!r} failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _table(output: Output, table: str, version: int | None = None) -> Any:
    """The Delta table ``table`` of ``output`` (at ``version``, default the latest)."""
    from deltalake import DeltaTable

    return DeltaTable(_uri(output, table), version=version, storage_options=_options(output))


def check_layout(output: Output, fmt: str) -> None:
    """Refuse to publish one format into an output path that holds the other.

    Raises
    ------
    PublishError
        ``format = "delta"`` and the path has a ``current`` link (on S3
        ``current.json``) of Parquet runs, or ``format = "parquet"`` and
        ``runs`` is a Delta table.
    """
    if isinstance(output, str):
        try:
            fs = s3.filesystem(PublishError)
            parquet = s3.exists(f"{output}/current.json", fs)
            delta = fmt == "parquet" and _has_log(output, RUNS_TABLE)
        except OSError as exc:
            raise s3.s3_error(exc, f"reading {output!r}", PublishError) from None
        if fmt == "delta" and parquet:
            raise PublishError(
                f'[output] format = "delta", but {output!r} holds Parquet runs '
                "(current.json, runs/...); choose another [output] path or remove them"
            )
        if delta:
            raise PublishError(
                f'[output] format = "parquet", but {output!r} holds Delta tables '
                '(runs/_delta_log); set format = "delta" or choose another [output] path'
            )
        return
    runs = output / RUNS_TABLE
    # Parquet runs are folders; a first Delta run killed early leaves files only
    foreign = runs.is_dir() and any(p.is_dir() and p.name != "_delta_log" for p in runs.iterdir())
    if fmt == "delta" and ((output / "current").is_symlink() or foreign):
        raise PublishError(
            f'[output] format = "delta", but {str(output)!r} holds Parquet runs '
            "(current -> runs/...); choose another [output] path or remove them"
        )
    if fmt == "parquet" and _has_log(output, RUNS_TABLE):
        raise PublishError(
            f'[output] format = "parquet", but {str(output)!r} holds Delta tables '
            '(runs/_delta_log); set format = "delta" or choose another [output] path'
        )


@dataclass(frozen=True)
class DeltaRun:
    """A run published as Delta tables.

    Attributes
    ----------
    run_id : str
    sequence : int
        1 for the first run published on the output path, then one more per run.
    tables : dict
        Each table's Delta version written by the run.
    """

    run_id: str
    sequence: int
    tables: dict[str, int]


def _open_runs(output: Output) -> Any:
    """The ``runs`` Delta table at its latest version; None if it does not exist yet."""
    return _open(output, RUNS_TABLE)


def _rows(runs: Any) -> list[dict[str, Any]]:
    """The rows of the ``runs`` table ``runs`` (None: no rows), oldest first."""
    if runs is None:
        return []
    rows = pl.from_arrow(runs.to_pyarrow_table())
    assert isinstance(rows, pl.DataFrame)
    return rows.sort("sequence").to_dicts()


def latest_run(output: str | Path) -> dict[str, Any]:
    """The row of ``runs`` with the greatest ``sequence``: the latest complete run.

    ``output`` is a local path or an ``s3://bucket/prefix`` URL (read with
    the ``AWS_*`` environment).

    Returns
    -------
    dict
        ``run_id``, ``sequence``, ``finished_at``, ``schema_version``,
        ``tables`` (table -> Delta version) and ``manifest`` (parsed).

    Raises
    ------
    PublishError
        ``output`` holds no ``runs`` Delta table.
    """
    rows = _rows(_open_runs(location(output)))
    if not rows:
        raise PublishError(f"{str(output)!r} holds no pooljob Delta run (no runs/_delta_log)")
    row = rows[-1]
    return {**row, "tables": json.loads(row["tables"]), "manifest": json.loads(row["manifest"])}


def export_run(output: Output, directory: Path) -> dict[str, Any]:
    """Write the latest complete run of a Delta output as a Parquet run folder.

    By the protocol: each table at the version ``runs`` names, without
    ``run_id``, as ``<table>.parquet`` (with the ``pooljob.*`` metadata),
    and ``manifest.json``, in ``directory`` (which must exist) — what
    ``pooljob report`` reads.

    Returns
    -------
    dict
        The run's row of ``runs`` (see :func:`latest_run`).

    Raises
    ------
    InputError
        ``output`` holds no complete run.
    """
    try:
        run = latest_run(output)
        for table, version in run["tables"].items():
            arrow = _table(output, table, version).to_pyarrow_table()
            frame = pl.from_arrow(arrow)
            assert isinstance(frame, pl.DataFrame)
            write_table(frame.drop(RUN_ID), directory / f"{table}.parquet", run["run_id"], table)
    except PooljobError as exc:
        raise InputError(str(exc)) from None
    except Exception as exc:
        raise InputError(
            f"reading the Delta run of {str(output)!r} failed: {_first_line(exc)}"
        ) from None
    (directory / "manifest.json").write_text(
        json.dumps(run["manifest"], indent=2) + "\n", encoding="utf-8"
    )
    return run


def _sync_table(path: Path, version: int, files: list[str]) -> None:
    """Flush a table's data files ``files`` and the commit of ``version`` to disk."""
    for uri in files:
        fsync_path(Path(uri.removeprefix("file://")))
    fsync_path(path)
    log_dir = path / "_delta_log"
    fsync_path(log_dir / f"{version:020d}.json")
    fsync_path(log_dir)


#: Table properties of a new table: a checkpoint every 10 commits (Delta's default is
#: 100), so that loading a table reads a checkpoint and at most 9 commits (a run makes
#: 3: the write and the vacuum's start and end), not a growing log.
_PROPERTIES = {"delta.checkpointInterval": "10"}


def _write(
    output: Output, name: str, frame: pl.DataFrame, metadata: dict[str, str], base: Any = None
) -> Any:
    """Overwrite the Delta table ``name`` with ``frame`` in one commit; the table, updated.

    ``base`` (the table as read earlier; None: the table does not exist yet)
    makes the commit conditional on no other commit since that read
    (delta-rs's conflict check), and is updated to the new version rather
    than loaded again (a load reads the log: on S3 one request per commit
    since the last checkpoint).  The commit is checked to be this run's
    (``pooljob.run_id`` of the new version).
    """
    from deltalake import CommitProperties, WriterProperties, write_deltalake

    write_deltalake(
        base if base is not None else _uri(output, name),
        frame.rechunk().to_arrow(),  # one batch: delta-rs may reorder batches
        mode="overwrite",
        schema_mode="overwrite",  # a new model may publish other key columns
        writer_properties=WriterProperties(compression="ZSTD", compression_level=3),
        commit_properties=CommitProperties(custom_metadata=metadata),
        storage_options=None if base is not None else _options(output),
        configuration=None if base is not None else dict(_PROPERTIES),
    )
    if base is not None:
        base.update_incremental()
    table = base if base is not None else _table(output, name)
    version = int(table.version())
    if _commit_info(output, name, version).get("pooljob.run_id") != metadata["pooljob.run_id"]:
        raise PublishError(
            f"another writer committed to the Delta table {_uri(output, name)!r} during this "
            "run; runs of one [output] path must not overlap"
        )
    if isinstance(output, Path):
        _sync_table(output / name, version, table.file_uris())
    return table


def _commit_info(output: Output, name: str, version: int) -> dict[str, Any]:
    """The ``commitInfo`` of version ``version`` of table ``name`` ({} if it has none).

    Read from the commit file itself (``DeltaTable.history`` holds Python's
    lock while it lists the log, which an S3 server in this process cannot
    answer).
    """
    commit = f"{name}/_delta_log/{version:020d}.json"
    if isinstance(output, Path):
        data: bytes | None = (output / commit).read_bytes()
    else:
        data = s3.get_bytes(f"{output}/{commit}", s3.filesystem(PublishError))
    for line in (data or b"").decode("utf-8").splitlines():
        action = json.loads(line) if line.strip() else {}
        if "commitInfo" in action:
            return dict(action["commitInfo"])
    return {}


def _with_run_id(frame: pl.DataFrame, run_id: str, table: str) -> pl.DataFrame:
    if any(c.lower() == RUN_ID for c in frame.columns):
        raise PublishError(
            f"table {table} has a column named {RUN_ID!r}, the column a Delta table adds; "
            "rename that column of the source"
        )
    return frame.with_columns(pl.lit(run_id, dtype=pl.String).alias(RUN_ID))


def _vacuum(table: Any, versions: list[int]) -> None:
    """Remove the files of ``table`` that neither its latest version nor ``versions`` use."""
    table.vacuum(
        retention_hours=0,
        dry_run=False,
        enforce_retention_duration=False,
        keep_versions=sorted(set(versions)),
        full=True,  # also the files of a killed run, never committed
    )


def publish_delta(
    output: Output,
    run_id: str,
    tables: dict[str, pl.DataFrame],
    manifest: Callable[[], dict[str, Any]],
    keep_runs: int,
) -> DeltaRun:
    """Write every table as a new version of its Delta table, then record the run in ``runs``.

    Parameters
    ----------
    output : Path or str
        ``[output] path``: a local folder, or an ``s3://bucket/prefix`` URL
        (delta-rs ``storage_options`` from the ``AWS_*`` environment).
    run_id : str
    tables : dict
        Table name -> frame, in the order they are written.
    manifest : callable
        The run's manifest, called once the tables are written.
    keep_runs : int
        How many runs stay readable (rows of ``runs``, versions kept by vacuum).

    Returns
    -------
    DeltaRun
    """
    check_layout(output, "delta")
    try:
        if isinstance(output, Path):
            output.mkdir(parents=True, exist_ok=True)
        runs = _open_runs(output)  # the runs commit is conditional on this version
        previous = _rows(runs)
        frames = {name: _with_run_id(frame, run_id, name) for name, frame in tables.items()}
        written = {
            name: _write(output, name, frame, table_metadata(run_id, name), _open(output, name))
            for name, frame in frames.items()
        }
        versions = {name: int(table.version()) for name, table in written.items()}
        sequence = (previous[-1]["sequence"] if previous else 0) + 1
        row = {
            RUN_ID: run_id,
            "sequence": sequence,
            "finished_at": datetime.now(UTC),
            "schema_version": SCHEMA_VERSION,
            "tables": json.dumps(versions),
            "manifest": json.dumps(manifest(), default=str),
        }
        kept = [*previous, row][-keep_runs:]
        frame = pl.DataFrame(kept, schema=_RUNS_SCHEMA)
        if isinstance(output, Path):  # the tables' folders, made by a first run
            fsync_path(output)
        # the run is published by this one commit
        written[RUNS_TABLE] = _write(
            output, RUNS_TABLE, frame, table_metadata(run_id, RUNS_TABLE), runs
        )
        if isinstance(output, Path):
            fsync_path(output)
    except PooljobError:
        raise
    except Exception as exc:
        log.debug("writing the Delta tables failed: %s", exc, exc_info=exc)
        if isinstance(output, Path) and errno_of(exc) is not None:
            raise os_error("write the Delta tables to", output, exc) from None
        if type(exc).__name__ == "CommitFailedError":  # delta-rs's conflict check
            raise PublishError(
                f"another writer committed to the Delta tables of {str(output)!r} during this "
                f"run ({_first_line(exc)}); runs of one [output] path must not overlap"
            ) from None
        raise PublishError(
            f"could not write the Delta tables to {str(output)!r}: {_first_line(exc)}"
        ) from None
    _retain(output, kept, written)
    return DeltaRun(run_id=run_id, sequence=sequence, tables=versions)


_RUNS_SCHEMA: dict[str, pl.DataType] = {
    RUN_ID: pl.String(),
    "sequence": pl.Int64(),
    "finished_at": pl.Datetime("us", "UTC"),
    "schema_version": pl.String(),
    "tables": pl.String(),
    "manifest": pl.String(),
}


def _retain(output: Output, kept: list[dict[str, Any]], written: dict[str, Any]) -> None:
    """Vacuum every table, keeping the versions the kept runs name (a failure only warns).

    ``written``: the tables this run wrote, as loaded (others are loaded).
    """
    wanted: dict[str, list[int]] = {}
    for row in kept:
        for name, version in json.loads(row["tables"]).items():
            wanted.setdefault(name, []).append(int(version))
    for name in [*wanted, RUNS_TABLE]:
        try:
            table = written[name] if name in written else _table(output, name)
            _vacuum(table, wanted.get(name, []))
        except Exception as exc:  # published: old files merely stay
            log.warning("published, but vacuuming Delta table %s failed: %s", name, exc)
