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
    key_aliases,
    key_frame,
    null_key,
    require_rows,
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
    formula: Formula, family: str, keys: tuple[str, ...], covariates: list[NumericVariable]
) -> str:
    """The per-cell count query for ``formula``, identifiers quoted; no parameters."""
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
    return sql_text("count_stats").format(
        columns=",\n        ".join(columns),
        key_list=key_sql + "," if keys else "",
        group_by=f"group by {key_sql}" if keys else "",
        drop_code=drop_code,
        bad=bad,
        exposure=exposure,
        constant=constant,
        extremes=extremes,
    )


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
    keys, variables = spec.keys, spec.variables
    covariate_index = covariate_indices(spec)
    covariates = [variables[k] for k in covariate_index]
    table = pl.from_arrow(source.arrow(count_stats_sql(formula, family, keys, covariates)))
    assert isinstance(table, pl.DataFrame)
    unkeyed = table.filter(null_key(keys))
    keyed = table.filter(~null_key(keys))
    dropped = {
        "null_group_key": int(unkeyed["n_rows"].sum()),
        "null_response": int(keyed["n_null_response"].sum()),
        "nonfinite_response": int(keyed["n_nonfinite_response"].sum()),
        "unusable_covariate": int(keyed["n_unusable_covariate"].sum()),
    }
    # sorted by key: the same data give the same cells in the same order, and the same fit
    used = keyed.filter(pl.col("n_used") > 0)
    if keys:
        used = used.sort(key_aliases(keys))
    counts = pl.DataFrame(
        {
            "read": [int(table["n_rows"].sum())],
            "used": [int(used["n_used"].sum())],
            **{r: [dropped[r]] for r in DROP_REASONS},
        }
    )
    require_rows(counts, source.description)
    bad = int(used["n_bad_response"].sum())
    if bad:
        raise InputError(_response_problem(formula, family, bad))
    for j, k in enumerate(covariate_index):
        lo, hi = used[f"min_{j}"].to_numpy(), used[f"max_{j}"].to_numpy()
        varies = (hi - lo) > CONSTANT_TOL * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
        if varies.any():
            name = ":".join(display_name(c) for c in variables[k].columns)
            where = _describe_cell(used.row(int(np.argmax(varies)), named=True), keys)
            raise InputError(
                f"covariate {name!r} varies within cells (e.g. {where}): a {family} model is "
                "fitted from per-cell counts, so every numeric variable of the design must be "
                f"constant within a cell; make it categorical with factor({name}) or bin it"
            )
    lo, hi = used["min_offset"].to_numpy(), used["max_offset"].to_numpy()
    if family == "binomial" and np.any(
        (hi - lo) > CONSTANT_TOL * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
    ):
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
        rows={
            "read": int(table["n_rows"].sum()),
            "used": int(used["n_used"].sum()),
            "dropped": dropped,
        },
    )
