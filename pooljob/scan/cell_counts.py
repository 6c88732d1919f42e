"""One DuckDB pass for a binomial or Poisson model: per-cell counts.

A cell is a distinct combination of the model's key columns (grouping and
categorical) and of the values of its numeric covariates (and of a binomial
offset): every row of a cell shares the linear predictor, so the
log-likelihood of the rows depends on them only through per-cell sums
(``sql/count_stats.sql``): successes and trials for a binomial model,
events and exposure for a Poisson one, and the sum of the per-row
constants (``log choose(t, y)``, ``y·o − log y!``) that
make the log-likelihood the same whether the rows come one by one or
already aggregated.  This module fills the query with quoted identifiers,
checks what it returns, and accounts for every row.  As in
:mod:`pooljob.scan.cell_moments`, the query renames the source's columns in
its first step (key column ``i`` is ``k<i>``) and names only its own
columns after it.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.cells import CountTable, NumericVariable
from pooljob.model.formula import Formula
from pooljob.scan.cell_moments import (
    DROP_REASONS,
    FILE_ALIAS,
    key_aliases,
    key_frame,
    null_key,
    require_rows,
    row_totals,
    source_column,
    sql_text,
    with_zero_weights,
)
from pooljob.scan.schema import ScanSpec
from pooljob.scan.source import TableSource

Array = NDArray[np.float64]

#: Families fitted from counts, and their canonical links.
COUNT_FAMILIES = {"binomial": "logit", "poisson": "log"}

#: Most cells a count model is fitted from.  With a continuous covariate a
#: cell is nearly a row; a cell costs ~0.5 KB through the fit (its counts,
#: design row, weights and the query's Arrow result), so 20M cells stay
#: within ~10 GiB of these 24 GiB machines.  The query returns at most one
#: row more than this (``limit``); only when it does are the cells counted.
MAX_CELLS = 20_000_000


def _double(column: str) -> str:
    return f"cast({source_column(column)} as double)"


def _offset_sql(formula: Formula) -> str:
    parts = [_double(c) for c in formula.offsets]
    parts += [
        f"(case when {_double(c)} > 0 then ln({_double(c)}) end)" for c in formula.log_offsets
    ]
    return " + ".join(parts) if parts else "0.0"


def count_stats_sql(
    formula: Formula,
    family: str,
    keys: tuple[str, ...],
    covariates: list[NumericVariable],
    by: str | None = None,
    weight: str | None = None,
) -> str:
    """The per-cell count query for ``formula``, identifiers quoted; no parameters.

    With ``by``, the column naming each row's source file, it is the per-file
    query ``sql/file_count_stats.sql``: the same counts, one row per file
    (column ``file``) and cell.  With ``weight``, the column of prior weights
    ``w``: each row's log-likelihood is ``w`` times its own, so the sums are
    ``Σ w y``, ``Σ w t`` (``Σ w e^o``) and ``Σ w · const``, over the rows
    with ``w > 0``.
    """
    y = _double(formula.response)
    if family == "binomial":
        if formula.cbind is None:
            trials = "1.0"
            bad = "y <> 0 and y <> 1"
            constant = "0.0"
        else:
            column, total = formula.cbind
            trials = _double(column) if total else f"{y} + {_double(column)}"
            bad = "y < 0 or t < y or y <> round(y) or t <> round(t)"
            constant = "lgamma(t + 1) - lgamma(y + 1) - lgamma(t - y + 1)"
        exposure = "t"
    else:
        trials = "1.0"
        bad = "y < 0 or y <> round(y)"
        exposure = "exp(o)"
        constant = "y * o - lgamma(y + 1)"
    aliases = key_aliases(keys)
    key_sql = ", ".join(aliases)
    columns = [f"{source_column(k)} as {a}" for k, a in zip(keys, aliases, strict=True)]
    columns += [f"{y} as y", f"{trials} as t", f"{_offset_sql(formula)} as o"]
    columns += [
        " * ".join(_double(c) for c in v.columns) + f" as c{k}" for k, v in enumerate(covariates)
    ]
    response = "y"
    if weight is not None:
        columns.append(f"{_double(weight)} as w")
        response, exposure, constant = "w * y", f"w * ({exposure})", f"w * ({constant})"
    unusable = ["o is null", "not isfinite(o)"]
    for k in range(len(covariates)):
        unusable += [f"c{k} is null", f"not isfinite(c{k})"]
    drop_code = (
        "case when y is null or t is null then 1 "
        "when not isfinite(y) or not isfinite(t) then 2 "
        f"when {' or '.join(unusable)} then 3 else 0 end"
    )
    extremes = "".join(
        f",\n        min(c{k}) filter (where drop_code = 0) as min_{k}"
        f",\n        max(c{k}) filter (where drop_code = 0) as max_{k}"
        for k in range(len(covariates))
    )
    # the covariates' values (and a binomial offset) are part of the cell: rows
    # that share them share the linear predictor, whether or not they vary
    cell_by = [*aliases, *(f"c{k}" for k in range(len(covariates)))]
    if family == "binomial" and (formula.offsets or formula.log_offsets):
        cell_by.append("o")
    group_sql = ", ".join(cell_by)
    fields = {
        "columns": ",\n        ".join(columns),
        "key_list": key_sql + "," if keys else "",
        "group_by": f"group by {group_sql}" if cell_by else "",
        "drop_code": drop_code,
        "bad": bad,
        "exposure": exposure,
        "constant": constant,
        "response": response,
        "extremes": extremes,
        "filter": "where w > 0" if weight is not None else "",
    }
    if by is None:
        return sql_text("count_stats").format(**fields)
    fields["group_by"] = f"group by {FILE_ALIAS}" + (f", {group_sql}" if cell_by else "")
    return sql_text("file_count_stats").format(file_column=source_column(by), **fields)


def _response_problem(formula: Formula, family: str, count: int) -> str:
    name = formula.response
    if family == "binomial" and formula.cbind is None:
        what = f"response {name!r} must be 0 or 1 (or boolean) for family = 'binomial'"
        fix = "recode it, or give successes and failures as cbind(successes, failures)"
    elif family == "binomial":
        assert formula.cbind is not None
        second, total = formula.cbind
        detail = f"{second!r} trials" if total else f"{second!r} failures"
        what = (
            f"cbind response: successes {name!r} and {detail} must be whole numbers "
            "with 0 <= successes <= trials"
        )
        fix = "fix the data or filter those rows with [source] where"
    else:
        what = f"response {name!r} must be a whole number >= 0 for family = 'poisson'"
        fix = "fix the data or filter those rows with [source] where"
    return f"{what}; {count} rows are not: {fix}"


def covariate_indices(spec: ScanSpec) -> list[int]:
    """Positions in ``spec.variables`` of the covariates: not the response, not an offset."""
    return [k for k in range(1, len(spec.variables)) if k + 1 not in spec.offsets]


def count_row_counts(table: pl.DataFrame, keys: tuple[str, ...]) -> pl.DataFrame:
    """Rows read, used and dropped by reason, per file (column ``file``) if the query has one.

    ``table`` is the count query's result, null keys included.
    """
    group = FILE_ALIAS if FILE_ALIAS in table.columns else "__all"
    if group == "__all":
        table = table.with_columns(pl.lit(0).alias(group))
    keyed = ~null_key(keys)
    return (
        table.group_by(group)
        .agg(
            pl.col("n_rows").sum().alias("read"),
            pl.col("n_used").filter(keyed).sum().alias("used"),
            pl.col("n_rows").filter(~keyed).sum().alias("null_group_key"),
            pl.col("n_null_response").filter(keyed).sum().alias("null_response"),
            pl.col("n_nonfinite_response").filter(keyed).sum().alias("nonfinite_response"),
            pl.col("n_unusable_covariate").filter(keyed).sum().alias("unusable_covariate"),
        )
        .select(group, "read", "used", *DROP_REASONS)
        .sort(group)
    )


def used_cells(table: pl.DataFrame, keys: tuple[str, ...]) -> pl.DataFrame:
    """The count query's rows with no null key and at least one used row."""
    return table.filter(~null_key(keys)).filter(pl.col("n_used") > 0)


def cell_columns(keys: tuple[str, ...], covariates: int, offset: bool) -> list[str]:
    """The columns of the count query's result that identify a cell, in sort order.

    The key columns ``k<i>``, then each covariate's value ``min_<k>`` (its
    minimum over the cell: the cell's value, the query grouping by it), then
    ``min_offset`` where the offset is part of the cell (``offset``: a
    binomial model with one).
    """
    return [*key_aliases(keys), *(f"min_{j}" for j in range(covariates))] + (
        ["min_offset"] if offset else []
    )


def keyed_offset(formula: Formula, family: str) -> bool:
    """Whether the offset is part of the cell: a binomial model with one."""
    return family == "binomial" and bool(formula.offsets or formula.log_offsets)


def _bounded(source: TableSource, sql: str, family: str) -> pl.DataFrame:
    """The count query's result, refused beyond :data:`MAX_CELLS` rows (one line, the count)."""
    table = pl.from_arrow(source.arrow(f"{sql}\nlimit {MAX_CELLS + 1}"))
    assert isinstance(table, pl.DataFrame)
    if table.height > MAX_CELLS:
        total = pl.from_arrow(source.arrow(f"select count(*) as n from (\n{sql}\n) as cells"))
        assert isinstance(total, pl.DataFrame)
        raise InputError(cell_bound_message(int(total.item()), family))
    return table


def cell_bound_message(cells: int, family: str) -> str:
    """The one-line error of a count model with more than :data:`MAX_CELLS` cells."""
    return (
        f"{cells:,} cells (distinct keys and covariate values) exceed the bound of "
        f"{MAX_CELLS:,} for a {family} model fitted from per-cell counts: round or bin "
        "the continuous covariates, or filter rows with [source] where"
    )


def scan_counts(
    source: TableSource,
    formula: Formula,
    family: str,
    spec: ScanSpec,
    weight: str | None = None,
    zero_weight: int = 0,
) -> CountTable:
    """Scan the source once into a CountTable.

    Parameters
    ----------
    source : TableSource
    formula : Formula
    family : {"binomial", "poisson"}
    spec : ScanSpec
        The cells' key columns and the design's numeric variables, the
        response first (:func:`pooljob.scan.schema.scan_spec`); offsets
        are read from the formula.

    Raises
    ------
    InputError
        When a response value is not a valid count, there are more than
        :data:`MAX_CELLS` cells, or no row is usable.

    With ``weight``, the column of prior weights, already checked
    (:func:`pooljob.scan.weights.scan_weighted_counts`): the weighted
    counts of the rows with ``w > 0``, and ``zero_weight`` rows of weight 0
    counted as read and dropped.
    """
    covariates = [spec.variables[k] for k in covariate_indices(spec)]
    sql = count_stats_sql(formula, family, spec.keys, covariates, weight=weight)
    table = _bounded(source, sql, family)
    counts = count_row_counts(table, spec.keys)
    require_rows(counts, source.description, zero_weight)
    used = used_cells(table, spec.keys)
    # sorted by cell: the same data give the same cells in the same order
    order = cell_columns(spec.keys, len(covariates), keyed_offset(formula, family))
    if order:
        used = used.sort(order)
    rows = row_totals(counts)
    if weight is not None:
        rows = with_zero_weights(rows, zero_weight)
    return count_table(used, formula, family, spec, rows)


def scan_count_parts(
    source: TableSource,
    formula: Formula,
    family: str,
    spec: ScanSpec,
    by: str,
    weight: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One per-file count scan (``sql/file_count_stats.sql``) of the files of ``source``.

    ``by`` is the column naming each row's file.  Returns the used cells of
    each file (column ``file``, the key columns ``k<i>`` and
    :func:`count_columns`) and each file's row accounting
    (:func:`count_row_counts`).  Nothing is checked here: the merged cells
    are (:func:`count_table`), as a scan of every file would be.
    """
    covariates = [spec.variables[k] for k in covariate_indices(spec)]
    sql = count_stats_sql(formula, family, spec.keys, covariates, by=by, weight=weight)
    table = _bounded(source, sql, family)
    return used_cells(table, spec.keys), count_row_counts(table, spec.keys)


def count_table(
    used: pl.DataFrame, formula: Formula, family: str, spec: ScanSpec, rows: dict[str, object]
) -> CountTable:
    """The CountTable of a model from its cells' counts, checked (:func:`scan_counts`).

    ``used`` has the count query's columns, one row per cell with used rows,
    sorted by cell (:func:`cell_columns`); from one scan, or merged over
    files (:func:`merge_count_parts`).  ``rows`` is the row accounting.
    """
    keys, variables = spec.keys, spec.variables
    covariate_index = covariate_indices(spec)
    bad = int(used["n_bad_response"].sum())
    if bad:
        raise InputError(_response_problem(formula, family, bad))
    if used.height > MAX_CELLS:
        raise InputError(cell_bound_message(used.height, family))
    values = np.zeros((used.height, len(variables)))
    for j, k in enumerate(covariate_index):
        values[:, k] = used[f"min_{j}"].to_numpy()
    lo = used["min_offset"].to_numpy()
    return CountTable(
        keys=key_frame(used, keys),
        n=used["n_used"].to_numpy().astype(np.float64),
        y=used["y_sum"].to_numpy().astype(np.float64),
        t=used["t_sum"].to_numpy().astype(np.float64),
        offset=lo.astype(np.float64) if family == "binomial" else np.zeros(used.height),
        values=values,
        constant=float(used["const_sum"].sum()),
        rows=rows,
    )


def count_columns(covariates: int) -> list[str]:
    """The count query's statistics of a used cell (what :func:`merge_count_parts` merges)."""
    names = ["n_used", "n_bad_response", "y_sum", "t_sum", "const_sum", "min_offset", "max_offset"]
    return names + [f"{e}_{j}" for j in range(covariates) for e in ("min", "max")]


def merge_count_parts(
    parts: pl.DataFrame, keys: tuple[str, ...], covariates: int, offset: bool = False
) -> pl.DataFrame:
    """The cells of the whole source from per-file counts: sums add, extremes by min and max.

    ``parts`` has the key columns ``k<i>`` and :func:`count_columns`, one row
    per file and used cell, in file order; a cell is identified by
    :func:`cell_columns` (``offset``: a binomial model with one).  Returns
    the same columns, one row per cell, sorted by cell; each cell's parts
    are summed in the order of ``parts`` (``numpy.bincount``), so equal
    parts give equal bits.
    """
    aliases = key_aliases(keys)
    by = cell_columns(keys, covariates, offset)
    if by:
        cell_keys = parts.select(by).unique().sort(by)
        coded = parts.select(by).join(
            cell_keys.with_row_index("__cell"), on=by, how="left", maintain_order="left"
        )
        codes = coded["__cell"].to_numpy().astype(np.int64)
    else:  # no key column: one cell, the whole source
        cell_keys = pl.DataFrame()
        codes = np.zeros(parts.height, dtype=np.int64)
    size = cell_keys.height if by else (1 if parts.height else 0)
    merged: dict[str, Array] = {}
    for name in count_columns(covariates):
        if name in by:
            merged[name] = cell_keys[name].to_numpy().astype(np.float64)
            continue
        values = parts[name].to_numpy().astype(np.float64)
        if name.startswith("min_"):
            out = np.full(size, np.inf)
            np.minimum.at(out, codes, values)
        elif name.startswith("max_"):
            out = np.full(size, -np.inf)
            np.maximum.at(out, codes, values)
        else:
            out = np.bincount(codes, weights=values, minlength=size)
        merged[name] = out
    frame = pl.DataFrame(merged)
    return pl.concat([cell_keys.select(aliases), frame], how="horizontal") if aliases else frame
