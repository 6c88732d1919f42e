"""``pooljob explain CONFIG``: the SQL a run would send to DuckDB, without running the scan.

Opening the source reads only its schema (Parquet footers, a CSV sample, a
catalog), never its rows.  The output is the definitions of the two views
(``source_raw``, the input; ``source``, with the ``[source] where`` filter)
as DuckDB holds them, and the statistics query with the model's identifiers
quoted and filled in and the values a run binds written in as literals, so
that it can be pasted into a DuckDB shell and run as it is.
"""

from __future__ import annotations

from pooljob.job.config import Config
from pooljob.scan.area_rows import area_counts_sql, area_rows_sql, check_area_schema
from pooljob.scan.cell_counts import COUNT_FAMILIES
from pooljob.scan.cell_moments import cell_stats_sql
from pooljob.scan.rollup import check_rollup_schema, rollup_stats_sql
from pooljob.scan.s3 import is_s3
from pooljob.scan.schema import ScanSpec, check_schema, group_stats_sql
from pooljob.scan.source import (
    S3_DATASET,
    inline_parameters,
    open_config_source,
    quote_identifier,
)
from pooljob.scan.weights import check_weight_schema, weight_check_sql


def explain(config: Config) -> str:
    """The SQL of a run of ``config``, as text ready for a DuckDB shell.

    Parameters
    ----------
    config : Config

    Returns
    -------
    str
        Commented SQL: the view definitions, then the statistics query.

    Raises
    ------
    InputError
        The source cannot be opened or lacks a column of the formula.
    """
    if config.engine.kind == "spark":
        return _explain_spark(config)
    s = config.source
    with open_config_source(
        path=s.path,
        database=s.database,
        table=s.table,
        query=s.query,
        where=s.where,
        search_path=s.folder,
    ) as source:
        m = config.model
        variance = m.sampling_variance
        spec: ScanSpec | None
        if m.rollup is not None:
            spec = check_rollup_schema(source, m.formula, m.family, m.rollup)
        elif variance is not None:
            check_area_schema(source, m.formula, variance)
            spec = None
        else:
            spec = check_schema(source, m.formula, m.family)
        if m.weights is not None:
            check_weight_schema(source, m.weights)
        views = source.view_sql()
        description = source.description
        columns = dict(source.columns)
    formula = config.model.formula
    keys = spec.keys if spec is not None else formula.random[0].grouping.columns
    if config.model.rollup is not None:
        assert spec is not None
        stats_sql = rollup_stats_sql(spec.keys, spec.variables, config.model.rollup)
        shifts = {f"s{i}": 0.0 for i in range(len(spec.variables))}
        stats_sql = inline_parameters(stats_sql, shifts)
        what = [
            "-- per-cell statistics of the rows behind a rollup table, one scan",
            "-- (sql/rollup_stats.sql): the centring shifts are 0 here (a second scan, made",
            "-- only for a mean far from 0, binds a shift); the cells are the rows whose",
            "-- drop_code is 'used'",
        ]
    elif variance is not None:
        stats_sql = (
            area_counts_sql(formula, variance).strip().rstrip(";")
            + ";\n\n-- then, if no variance is bad and at most MAX_AREAS rows are used, the areas\n"
            + area_rows_sql(formula, variance)
        )
        what = [
            "-- an area-level (Fay-Herriot) model: the rows are the areas.  First the counts",
            "-- (sql/area_counts.sql), then the used rows are collected (sql/area_rows.sql)",
        ]
    elif config.model.family in COUNT_FAMILIES:
        from pooljob.pipeline import count_sql

        assert spec is not None
        weights = config.model.weights
        stats_sql = count_sql(formula, config.model.family, spec, weights)
        what = [
            "-- per-cell counts, one scan (sql/count_stats.sql): every row of a cell shares",
            "-- its linear predictor, so successes/events, trials/exposure and the per-row",
            "-- log-likelihood constants summed per cell are sufficient for the Laplace fit",
        ]
        if weights is not None:
            stats_sql = (
                weight_check_sql(weights).strip()
                + ";\n\n-- then, if no weight is null, negative or non-finite, the counts\n"
                + stats_sql
            )
            what.append(
                f"-- prior weights (column {quote_identifier(weights)}, read as w): first their"
                " check (sql/weight_check.sql); each row counts w times"
            )
    elif config.model.weights is not None:
        assert spec is not None
        stats_sql = (
            weight_check_sql(config.model.weights).strip()
            + ";\n\n-- then, if no weight is null, negative or non-finite, the weighted sums\n"
            + cell_stats_sql(
                spec.keys,
                spec.variables,
                False,
                len(spec.variables) > 1,
                None,
                config.model.weights,
            )
        )
        shifts = {f"s{i}": 0.0 for i in range(len(spec.variables))}
        stats_sql = inline_parameters(stats_sql, shifts)
        what = [
            f"-- observation weights (column {quote_identifier(config.model.weights)}, read as w):",
            "-- first the check of the weights (sql/weight_check.sql), then per-cell weighted",
            "-- sums of the rows with w > 0, one scan; the centring shifts are 0 here",
        ]
    else:
        stats_sql = group_stats_sql(formula, columns=columns)  # types tell categorical columns
        assert spec is not None
        shifts = {f"s{i}": 0.0 for i in range(len(spec.variables))}  # as the first scan binds
        stats_sql = inline_parameters(stats_sql, shifts)
        what = [
            "-- per-group statistics, one scan; the centring shifts ($s<i> in the template) are",
            "-- 0, written in as cast('0.0' as double) (a second scan, made only for NaN or",
            "-- infinite values or a mean far from 0, skips those rows or binds a shift)",
        ]
    lines = [
        f"-- pooljob explain {config.file}",
        f"-- model: {formula.text} ({config.model.family}, {config.model.method.upper()})",
        f"-- source: {description}",
    ]
    if (s.query is not None or s.where) and s.folder:  # relative paths in them, as in a run
        lines.append(f"set file_search_path = {_string_literal(s.folder)};")
    if s.path is not None and is_s3(s.path):
        lines += [
            f"-- {S3_DATASET}: the objects {s.path} matches, an Arrow dataset read through",
            "-- pyarrow's S3 client (docs/object-storage.md); in a DuckDB shell with httpfs,",
            f"-- read_parquet({_string_literal(s.path)}, hive_partitioning = true, "
            "union_by_name = true) reads the same rows",
        ]
    if s.database is not None:
        lines.append(f"attach {_string_literal(s.database)} as warehouse (read_only);")
    if keys:  # the query names user columns only where it reads them
        lines_keys = ", ".join(f"k{i} = {quote_identifier(k)}" for i, k in enumerate(keys))
        what.append(f"-- the result's key columns: {lines_keys}")
    lines += [
        *views,
        "",
        *what,
        stats_sql.strip().rstrip(";") + ";",
    ]
    if config.benchmark is not None:
        lines += _benchmark_sql(config)
    return "\n".join(lines) + "\n"


def _benchmark_sql(config: Config) -> list[str]:
    """The queries that read ``[benchmark]``'s tables (each its own view ``source``)."""
    from pooljob.outputs.benchmark import read_benchmark, weight_columns

    bench = config.benchmark
    assert bench is not None
    read_benchmark(bench, config.model.formula.groupings)  # checked as a run checks them
    reads = [(bench.path, [*bench.by, bench.total])]
    keys = weight_columns(bench, config.model.formula.groupings)
    if keys and bench.weight is not None:
        if bench.weights_path is None:  # the weights are in the totals table
            reads = [(bench.path, [*keys, bench.weight, bench.total])]
        else:
            reads.append((bench.weights_path, [*keys, bench.weight]))
    lines = [
        "",
        f"-- [benchmark] ({bench.method}), after the fit: the totals"
        + (" and weights tables" if len(reads) > 1 else " table")
        + ", read whole on a connection of",
        "-- their own, then matched to the estimates in Python (docs/outputs.md, benchmark)",
    ]
    for path, columns in reads:
        with open_config_source(path=path) as table:
            lines += table.view_sql()
        lines.append("select " + ", ".join(quote_identifier(c) for c in columns) + " from source;")
    return lines


def _string_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _explain_spark(config: Config) -> str:
    """The Spark SQL of a run with ``[engine] kind = "spark"``: the transpiled statistics query.

    Starts (or uses) a Spark session to read the schema of ``[source] path``
    (Parquet footers; a CSV source is read to infer its types).
    """
    from pooljob.job.engine import open_source
    from pooljob.scan.schema import group_stats_sql
    from pooljob.scan.spark_sql import spark_sql

    formula = config.model.formula
    family = config.model.family
    with open_source(config) as source:
        spec = check_schema(source, formula, family)
        columns = dict(source.columns)
    e, s = config.engine, config.source
    if family in COUNT_FAMILIES:
        from pooljob.pipeline import count_sql

        stats_sql = count_sql(formula, family, spec, config.model.weights)
        what = [
            "-- per-cell counts, one scan: sql/count_stats.sql (see its comments) transpiled",
            "-- from DuckDB by sqlglot (pooljob/scan/spark_sql.py); lgamma, which Spark SQL",
            "-- lacks, written as Stirling's series (exact to rounding), fsum as sum",
        ]
    elif config.model.weights is not None:
        stats_sql = cell_stats_sql(
            spec.keys, spec.variables, False, len(spec.variables) > 1, None, config.model.weights
        )
        what = [
            "-- per-cell weighted sums, one scan: sql/cell_stats.sql (see its comments) with",
            "-- observation weights, transpiled from DuckDB by sqlglot; the centring shifts",
            "-- (its :s parameters) are bound to 0",
        ]
    else:
        stats_sql = group_stats_sql(formula, columns=columns)
        what = [
            "-- per-cell statistics, one scan: sql/cell_stats.sql (see its comments) transpiled",
            "-- from DuckDB by sqlglot (pooljob/scan/spark_sql.py); the centring shifts (its :s",
            "-- parameters) are bound to 0 (a second scan, made only for NaN or infinite values",
            "-- or a mean far from 0, skips those rows or binds a shift)",
        ]
    if config.model.weights is not None:
        check = spark_sql(weight_check_sql(config.model.weights), pretty=True).strip()
        what = [
            "-- first the check of the weights (sql/weight_check.sql), transpiled:",
            check + ";",
            "",
            *what,
        ]
    lines = [
        f"-- pooljob explain {config.file}",
        f"-- model: {formula.text} ({config.model.family}, {config.model.method.upper()})",
        f"-- engine: spark (master {e.master or 'from spark-submit or the active session'})",
        f"-- source: temp view `source` over {s.path}"
        + (f", filtered by the Spark SQL: {s.where}" if s.where else ""),
        "",
        *what,
        spark_sql(stats_sql, pretty=True).strip() + ";",
    ]
    return "\n".join(lines) + "\n"
