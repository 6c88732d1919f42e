"""Observation weights (``[model] weights``): the column's checks, then the weighted scan.

lme4's ``weights`` are precision weights: row ``i`` has residual variance
``σ²/w_i``.  The statistics query (:func:`pooljob.scan.cell_moments.cell_stats_sql`
with ``weight``) sums ``w``, ``w v`` and ``w v vᵀ`` per cell; this module
checks the column first, in one query over the whole source
(``sql/weight_check.sql``): a null, negative, NaN or infinite weight is a
data error (exit 3, naming the column and how many rows), a weight of 0
drops its row (counted as ``zero_weight`` in the manifest's ``rows``).
For a binomial or Poisson model they are glmer's prior weights: each row's
log-likelihood is multiplied by its weight (:func:`scan_weighted_counts`).
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from pooljob.errors import InputError
from pooljob.model.cells import CellTable, CountTable, NumericVariable
from pooljob.model.formula import Formula
from pooljob.scan.cell_counts import scan_counts
from pooljob.scan.cell_moments import (
    FILE_ALIAS,
    scan_cells,
    source_column,
    sql_text,
    with_zero_weights,
)
from pooljob.scan.schema import _NUMERIC, ScanSpec
from pooljob.scan.source import TableSource


def weight_check_sql(weight: str, by: str | None = None) -> str:
    """The check query of the weight column (``sql/weight_check.sql``), identifiers quoted.

    With ``by``, the column naming each row's source file: one row per file
    (column ``file``).
    """
    return sql_text("weight_check").format(
        weight=f"cast({source_column(weight)} as double)",
        file="" if by is None else f"{source_column(by)} as {FILE_ALIAS},",
        file_key="" if by is None else f"{FILE_ALIAS},",
        group_by="" if by is None else f"group by {FILE_ALIAS}",
    )


def check_weight_schema(source: TableSource, weight: str) -> None:
    """The weight column exists and holds numbers (integer, decimal or floating point)."""
    source.require((weight,))
    ctype = source.columns[weight]
    if not _NUMERIC.match(ctype):
        raise InputError(
            f"weights column {weight!r} has type {ctype}; observation weights must be numbers "
            "(integer, decimal or floating point): cast it in a [source] query or fix the data"
        )


def check_weights(source: TableSource, weight: str) -> tuple[int, bool]:
    """Check every weight of ``source``; return the rows of weight 0, and whether all are 1.

    When every weight is exactly 1 the model is the unweighted one, and the
    caller scans it as such (the same numbers, bit for bit, as without weights).

    Raises
    ------
    InputError
        Some weight is null, negative, NaN or infinite: the message names the
        column and the number of such rows.
    """
    table = check_file_weights(source, weight)
    return int(table["zero_weight"].sum()), int(table["not_one"].sum()) == 0


def check_file_weights(source: TableSource, weight: str, by: str | None = None) -> pl.DataFrame:
    """The weight check's counts (per file, column ``file``, with ``by``); raise on a bad weight.

    Columns ``null_weight``, ``bad_weight``, ``zero_weight``, ``not_one``
    (rows whose weight is not exactly 1).  Raises :class:`InputError` when
    some weight is null, negative, NaN or infinite.
    """
    check_weight_schema(source, weight)
    table = pl.from_arrow(source.arrow(weight_check_sql(weight, by)))
    assert isinstance(table, pl.DataFrame)
    table = table.with_columns(pl.exclude(FILE_ALIAS).fill_null(0).cast(pl.Int64))
    null, bad = int(table["null_weight"].sum()), int(table["bad_weight"].sum())
    if null or bad:
        parts = [f"{_rows(null)} with a null weight"] if null else []
        parts += [f"{_rows(bad)} with a negative, NaN or infinite weight"] if bad else []
        raise InputError(
            f"weights column {weight!r} of {source.description}: {' and '.join(parts)}; "
            "observation weights must be numbers ≥ 0 (0 drops the row): fix the data or "
            "leave those rows out with [source] where"
        )
    return table


def scan_weighted_cells(
    source: TableSource,
    keys: tuple[str, ...],
    variables: tuple[NumericVariable, ...],
    weight: str,
) -> CellTable:
    """Check the weights, then scan the weighted cells (:func:`scan_cells` with ``weight``).

    When every weight is exactly 1 the model is the unweighted one: the
    unweighted scan, so the numbers are those without weights, bit for bit.
    """
    zero, all_ones = check_weights(source, weight)
    if all_ones:
        cells = scan_cells(source, keys, variables)
        return replace(cells, rows=with_zero_weights(cells.rows, 0))
    return scan_cells(source, keys, variables, weight, zero)


def scan_weighted_counts(
    source: TableSource, formula: Formula, family: str, spec: ScanSpec, weight: str
) -> CountTable:
    """Check the weights, then scan the weighted counts of a binomial or Poisson model.

    glmer's prior weights: each row's log-likelihood is ``w`` times its own
    (:func:`pooljob.scan.cell_counts.count_stats_sql` with ``weight``).  When
    every weight is exactly 1, the unweighted scan.
    """
    zero, all_ones = check_weights(source, weight)
    if all_ones:
        counts = scan_counts(source, formula, family, spec)
        return replace(counts, rows=with_zero_weights(counts.rows, 0))
    return scan_counts(source, formula, family, spec, weight, zero)


def with_file_zero_weights(counts: pl.DataFrame, check: pl.DataFrame) -> pl.DataFrame:
    """Per-file row counts (``file``, ``read``, ``used``, reasons) with the rows of weight 0.

    ``check`` is :func:`check_file_weights`'s per-file table.  A file's rows
    of weight 0 are added to ``read`` and counted in ``zero_weight``; a file
    whose every row has weight 0 gets a row of its own.
    """
    zero = check.select(FILE_ALIAS, pl.col("zero_weight"))
    out = counts.join(zero, on=FILE_ALIAS, how="full", coalesce=True)
    filled = out.with_columns(pl.exclude(FILE_ALIAS).fill_null(0))
    return filled.with_columns(read=pl.col("read") + pl.col("zero_weight"))


def _rows(k: int) -> str:
    return f"{k} row" if k == 1 else f"{k} rows"
