"""The scan of an area-level (Fay–Herriot) model: one row per area, collected.

An area-level source has one row per area (a county, a trial): a direct
estimate, its known sampling variance and covariates.  Areas are few (the
3,143 US counties of SAIPE; at most ``MAX_AREAS``), so the rows are read
into Python, after two checks made by DuckDB on the whole source
(``sql/area_counts.sql``): rows dropped by reason, as lme4's ``na.omit``,
and the rows whose sampling variance is not a positive number (a data
error).  ``sql/area_rows.sql`` then collects the used rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.area_options import area_formula_problems, term_label
from pooljob.model.formula import Formula
from pooljob.scan.cell_moments import DROP_REASONS, key_aliases, source_column, sql_text
from pooljob.scan.schema import _MEASURE, _NUMERIC
from pooljob.scan.source import TableSource

Array = NDArray[np.float64]
#: The most areas (used rows) an area-level model reads into memory.
MAX_AREAS = 1_000_000


@dataclass(frozen=True)
class AreaRows:
    """The areas of an area-level model, as read.

    Attributes
    ----------
    keys : polars.DataFrame
        One row per area: the grouping's key columns (their own names and types).
    y, v : ndarray, shape (m,)
        Direct estimates and their sampling variances.
    x : ndarray, shape (m, p)
        The fixed-effect design; ``names`` its columns (lme4's names).
    rows : dict
        ``read``, ``used`` and ``dropped`` by reason, as the manifest's ``rows``.
    """

    keys: pl.DataFrame
    y: Array
    v: Array
    x: Array
    names: list[str]
    rows: dict[str, Any]


def check_area_schema(source: TableSource, formula: Formula, variance: str) -> None:
    """Check the formula's shape and the types of its columns and of ``variance``."""
    problems = area_formula_problems(formula)
    if problems:
        raise InputError(f"formula {formula.text!r}: " + "; ".join(problems))
    source.require((*formula.columns, variance))
    measures = {formula.response: "response", variance: "sampling_variance"}
    for col, role in measures.items():
        if not _MEASURE.match(source.columns[col]) or source.columns[col] == "BOOLEAN":
            raise InputError(
                f"{role} column {col!r} has type {source.columns[col]}; an area-level model "
                "needs a numeric column: cast it in a [source] query or fix the data"
            )
    for term in formula.fixed:
        for var in term:
            if var.as_factor or not _NUMERIC.match(source.columns[var.column]):
                raise InputError(
                    f"covariate {var.label!r} of the area-level model {formula.text!r} is "
                    f"categorical (type {source.columns[var.column]}); area-level models take "
                    "numeric covariates only: code it as 0/1 columns in a [source] query"
                )


def _templates(formula: Formula, variance: str) -> dict[str, str]:
    keys = formula.random[0].grouping.columns
    aliases = key_aliases(keys)
    columns = [f"{source_column(k)} as {a}" for k, a in zip(keys, aliases, strict=True)]
    columns.append(f"cast({source_column(formula.response)} as double) as y")
    columns.append(f"cast({source_column(variance)} as double) as v")
    covariates = []
    for k, term in enumerate(formula.fixed):
        product = " * ".join(f"cast({source_column(v.column)} as double)" for v in term)
        columns.append(f"{product} as c{k}")
        covariates.append(f"c{k}")
    unusable = " or ".join(f"{c} is null or not isfinite({c})" for c in covariates) or "false"
    drop_code = (
        "case when "
        + " or ".join(f"{a} is null" for a in aliases)
        + " then 1 when y is null then 2 when not isfinite(y) then 3 "
        + f"when {unusable} then 4 else 0 end"
    )
    return {
        "columns": ",\n        ".join(columns),
        "drop_code": drop_code,
        "key_order": ", ".join(aliases),
        "limit": str(MAX_AREAS),
    }


def area_counts_sql(formula: Formula, variance: str) -> str:
    """``sql/area_counts.sql`` for ``formula``, identifiers quoted; no parameters."""
    return sql_text("area_counts").format(**_templates(formula, variance))


def area_rows_sql(formula: Formula, variance: str) -> str:
    """``sql/area_rows.sql`` for ``formula``, identifiers quoted; no parameters."""
    return sql_text("area_rows").format(**_templates(formula, variance))


def _frame(source: TableSource, sql: str) -> pl.DataFrame:
    table = pl.from_arrow(source.arrow(sql))
    assert isinstance(table, pl.DataFrame)
    return table


def scan_areas(source: TableSource, formula: Formula, variance: str) -> AreaRows:
    """Count, check and collect the areas of ``source`` (module docstring).

    Raises
    ------
    InputError
        A sampling variance that is not a positive number (the count of such
        rows), more than ``MAX_AREAS`` areas, an area on two rows, fewer
        areas than the model needs.
    """
    check_area_schema(source, formula, variance)
    counts = _frame(source, area_counts_sql(formula, variance)).row(0, named=True)
    used = int(counts["n_used"])
    rows: dict[str, Any] = {
        "read": int(counts["n_rows"]),
        "used": used,
        "dropped": {r: int(counts[f"n_{r}"]) for r in DROP_REASONS},
    }
    bad = int(counts["n_bad_variance"])
    if bad:
        raise InputError(
            f"sampling_variance column {variance!r} of {source.description}: {bad} of "
            f"{used} used rows have a variance that is not a positive number (null, "
            "NaN, infinite, zero or negative); a known sampling variance must be > 0: fix "
            "the data or leave those areas out with a [source] where"
        )
    if used > MAX_AREAS:
        raise InputError(
            f"{source.description} has {used:,} usable rows; an area-level model "
            f"reads one row per area into memory, at most {MAX_AREAS:,}: aggregate to areas "
            "first, or fit a unit-level model (no sampling_variance)"
        )
    table = _frame(source, area_rows_sql(formula, variance))
    grouping = formula.random[0].grouping
    aliases = key_aliases(grouping.columns)
    keys = table.select(
        [pl.col(a).alias(k) for a, k in zip(aliases, grouping.columns, strict=True)]
    )
    duplicated = keys.is_duplicated()
    if duplicated.any():
        first = keys.filter(duplicated).row(0)
        raise InputError(
            f"an area-level model needs each {grouping.name} once (one row per area, with "
            f"its direct estimate and sampling variance); {int(duplicated.sum())} rows share "
            f"their {grouping.name} with another, e.g. {':'.join(map(str, first))}: "
            "aggregate to one row per area, or drop sampling_variance for a unit-level model"
        )
    m = table.height
    cols = [np.ones(m)] if formula.intercept else []
    cols += [table[f"c{k}"].to_numpy().astype(np.float64) for k in range(len(formula.fixed))]
    x = np.column_stack(cols) if cols else np.zeros((m, 0))
    names = (["(Intercept)"] if formula.intercept else []) + [term_label(t) for t in formula.fixed]
    p = x.shape[1]
    if m < p + 2:
        raise InputError(
            f"an area-level model with {p} coefficients needs at least {p + 2} areas; "
            f"{source.description} has {m} usable"
        )
    if p and np.linalg.matrix_rank(x) < p:
        raise InputError(
            f"the covariates of {formula.text!r} are collinear over the {m} areas "
            f"(the design {', '.join(names)} is rank deficient): drop one"
        )
    return AreaRows(
        keys=keys,
        y=table["y"].to_numpy().astype(np.float64),
        v=table["v"].to_numpy().astype(np.float64),
        x=np.asarray(x, dtype=np.float64),
        names=names,
        rows=rows,
    )
