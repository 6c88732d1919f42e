"""One DuckDB pass for a binomial or Poisson model: per-cell counts.

For a design that is categorical (or constant within cells) every row of a
cell shares the linear predictor, so the log-likelihood of the rows depends
on them only through per-cell sums (``sql/count_stats.sql``): successes and
trials for a binomial model, events and exposure for a Poisson one, and the
sum of the per-row constants (``log choose(t, y)``, ``y·o − log y!``) that
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
from pooljob.model.formula import Formula, display_name
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
)
from pooljob.scan.schema import ScanSpec
from pooljob.scan.source import TableSource

Array = NDArray[np.float64]

#: Families fitted from counts, and their canonical links.
COUNT_FAMILIES = {"binomial": "logit", "poisson": "log"}

#: Largest spread (relative to the value) of a covariate within a cell that
#: still counts as constant: rounding in the data, not variation.
CONSTANT_TOL = 1e-9


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
) -> str:
    """The per-cell count query for ``formula``, identifiers quoted; no parameters.

    With ``by``, the column naming each row's source file, it is the per-file
    query ``sql/file_count_stats.sql``: the same counts, one row per file
    (column ``file``) and cell.
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
    fields = {
        "columns": ",\n        ".join(columns),
        "key_list": key_sql + "," if keys else "",
        "group_by": f"group by {key_sql}" if keys else "",
        "drop_code": drop_code,
        "bad": bad,
        "exposure": exposure,
        "constant": constant,
        "extremes": extremes,
    }
    if by is None:
        return sql_text("count_stats").format(**fields)
    fields["group_by"] = f"group by {FILE_ALIAS}" + (f", {key_sql}" if keys else "")
    return sql_text("file_count_stats").format(file_column=source_column(by), **fields)


def _describe_cell(row: dict[str, object], keys: tuple[str, ...]) -> str:
    """``k = value, …`` of a query's row (its key columns ``k<i>``)."""
    values = [row[a] for a in key_aliases(keys)]
    return ", ".join(f"{k} = {v!r}" for k, v in zip(keys, values, strict=True)) or "the only cell"


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


def scan_counts(source: TableSource, formula: Formula, family: str, spec: ScanSpec) -> CountTable:
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
        When a response value is not a valid count, a covariate varies
        within a cell, a binomial offset varies within a cell, or no row is
        usable.
    """
    covariates = [spec.variables[k] for k in covariate_indices(spec)]
    table = pl.from_arrow(source.arrow(count_stats_sql(formula, family, spec.keys, covariates)))
    assert isinstance(table, pl.DataFrame)
    counts = count_row_counts(table, spec.keys)
    require_rows(counts, source.description)
    used = used_cells(table, spec.keys)
    if spec.keys:  # sorted by key: the same data give the same cells in the same order
        used = used.sort(key_aliases(spec.keys))
    return count_table(used, formula, family, spec, row_totals(counts))


def scan_count_parts(
    source: TableSource, formula: Formula, family: str, spec: ScanSpec, by: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One per-file count scan (``sql/file_count_stats.sql``) of the files of ``source``.

    ``by`` is the column naming each row's file.  Returns the used cells of
    each file (column ``file``, the key columns ``k<i>`` and
    :func:`count_columns`) and each file's row accounting
    (:func:`count_row_counts`).  Nothing is checked here: the merged cells
    are (:func:`count_table`), as a scan of every file would be.
    """
    covariates = [spec.variables[k] for k in covariate_indices(spec)]
    sql = count_stats_sql(formula, family, spec.keys, covariates, by=by)
    table = pl.from_arrow(source.arrow(sql))
    assert isinstance(table, pl.DataFrame)
    return used_cells(table, spec.keys), count_row_counts(table, spec.keys)


def _varies(lo: Array, hi: Array) -> NDArray[np.bool_]:
    return (hi - lo) > CONSTANT_TOL * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))


def count_table(
    used: pl.DataFrame, formula: Formula, family: str, spec: ScanSpec, rows: dict[str, object]
) -> CountTable:
    """The CountTable of a model from its cells' counts, checked (:func:`scan_counts`).

    ``used`` has the count query's columns, one row per cell with used rows,
    sorted by key; from one scan, or merged over files
    (:func:`merge_count_parts`).  ``rows`` is the row accounting.
    """
    keys, variables = spec.keys, spec.variables
    covariate_index = covariate_indices(spec)
    bad = int(used["n_bad_response"].sum())
    if bad:
        raise InputError(_response_problem(formula, family, bad))
    for j, k in enumerate(covariate_index):
        varies = _varies(used[f"min_{j}"].to_numpy(), used[f"max_{j}"].to_numpy())
        if varies.any():
            name = ":".join(display_name(c) for c in variables[k].columns)
            where = _describe_cell(used.row(int(np.argmax(varies)), named=True), keys)
            raise InputError(
                f"covariate {name!r} varies within cells (e.g. {where}): a {family} model is "
                "fitted from per-cell counts, so every numeric variable of the design must be "
                f"constant within a cell; make it categorical with factor({name}) or bin it"
            )
    lo, hi = used["min_offset"].to_numpy(), used["max_offset"].to_numpy()
    if family == "binomial" and np.any(_varies(lo, hi)):
        raise InputError(
            "the offset varies within cells: a binomial model is fitted from per-cell counts, "
            "so its offset must be constant within a cell (a function of the grouping and "
            "categorical columns); drop it or make it so"
        )
    values = np.zeros((used.height, len(variables)))
    for j, k in enumerate(covariate_index):
        values[:, k] = used[f"min_{j}"].to_numpy()
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


def merge_count_parts(parts: pl.DataFrame, keys: tuple[str, ...], covariates: int) -> pl.DataFrame:
    """The cells of the whole source from per-file counts: sums add, extremes by min and max.

    ``parts`` has the key columns ``k<i>`` and :func:`count_columns`, one row
    per file and used cell, in file order.  Returns the same columns, one
    row per cell, sorted by key; each cell's parts are summed in the order
    of ``parts`` (``numpy.bincount``), so equal parts give equal bits.
    """
    aliases = key_aliases(keys)
    part_keys = parts.select(aliases)
    if keys:
        cell_keys = part_keys.unique().sort(aliases)
        coded = part_keys.join(
            cell_keys.with_row_index("__cell"), on=aliases, how="left", maintain_order="left"
        )
        codes = coded["__cell"].to_numpy().astype(np.int64)
    else:  # no key column: one cell, the whole source
        cell_keys = pl.DataFrame()
        codes = np.zeros(parts.height, dtype=np.int64)
    size = cell_keys.height if keys else (1 if parts.height else 0)
    merged: dict[str, Array] = {}
    for name in count_columns(covariates):
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
    return pl.concat([cell_keys, frame], how="horizontal") if keys else frame
