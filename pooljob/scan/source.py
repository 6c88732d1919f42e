"""Open the input as a DuckDB view named ``source``, in process, with no server.

Files (Parquet or CSV, globs, hive partitions; Parquet objects on S3 through
:mod:`pooljob.scan.s3_source`, no DuckDB extension), a table of a DuckDB database
(attached read-only), a trusted SQL query, or an in-memory table (polars,
pandas, Arrow) or DuckDB relation.  Only identifiers checked against the
source's schema, quoted, and bound values reach DuckDB; the optional
``where`` filter and ``query`` are trusted SQL from the config's owner.
"""

from __future__ import annotations

import difflib
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from pooljob.errors import ConfigError, InputError, MissingColumnError
from pooljob.scan.resources import usable_cpus, usable_memory
from pooljob.scan.s3 import is_s3, source_objects
from pooljob.scan.s3_source import s3_relation
from pooljob.scan.sql_text import (
    double_literal,
    filter_sql,
    first_line,
    inline_parameters,
    query_problem,
    quote_identifier,
    where_problem,
)

__all__ = [
    "Source",
    "TableSource",
    "double_literal",
    "inline_parameters",
    "open_config_source",
    "open_data",
    "open_file_list",
    "query_problem",
    "quote_identifier",
    "require_columns",
    "where_problem",
]

_CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


def _is_remote(path: str) -> bool:
    return "://" in path


class TableSource(Protocol):
    """What the scan needs of an input, whatever engine reads it.

    :class:`Source` (DuckDB) and :class:`pooljob.scan.spark.SparkSource` both
    provide it: the statistics query of :mod:`pooljob.scan.cell_moments` is written once,
    for DuckDB, and an engine runs it on its view named ``source``.
    """

    description: str
    columns: dict[str, str]

    def arrow(self, sql: str, params: dict[str, float] | None = None) -> pa.Table:
        """Run ``sql`` (DuckDB SQL reading ``source``; ``$name`` parameters) as Arrow."""
        ...

    def require(self, names: tuple[str, ...]) -> None:
        """Raise MissingColumnError unless every name is a column."""
        ...


def require_columns(description: str, columns: dict[str, str], names: tuple[str, ...]) -> None:
    """Check that every name is a column; the error lists what exists."""
    missing = [n for n in names if n not in columns]
    if not missing:
        return
    name = missing[0]
    close = difflib.get_close_matches(name, list(columns), n=1)
    lowered = [c for c in columns if c.lower() == name.lower()]
    hint = lowered or close
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise MissingColumnError(
        f"column {name!r} named in the formula is not in {description}{did_you_mean}; "
        f"available columns: {', '.join(columns)}"
    )


@dataclass
class Source:
    """A DuckDB view ``source`` over the input, with its schema.

    Attributes
    ----------
    description : str
        What the source is, for messages (a path, ``db:table``, ``query``).
    columns : dict of str to str
        Column name to DuckDB type name.
    """

    description: str
    _con: duckdb.DuckDBPyConnection | None = None
    _relation: duckdb.DuckDBPyRelation | None = None
    columns: dict[str, str] = field(default_factory=dict)

    def relation(self, sql: str, params: dict[str, float] | None = None) -> duckdb.DuckDBPyRelation:
        """Return ``sql`` (which reads the view ``source``) as a relation.

        Values in ``params`` are bound as parameters (``$name``).  DuckDB's
        relation API cannot bind parameters, so for a relation given to the
        Python API they are written in (:func:`inline_parameters`).
        """
        if self._relation is not None:
            rel = self._relation.query("source", inline_parameters(sql, params or {}))
        else:
            assert self._con is not None
            rel = self._con.sql(sql, params=params) if params else self._con.sql(sql)
        assert rel is not None
        return rel

    def arrow(self, sql: str, params: dict[str, float] | None = None) -> pa.Table:
        """Run ``sql`` on the source and return the result as an Arrow table."""
        try:
            return self.relation(sql, params).to_arrow_table()
        except duckdb.Error as exc:
            raise InputError(f"reading {self.description} failed: {first_line(exc)}") from exc

    def query_progress(self) -> float:
        """Percent done of the query running on this connection (−1 if none or unknown).

        Safe to call from another thread while the query runs; DuckDB tracks
        it only on a connection opened with ``progress``.
        """
        if self._con is None:
            return -1.0
        return float(self._con.query_progress())

    def require(self, names: tuple[str, ...]) -> None:
        """Check that every name is a column; the error lists what exists."""
        require_columns(self.description, self.columns, names)

    def view_sql(self) -> list[str]:
        """The ``create view`` statements of ``source_raw`` and ``source``, as DuckDB holds them."""
        if self._con is None:
            return []
        rows = self._con.execute(
            "select sql from duckdb_views() where view_name in ('source_raw', 'source') "
            "order by view_name desc"
        ).fetchall()
        return [str(r[0]).strip().rstrip(";") + ";" for r in rows]


def _read_schema(src: Source) -> None:
    rel = src.relation("select * from source limit 0")
    src.columns = {c: str(t) for c, t in zip(rel.columns, rel.types, strict=True)}


def file_format(pattern: str) -> str:
    """``csv`` or ``parquet``, from the name of a path or glob; InputError otherwise."""
    lower = pattern.lower()
    if lower.endswith(_CSV_SUFFIXES):
        return "csv"
    if lower.endswith(_PARQUET_SUFFIXES) or lower.endswith("*"):
        return "parquet"
    raise InputError(
        f"source path {pattern!r}: cannot tell the file format from its name; "
        "use a name ending in .parquet or .csv (globs like data/*.parquet are fine)"
    )


#: The name of the Arrow dataset over S3 objects on a source's connection.
S3_DATASET = "__pooljob_s3_objects"


def _file_relation(con: duckdb.DuckDBPyConnection, pattern: str) -> duckdb.DuckDBPyRelation:
    if is_s3(pattern):
        return s3_relation(con, source_objects(pattern), S3_DATASET)
    if not _is_remote(pattern):
        matches = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else []
        if not matches and not os.path.exists(pattern):
            where = Path(pattern).parent
            raise InputError(
                f"source path {pattern!r} matches no file (looked in {str(where)!r}); "
                "check [source] path, which is relative to the config file"
            )
        if not glob.has_magic(pattern) and os.path.isdir(pattern):
            pattern = os.path.join(pattern, "**", "*.parquet")
    kind = file_format(pattern)
    try:
        if kind == "csv":
            return con.read_csv(pattern, hive_partitioning=True, union_by_name=True)
        return con.read_parquet(pattern, hive_partitioning=True, union_by_name=True)
    except duckdb.Error as exc:
        raise InputError(f"cannot read {pattern!r} as {kind}: {first_line(exc)}") from exc


def _check_sql(problem: str | None) -> None:
    if problem is not None:
        raise ConfigError(problem)


def _apply_where(con: duckdb.DuckDBPyConnection, where: str | None, description: str) -> None:
    if not where:
        con.execute("create temp view source as select * from source_raw")
        return
    try:  # where_problem(where) was checked before the connection was opened
        con.execute(f"create temp view source as {filter_sql(where)}")
        con.sql("select * from source limit 0").fetchall()
    except duckdb.Error as exc:
        raise InputError(
            f"[source] where = {where!r} is not a valid filter on {description}: {first_line(exc)}"
        ) from exc


_DEFAULT_MEMORY_CAP = 3 * 2**30


def default_memory_limit() -> str:
    """DuckDB's memory limit when ``[engine] memory_limit`` is not set.

    A quarter of the RAM (a container's memory limit if lower:
    :func:`pooljob.scan.resources.usable_memory`), at most 3 GiB (DuckDB's own default is 80% of
    RAM).  The scan is a streaming aggregation: it needs memory for the
    per-group statistics, not for the rows, and spills to DuckDB's temporary
    directory beyond the limit, so a 1-billion-row scan stays under 4 GB.
    """
    ram = usable_memory() or 4 * _DEFAULT_MEMORY_CAP
    limit = max(min(ram // 4, _DEFAULT_MEMORY_CAP), 256 * 2**20)
    return f"{limit // 2**20}MiB"


def _load_httpfs(con: duckdb.DuckDBPyConnection, required: bool) -> None:
    """Load DuckDB's httpfs extension (remote paths), installing it first if need be.

    Extensions are never installed or loaded on demand (see :func:`_connect`);
    this is the one pooljob loads, for a remote ``[source] path`` (``required``:
    installed if need be, an error if it cannot be had) or SQL that names a
    URL (loaded if it is installed: the URL may be plain text).
    """
    try:
        con.execute("load httpfs")
        return
    except duckdb.Error:
        if not required:  # no download for a URL that may be plain text
            return
    try:
        con.execute("install httpfs")
        con.execute("load httpfs")
    except duckdb.Error as exc:
        if required:
            raise InputError(
                "a remote [source] path needs DuckDB's httpfs extension, which could not be "
                f"installed: {first_line(exc)}; install it once with: python -c "
                "\"import duckdb; duckdb.install_extension('httpfs')\""
            ) from exc


def _connect(
    threads: int | None,
    memory_limit: str | None,
    progress: bool = False,
    *,
    search_path: str | None = None,
    httpfs: bool | None = False,
) -> duckdb.DuckDBPyConnection:
    """An in-memory connection, its settings locked; progress tracked only if ``progress``.

    ``memory_limit`` defaults to :func:`default_memory_limit`.  With
    ``progress`` DuckDB tracks each query's progress, for
    :meth:`Source.query_progress` (the job draws it on stderr), but never
    prints its own bar (it would draw on stdout, mixed with the output);
    these are session settings (DuckDB refuses them in ``connect``'s
    config), set one statement at a time.  ``search_path`` (DuckDB's ``file_search_path``)
    is where relative file names in trusted SQL are looked for: the config
    file's folder.  ``httpfs`` True loads the httpfs extension (installed if
    need be; an error if it cannot be had), None loads it if installed.

    Extensions are neither installed nor loaded on demand: Parquet, CSV and
    JSON are built in, and httpfs is loaded here only when asked for.  Then
    ``lock_configuration`` is set, so the trusted SQL of ``[source]`` cannot
    change a setting (threads, memory limit, search path, extensions).
    """
    config: dict[str, Any] = {
        "memory_limit": memory_limit or default_memory_limit(),
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    threads = threads or usable_cpus()  # a container's CPU quota, which DuckDB ignores
    if threads:
        config["threads"] = threads
    if search_path:
        config["file_search_path"] = search_path
    con = duckdb.connect(":memory:", config=config)
    con.execute("set enable_progress_bar_print = false")
    con.execute(f"set enable_progress_bar = {str(progress).lower()}")
    if httpfs is not False:
        try:
            _load_httpfs(con, required=httpfs is True)
        except BaseException:
            con.close()
            raise
    con.execute("set lock_configuration = true")
    return con


@contextmanager
def open_config_source(
    *,
    path: str | None = None,
    database: str | None = None,
    table: str | None = None,
    query: str | None = None,
    where: str | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    progress: bool = False,
    search_path: str | None = None,
) -> Iterator[Source]:
    """Open the source of a config: exactly one of path, database+table, query.

    ``progress`` has DuckDB track each query's progress
    (:meth:`Source.query_progress`; for a run on a terminal); it is off
    otherwise.  ``search_path`` is the
    folder against which relative file names in ``query`` and ``where``
    resolve (the config file's; see :func:`_connect`).
    """
    if query is not None:
        _check_sql(query_problem(query))
    if where:
        _check_sql(where_problem(where))
    remote: bool | None = False
    if path is not None and _is_remote(path) and not is_s3(path):
        remote = True
    elif any("://" in (text or "") for text in (query, where)):
        remote = None
    con = _connect(threads, memory_limit, progress, search_path=search_path, httpfs=remote)
    try:
        if path is not None:
            description = path
            _file_relation(con, path).create_view("source_raw")
        elif database is not None and table is not None:
            description = f"table {table!r} of {database!r}"
            if not os.path.exists(database):
                raise InputError(
                    f"[source] database {database!r} does not exist; "
                    "give the path of a DuckDB database file"
                )
            try:
                con.execute("attach ? as warehouse (read_only)", [database])
            except duckdb.Error as exc:
                raise InputError(f"cannot open database {database!r}: {first_line(exc)}") from exc
            tables = [
                r[0]
                for r in con.execute(
                    "select table_name from information_schema.tables "
                    "where table_catalog = 'warehouse' order by table_name"
                ).fetchall()
            ]
            if table not in tables:
                raise InputError(
                    f"[source] table {table!r} is not in {database!r}; "
                    f"tables there: {', '.join(tables) or '(none)'}"
                )
            con.execute(
                f"create temp view source_raw as select * from warehouse.{quote_identifier(table)}"
            )
        elif query is not None:
            description = "the [source] query"
            try:
                con.execute(f"create temp view source_raw as\n{query}\n")
                con.sql("select * from source_raw limit 0").fetchall()
            except duckdb.Error as exc:
                raise InputError(f"[source] query failed: {first_line(exc)}") from exc
        else:  # pragma: no cover - the config validator rules this out
            raise InputError("no source given")
        _apply_where(con, where, description)
        src = Source(description=description, _con=con)
        _read_schema(src)
        yield src
    finally:
        con.close()


@contextmanager
def open_file_list(
    files: list[str],
    *,
    path: str,
    columns: dict[str, str],
    file_column: str,
    where: str | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
    search_path: str | None = None,
    progress: bool = False,
) -> Iterator[Source]:
    """Open only ``files`` of the ``[source] path`` ``path``, naming each row's file.

    The view ``source`` has the schema ``columns`` of the whole source (as
    :func:`open_config_source` found it over every file), so that the
    statistics of these files are their share of a scan of all of them: a
    column these files lack is null, one typed otherwise in them is cast.
    The column ``file_column`` holds each row's path as given in ``files``
    (bound as a parameter, never pasted).  Hive partitions and the
    ``where`` filter apply as for the whole source; ``progress`` as for
    :func:`open_config_source`.
    """
    s3 = is_s3(path)
    local_dir = not s3 and os.path.isdir(path) and not glob.has_magic(path)
    kind = "parquet" if local_dir or s3 else file_format(path)
    name = "'" + file_column.replace("'", "''") + "'"
    reader = (
        f"read_{kind}($files, hive_partitioning = true, union_by_name = true, filename = {name})"
    )
    params: dict[str, Any] | None = {"files": files}
    description = f"{len(files)} file{'' if len(files) == 1 else 's'} of {path}"
    if where:
        _check_sql(where_problem(where))
    httpfs = None if where and "://" in where else False
    con = _connect(threads, memory_limit, progress, search_path=search_path, httpfs=httpfs)
    try:
        if s3:  # the objects as listed, each row's URL in the file column
            sizes = dict(source_objects(path))
            objects = [(f, sizes[f]) for f in files if f in sizes]
            s3_relation(con, objects, S3_DATASET, file_column)
            reader, params = quote_identifier(S3_DATASET), None
        try:
            found = con.sql(f"select * from {reader} limit 0", params=params)
            have = {c: str(t) for c, t in zip(found.columns, found.types, strict=True)}
            select = []
            for column, ctype in columns.items():
                q = quote_identifier(column)
                if column not in have:
                    select.append(f"cast(null as {ctype}) as {q}")
                elif have[column] != ctype:
                    select.append(f"cast({q} as {ctype}) as {q}")
                else:
                    select.append(q)
            select.append(quote_identifier(file_column))
            rel = con.sql(f"select {', '.join(select)} from {reader}", params=params)
            rel.create_view("source_raw")
        except duckdb.Error as exc:
            raise InputError(f"cannot read {description} as {kind}: {first_line(exc)}") from exc
        _apply_where(con, where, description)
        src = Source(description=description, _con=con)
        _read_schema(src)
        yield src
    finally:
        con.close()


@contextmanager
def open_data(data: Any, threads: int | None = None) -> Iterator[Source]:
    """Open API input: a path or glob, a DuckDB relation, or an in-memory table."""
    if isinstance(data, str | os.PathLike):
        with open_config_source(path=os.fspath(data), threads=threads) as src:
            yield src
        return
    if isinstance(data, duckdb.DuckDBPyRelation):
        src = Source(description="the DuckDB relation", _relation=data)
        _read_schema(src)
        yield src
        return
    con = _connect(threads, None)
    try:
        try:
            con.register("source", data)
        except (duckdb.Error, TypeError, ValueError) as exc:
            raise InputError(
                f"data of type {type(data).__name__} is not a table pooljob can read; pass a "
                "path or glob, a DuckDB relation, or a polars, pandas or Arrow table"
            ) from exc
        src = Source(description=f"the {type(data).__name__}", _con=con)
        _read_schema(src)
        yield src
    finally:
        con.close()
