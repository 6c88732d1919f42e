"""Open a config's source on its engine: DuckDB in process (default) or Spark."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pooljob.job.config import Config
from pooljob.scan.source import TableSource, open_config_source


@contextmanager
def open_source(config: Config, progress: bool = False) -> Iterator[TableSource]:
    """The ``[source]`` of ``config`` as a view ``source`` on ``[engine] kind``.

    Parameters
    ----------
    config : Config
    progress : bool
        Show the engine's progress bar on long scans (a terminal only).

    Yields
    ------
    TableSource
        A DuckDB :class:`~pooljob.scan.source.Source` or a
        :class:`~pooljob.scan.spark.SparkSource`; the scan runs the same
        statistics query on either.
    """
    s, e = config.source, config.engine
    if e.kind == "spark":
        from pooljob.scan.spark import open_spark_source

        assert s.path is not None  # the config validator allows only a path with Spark
        with open_spark_source(
            path=s.path, where=s.where, master=e.master, conf=e.conf, progress=progress
        ) as spark_source:
            yield spark_source
        return
    with open_config_source(
        path=s.path,
        database=s.database,
        table=s.table,
        query=s.query,
        where=s.where,
        threads=e.threads,
        memory_limit=e.memory_limit,
        progress=progress,
        search_path=s.folder,
    ) as source:
        yield source
