"""Cells from a rollup table: per-cell moments from each rollup row's count, sum and squares.

A warehouse rollup keeps, per day × store × segment say, the number of rows,
the sum of the response and the sum of its squares.  When every other column
the model uses is a column of the rollup (so constant over the rows behind
a rollup row), those three numbers are all a Gaussian model needs of the
rows: ``sql/rollup_stats.sql`` turns them into the cells' counts, means and
co-moments (:class:`pooljob.model.cells.CellTable`), the same numbers a
scan of the rows gives, and the fit runs unchanged.  Formulas:
docs/models.md, "Rollup tables".
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.errors import ConfigError, InputError
from pooljob.model.cells import CellTable, NumericVariable
from pooljob.model.formula import Formula
from pooljob.model.options import ROLLUP_KEYS, Rollup
from pooljob.scan.cell_moments import (
    DROP_REASONS,
    cell_arrays,
    centring_shifts,
    key_aliases,
    key_frame,
    source_column,
    sql_text,
)
from pooljob.scan.schema import _GROUPABLE_EXCLUDED, _MEASURE, ScanSpec, scan_spec
from pooljob.scan.source import TableSource

#: What a rollup row that is dropped is counted as (``rows["rollup_rows"]``).
ROLLUP_DROPS = ("null_count", "zero_count", *DROP_REASONS)


def rollup_stats_sql(
    keys: tuple[str, ...], variables: tuple[NumericVariable, ...], rollup: Rollup
) -> str:
    """``sql/rollup_stats.sql`` filled in: identifiers quoted, shifts the parameters ``$s<i>``."""
    aliases = key_aliases(keys)
    exprs = [f"{source_column(k)} as {a}" for k, a in zip(keys, aliases, strict=True)]
    exprs += [f"{source_column(c)} as {a}" for c, a in zip(rollup.columns, "wsq", strict=True)]
    for i, v in enumerate(variables[1:], start=1):
        product = " * ".join(f"cast({source_column(c)} as double)" for c in v.columns)
        exprs.append(f"{product} - $s{i} as v{i}")
    m = len(variables)
    covariates = range(1, m)
    aggs = ["any_value(c0) as mean_0"] + [f"any_value(c{i}) as mean_{i}" for i in covariates]
    for i in range(m):
        for j in range(i, m):
            scatter = f"sum(w * (m{i} - c{i}) * (m{j} - c{j}))"
            total = f"(sum(d) + {scatter})" if i == j == 0 else scatter
            aggs.append(f"{total} / sum(w) as cov_{i}_{j}")
    fields = {
        "columns": ",\n        ".join(exprs),
        "null_key": " or ".join(f"{a} is null" for a in aliases) or "false",
        "bad_covariate": " or ".join(f"v{i} is null or not isfinite(v{i})" for i in covariates)
        or "false",
        "key_list": "".join(f"{a}, " for a in aliases),
        "row_means": "".join(f"v{i} as m{i}, " for i in covariates),
        "cell_means": "".join(
            f"sum(w * m{i}) over cell / sum(w) over cell as c{i}, " for i in covariates
        ),
        "cell": ", ".join(["drop_code", *aliases]),
        "aggregates": ",\n        ".join(aggs),
    }
    return sql_text("rollup_stats").format(**fields)


def _listed(columns: dict[str, str]) -> str:
    return ", ".join(f"{c} ({t})" for c, t in columns.items())


def check_rollup_schema(
    source: TableSource, formula: Formula, family: str, rollup: Rollup
) -> ScanSpec:
    """Check that ``source`` is a rollup fine enough for ``formula``; the scan's spec.

    Raises ConfigError (exit 2): a family other than gaussian, a count, sum or
    sum of squares column that is missing or not numeric, or a column of the
    formula (other than the response) that the rollup lacks.
    """
    columns = dict(source.columns)
    where = f"the rollup {source.description}"
    if family != "gaussian":
        raise ConfigError(
            f"rollup is for family = 'gaussian', got {family!r}: binomial rollups are already "
            "cbind(successes, failures) per row, Poisson rollups a count response with "
            "offset(log(exposure)) summed per row; drop the rollup option (docs/rates.md)"
        )
    if formula.cbind is not None or formula.log_offsets:
        raise ConfigError(
            f"formula {formula.text!r}: a rollup fits a gaussian response y with offset(col) "
            "at most; cbind(...) and offset(log(...)) are for binomial and poisson models"
        )
    for key, col in zip(ROLLUP_KEYS, rollup.columns, strict=True):
        if col not in columns:
            raise ConfigError(
                f"rollup {key} = {col!r} is not a column of {where}; its columns: "
                f"{_listed(columns)}"
            )
        if not _MEASURE.match(columns[col]) or columns[col] == "BOOLEAN":
            raise ConfigError(
                f"rollup {key} = {col!r} has type {columns[col]}, not a number; cast it in a "
                f"[source] query or name another column: {_listed(columns)}"
            )
    others = [c for c in formula.columns if c != formula.response]
    missing = [c for c in others if c not in columns]
    if missing:
        raise ConfigError(
            f"formula {formula.text!r} uses {', '.join(map(repr, missing))}, not a column of "
            f"{where}: a rollup fits only models whose every column (grouping, covariate, "
            "offset) is a column of the rollup, constant over each rollup row's rows; roll "
            "the data up by that column too, or drop it from the formula; its columns: "
            f"{_listed(columns)}"
        )
    if formula.response in rollup.columns or formula.response in others:
        raise ConfigError(
            f"formula {formula.text!r}: the response {formula.response!r} of a rollup is "
            "given by the count, sum and sum_squares columns and may be no other column of "
            "the model"
        )
    for col in formula.offsets:
        if not _MEASURE.match(columns[col]):
            raise ConfigError(
                f"offset column {col!r} has type {columns[col]}; cast it to a number in a "
                "[source] query"
            )
    spec = scan_spec(formula, {**columns, formula.response: "DOUBLE"})
    for col in spec.keys:
        if _GROUPABLE_EXCLUDED.search(columns[col]):
            raise ConfigError(
                f"grouping or categorical column {col!r} has type {columns[col]}; such "
                "columns must be scalar (text, integer, date, ...)"
            )
    return spec


def _run(
    source: TableSource, spec: ScanSpec, rollup: Rollup, shifts: NDArray[np.float64]
) -> pl.DataFrame:
    sql = rollup_stats_sql(spec.keys, spec.variables, rollup)
    params = {f"s{i}": float(s) for i, s in enumerate(shifts)}
    try:
        table = pl.from_arrow(source.arrow(sql, params))
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"the rollup {source.description} could not be reduced to cells ({first}); if "
            "DECIMAL arithmetic overflows, cast the sum and sum_squares columns to DOUBLE in "
            "a [source] query"
        ) from None
    assert isinstance(table, pl.DataFrame)
    return table


def _rows(table: pl.DataFrame, description: str) -> dict[str, object]:
    """Rows read, used and dropped, in rows (the counts) and in rollup rows; data errors raise."""
    by_code = table.group_by("drop_code").agg(
        pl.col("rollup_rows").sum().alias("rollups"), pl.col("n_rows").sum().alias("rows")
    )
    found = {
        str(r["drop_code"]): (int(r["rollups"]), r["rows"]) for r in by_code.iter_rows(named=True)
    }
    for code, what in (
        ("bad_count", "a count that is negative or not a whole number"),
        ("bad_sum_squares", "sum_squares below sum²/count beyond rounding"),
    ):
        if code in found:
            raise InputError(
                f"{found[code][0]} rows of the rollup {description} have {what}: no rows give "
                "such statistics; fix the rollup (or filter those rows out with [source] where)"
            )
    rollups = {c: found.get(c, (0, 0.0))[0] for c in ("used", *ROLLUP_DROPS)}
    rows = {c: int(found.get(c, (0, 0.0))[1] or 0) for c in ("used", *DROP_REASONS)}
    if not rollups["used"]:
        detail = ", ".join(f"{v} with {k.replace('_', ' ')}" for k, v in rollups.items() if v)
        raise InputError(
            f"no usable rows in the rollup {description}"
            + (f" (rollup rows: {detail})" if detail else "")
            + "; check the [source] where filter and the rollup's columns"
        )
    return {
        "read": sum(rows.values()),
        "used": rows["used"],
        "dropped": {r: rows[r] for r in DROP_REASONS},
        "rollup_rows": {
            "read": sum(rollups.values()),
            "used": rollups["used"],
            "dropped": {r: rollups[r] for r in ROLLUP_DROPS},
        },
    }


def scan_rollup(source: TableSource, spec: ScanSpec, rollup: Rollup) -> CellTable:
    """The cells of the rows behind a rollup, as :func:`pooljob.scan.cell_moments.scan_cells`.

    One scan of the rollup; a second only if a variable must be centred (the
    response's shift is a whole number, so it is exact in any column type).
    Rollup rows with a null count or a count of 0, a null key, a null or
    non-finite sum or sum of squares, or an unusable covariate are dropped
    and counted (``rows["dropped"]`` in rows, ``rows["rollup_rows"]`` in
    rollup rows); a negative count, or squares below ``sum²/count``, raise.
    """
    m = len(spec.variables)
    shifts = np.zeros(m)
    table = _run(source, spec, rollup, shifts)
    rows = _rows(table, source.description)
    good = table.filter(pl.col("drop_code") == "used")
    n, mean, comoment = cell_arrays(good, m)
    new_shifts = centring_shifts(n, mean, comoment, [v.centrable for v in spec.variables])
    new_shifts[0] = np.round(new_shifts[0])
    if np.any(new_shifts != 0.0):
        shifts = new_shifts
        good = _run(source, spec, rollup, shifts).filter(pl.col("drop_code") == "used")
        n, mean, comoment = cell_arrays(good, m)
    return CellTable(
        keys=key_frame(good, spec.keys),
        n=n,
        mean=mean,
        comoment=comoment,
        shifts=shifts,
        rows=rows,
    )
