"""What a formula needs of a source: the schema checks and the scan's specification.

:func:`check_schema` checks the formula's columns against the source's schema
(names, types) and returns the :class:`ScanSpec`: the key columns (groupings
and categorical variables) and numeric variables the statistics query
computes (``sql/cell_stats.sql``, :func:`pooljob.scan.cell_moments.scan_cells`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pooljob.errors import InputError
from pooljob.model.cells import NumericVariable
from pooljob.model.design import build_design, categorical_columns
from pooljob.model.formula import Formula
from pooljob.scan.cell_moments import cell_stats_sql
from pooljob.scan.source import TableSource

#: Types read as numbers: covariates of these types are numeric, any other is categorical
#: (a BOOLEAN covariate is a factor with levels FALSE, TRUE, as a logical is in R).
_NUMBERS = (
    r"TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT"
    r"|FLOAT|DOUBLE|REAL|DECIMAL(\(.*\))?"
)
_NUMERIC = re.compile(rf"^({_NUMBERS})$")
#: Types a response or an offset may have: the numbers, and BOOLEAN read as 0/1.
_MEASURE = re.compile(rf"^({_NUMBERS}|BOOLEAN)$")
_GROUPABLE_EXCLUDED = re.compile(r"(\[\]|^STRUCT|^MAP|^UNION|^LIST|\[\d+\]$)")


@dataclass(frozen=True)
class ScanSpec:
    """What the scan must compute for a formula on a source.

    Attributes
    ----------
    keys : tuple of str
        Grouping and categorical columns: the cells.
    variables : tuple of NumericVariable
        Numeric variables, the response first.
    numeric : set of str
        Source columns of numeric type (not BOOLEAN: booleans are categorical).
    categorical : list of str
        The formula's categorical variables.
    offsets : tuple of int
        Indices (1-based, as in :class:`pooljob.model.design.Column`) of the
        variables that are plain offsets.
    """

    keys: tuple[str, ...]
    variables: tuple[NumericVariable, ...]
    numeric: set[str]
    categorical: list[str]
    offsets: tuple[int, ...] = ()


def scan_spec(formula: Formula, columns: dict[str, str]) -> ScanSpec:
    """Keys and variables of the cell scan, from the formula and the column types."""
    numeric = {c for c, t in columns.items() if _NUMERIC.match(t)}
    categorical = categorical_columns(formula, numeric)
    placeholder: dict[str, list[object]] = {c: [0, 1] for c in categorical}
    design = build_design(formula, numeric, placeholder)
    return ScanSpec(design.keys, design.variables, numeric, categorical, design.offsets)


def group_stats_sql(formula: Formula, columns: dict[str, str] | None = None) -> str:
    """The first statistics query for ``formula``, identifiers quoted.

    ``columns`` (name to DuckDB type) tells numeric from categorical columns;
    without it every variable is taken as numeric.  The centring shifts are
    the bound parameters ``$s0``, ``$s1`` … (0 on the first scan).
    """
    if columns is None:
        columns = {c: "DOUBLE" for c in formula.columns}
        for g in formula.groupings:
            columns.update({c: "VARCHAR" for c in g.columns})
    spec = scan_spec(formula, columns)
    return cell_stats_sql(spec.keys, spec.variables, False, len(spec.variables) > 1)


def check_schema(source: TableSource, formula: Formula, family: str = "gaussian") -> ScanSpec:
    """Check that the model's columns exist and have usable types for ``family``."""
    source.require(formula.columns)
    if family == "gaussian":
        if formula.cbind is not None:
            raise InputError(
                f"formula {formula.text!r}: a cbind(successes, failures) response needs "
                "family = 'binomial'"
            )
        if formula.log_offsets:
            raise InputError(
                f"formula {formula.text!r}: offset(log(...)) is supported for family = "
                "'poisson' and 'binomial'; for a gaussian model compute the column in a "
                "[source] query and use offset(col)"
            )
    roles = {formula.response: "response"}
    if formula.cbind is not None:
        roles.setdefault(formula.cbind[0], "response")
    for col in (*formula.offsets, *formula.log_offsets):
        roles.setdefault(col, "offset")
    for col, role in roles.items():
        ctype = source.columns[col]
        if not _MEASURE.match(ctype):
            raise InputError(
                f"{role} column {col!r} has type {ctype}; a {family} model needs a "
                "numeric column (integer, decimal, floating point or boolean): cast it in a "
                "[source] query or fix the data"
            )
    spec = scan_spec(formula, source.columns)
    for col in spec.keys:
        if _GROUPABLE_EXCLUDED.search(source.columns[col]):
            raise InputError(
                f"grouping or categorical column {col!r} has type {source.columns[col]}; "
                "such columns must be scalar (text, integer, date, ...)"
            )
    return spec
