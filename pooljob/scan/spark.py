"""The Spark engine: the input as a Spark temp view ``source``, the statistics in Spark SQL.

With ``[engine] kind = "spark"`` the one scan runs on Spark's executors: the
statistics query of :mod:`pooljob.scan.cell_moments`, transpiled to Spark SQL
(:mod:`pooljob.scan.spark_sql`), reduces the rows to one row per cell; that small
result is collected to the driver as Arrow, where the same
:func:`pooljob.scan.cell_moments.scan_cells` accounts for the rows (and asks for a second
scan for NaN or infinite values, or a centred third) and the fit runs as
with DuckDB.  Rows never come to the driver.

Only ``[source] path`` is read (Parquet or CSV; globs; hive partitions); the
``where`` filter is Spark SQL, trusted like the config.  pyspark is the
optional extra ``pooljob[spark]`` and is imported only here.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pooljob.errors import ConfigError, InputError
from pooljob.scan.source import file_format, require_columns

log = logging.getLogger("pooljob")

_INSTALL = "pip install 'pooljob[spark]'"


def require_spark() -> None:
    """Fail with one line, before any work, if pyspark or sqlglot is missing."""
    missing = [m for m in ("pyspark", "sqlglot") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f'[engine] kind = "spark" needs {" and ".join(missing)}, which is not installed: '
            f'{_INSTALL} (and a Java runtime), or use kind = "duckdb"'
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _spark_errors() -> tuple[type[BaseException], ...]:
    """The exceptions Spark raises for bad SQL, missing files, or a failed job."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    return (PySparkException, Py4JError)


def collect_arrow(frame: Any) -> pa.Table:
    """Collect a (small) Spark DataFrame to the driver as an Arrow table.

    ``DataFrame.toArrow()`` where pyspark has it (4.0 and later), else
    ``toPandas()`` with Arrow transfer enabled.
    """
    if hasattr(frame, "toArrow"):
        table = frame.toArrow()
    else:  # pragma: no cover - pyspark < 4.0
        frame.sparkSession.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
        table = pa.Table.from_pandas(frame.toPandas(), preserve_index=False)
    assert isinstance(table, pa.Table)
    return table.replace_schema_metadata(None)


@dataclass
class SparkSource:
    """A Spark temp view ``source`` over the input, with its schema.

    Attributes
    ----------
    description : str
        What the source is, for messages.
    columns : dict of str to str
        Column name to type, named as DuckDB names it (``BIGINT``, ``VARCHAR``).
    """

    description: str
    spark: Any
    columns: dict[str, str] = field(default_factory=dict)

    def arrow(self, sql: str, params: dict[str, float] | None = None) -> pa.Table:
        """Run pooljob's DuckDB ``sql`` on Spark, transpiled; the result as Arrow.

        ``$name`` parameters become Spark's ``:name`` parameters, bound from
        ``params`` (numbers pooljob computed).
        """
        from pooljob.scan.spark_sql import spark_sql

        text = spark_sql(sql)
        try:
            frame = self.spark.sql(text, args=params) if params else self.spark.sql(text)
            return collect_arrow(frame)
        except _spark_errors() as exc:
            raise InputError(
                f"reading {self.description} with Spark failed: {_first_line(exc)}"
            ) from exc

    def require(self, names: tuple[str, ...]) -> None:
        """Check that every name is a column; the error lists what exists."""
        require_columns(self.description, self.columns, names)


def _base_path(pattern: str) -> str | None:
    """The folder above the first glob character: Spark's ``basePath`` for hive partitions."""
    fixed: list[str] = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            base = os.sep.join(fixed)
            return base if base else (os.sep if pattern.startswith(os.sep) else ".")
        fixed.append(part)
    return None


def _files(pattern: str) -> tuple[list[str], dict[str, str]]:
    """The paths and reader options for a ``[source] path``.

    A local glob is expanded here (``**`` included, as DuckDB does), with
    ``basePath`` set to the folder above the first glob character so Spark
    reads ``key=value`` folders as columns; a folder is given to Spark as it
    is (it reads the files under it, partitions included); a remote path
    (``s3a://``, ``hdfs://``) is given as it is, a glob in Hadoop's syntax.
    """
    if "://" in pattern:
        return [pattern], {}
    if glob.has_magic(pattern):
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        base = _base_path(pattern)
        return matches, ({"basePath": base} if base else {})
    return ([pattern] if os.path.exists(pattern) else []), {}


def _read(spark: Any, pattern: str) -> Any:
    """A Spark DataFrame over the files of ``pattern`` (Parquet, or CSV with a header)."""
    local_dir = "://" not in pattern and os.path.isdir(pattern)
    kind = "parquet" if local_dir else file_format(pattern)
    paths, options = _files(pattern)
    if not paths:
        raise InputError(
            f"source path {pattern!r} matches no file (looked in "
            f"{os.path.dirname(pattern) or '.'!r}); check [source] path, which is relative "
            "to the config file"
        )
    try:
        if kind == "csv":
            return spark.read.options(header=True, inferSchema=True, **options).csv(paths)
        return spark.read.options(**options).parquet(*paths)
    except _spark_errors() as exc:
        raise InputError(
            f"cannot read {pattern!r} as {kind} with Spark: {_first_line(exc)}"
        ) from exc


def _session(master: str | None, conf: Mapping[str, str], progress: bool) -> tuple[Any, bool]:
    """The active Spark session, or a new one; and whether pooljob made it."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        log.debug("spark: using the active session (master %s)", active.sparkContext.master)
        for key, value in conf.items():
            try:
                active.conf.set(key, value)
            except _spark_errors() as exc:  # a static setting: the running session's stays
                log.warning("spark: [engine] conf %s not applied: %s", key, _first_line(exc))
        return active, False
    builder = SparkSession.builder.appName("pooljob")
    if master:
        builder = builder.master(master)
    builder = builder.config("spark.ui.showConsoleProgress", str(progress).lower())
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate(), True


@contextmanager
def open_spark_source(
    *,
    path: str,
    where: str | None = None,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    progress: bool = False,
) -> Iterator[SparkSource]:
    """Open ``[source] path`` as the Spark temp view ``source``.

    Uses the active Spark session if there is one (``spark-submit``, a
    notebook), else starts one with ``master`` and ``conf`` and stops it at
    the end.  ``where`` is applied as a Spark SQL filter.
    """
    require_spark()
    from pooljob.scan.spark_sql import duckdb_type

    try:
        spark, owned = _session(master, conf or {}, progress)
    except _spark_errors() as exc:
        raise ConfigError(f"cannot start Spark (master {master!r}): {_first_line(exc)}") from exc
    try:
        frame = _read(spark, path)
        if where:
            try:
                frame = frame.where(where)
                frame.schema  # noqa: B018 - analysing the filter reports a bad one here
            except _spark_errors() as exc:
                raise InputError(
                    f"[source] where = {where!r} is not a valid Spark SQL filter on {path}: "
                    f"{_first_line(exc)}"
                ) from exc
        frame.createOrReplaceTempView("source")
        columns = {f.name: duckdb_type(f.dataType.simpleString()) for f in frame.schema.fields}
        yield SparkSource(description=path, spark=spark, columns=columns)
    finally:
        if owned:
            spark.stop()
        else:
            spark.catalog.dropTempView("source")
