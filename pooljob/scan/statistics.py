"""Schema checks, the scan specification, and the tree of a nested model.

The scan itself is :func:`pooljob.scan.cell_moments.scan_cells` (``sql/cell_stats.sql``).
For ``y ~ 1 + (1 | a) + (1 | b:a) …`` the cells are the leaf groups, and this
module arranges them into the tree the fast solver (:mod:`pooljob.model.nested`)
needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import polars as pl

from pooljob.errors import InputError, NotNestedError
from pooljob.model.design import build_design, categorical_columns
from pooljob.model.formula import Formula, Grouping
from pooljob.model.nested import NestedStats
from pooljob.scan.cell_moments import CellTable, NumericVariable, cell_stats_sql, scan_cells
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


@dataclass(frozen=True)
class Level:
    """One grouping of the tree: which leaves belong to which of its groups.

    Attributes
    ----------
    grouping : Grouping
    codes : ndarray of int
        Per leaf group, the code of its group at this level (0..size-1, in
        sorted key order).
    first : ndarray of int
        Per group at this level, the index of one of its leaves (to read keys).
    """

    grouping: Grouping
    codes: np.ndarray
    first: np.ndarray

    @property
    def size(self) -> int:
        """Number of groups at this level."""
        return len(self.first)


@dataclass(frozen=True)
class GroupStatistics:
    """Everything the fit needs, and what the outputs need to label it.

    Attributes
    ----------
    keys : polars.DataFrame
        One row per leaf group: the grouping columns, original types.
    stats : NestedStats
        Sufficient statistics in leaf order, response centred at ``shift``.
    levels : tuple of Level
        Top level first.
    shift : float
        The constant subtracted from the response before any sum.
    rows : dict
        ``read``, ``used`` and ``dropped`` (reason to count).
    """

    keys: pl.DataFrame
    stats: NestedStats
    levels: tuple[Level, ...]
    shift: float
    rows: dict[str, object]


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


def nested_statistics(cells: CellTable, formula: Formula, where: str) -> GroupStatistics:
    """Arrange the cells of ``y ~ 1 + (1 | a) + …`` into a tree.

    Raises
    ------
    NotNestedError
        When the groupings are crossed in the data.
    """
    keys = list(formula.key_columns)
    # the statistics stay arrays beside the keys: no column name is added to the user's
    tree, order = _build_levels(cells.keys, formula)
    levels = tuple(tree)
    parents = [np.zeros(levels[0].size, dtype=np.int64)]
    for upper, lower in pairwise(levels):
        parents.append(upper.codes[lower.first].astype(np.int64))
    stats = NestedStats(
        n=cells.n[order].astype(np.float64),
        mean=cells.mean[order, 0].astype(np.float64),
        within_ss=np.maximum(cells.comoment[order, 0, 0].astype(np.float64), 0.0),
        parents=tuple(parents),
    )
    _check_identifiable(stats, levels, where)
    return GroupStatistics(
        keys=cells.keys[order].select(keys),
        stats=stats,
        levels=levels,
        shift=float(cells.shifts[0]),
        rows=cells.rows,
    )


def compute(source: TableSource, formula: Formula) -> GroupStatistics:
    """Scan the source and return the tree of a nested random-intercept model."""
    spec = check_schema(source, formula)
    cells = scan_cells(source, spec.keys, spec.variables)
    return nested_statistics(cells, formula, source.description)


def _check_identifiable(stats: NestedStats, levels: tuple[Level, ...], where: str) -> None:
    """Refuse the data lme4 refuses: the variances could not be told apart.

    As lme4's checks: every grouping needs at least two groups
    (``grouping factors must have > 1 sampled level``) and fewer groups than
    rows (``number of levels of each grouping factor must be < number of
    observations``); and some group must vary within itself, or σ² is 0.
    """
    for lev in levels:
        if lev.size < 2:
            raise InputError(
                f"grouping {lev.grouping.name!r} has a single group in {where}; a variance "
                "between groups needs at least two: check the where filter, or drop the term"
            )
    if len(stats.n) >= stats.nobs:
        leaf = levels[-1].grouping.name
        raise InputError(
            f"every {leaf!r} group has exactly one row ({int(stats.nobs)} rows, "
            f"{len(stats.n)} groups), so its variance cannot be told from the residual "
            "variance; use a coarser grouping or more data per group"
        )
    if float(stats.within_ss.sum()) <= 0.0:
        raise InputError(
            f"the response does not vary within any group in {where}, so the residual "
            "variance is 0 and the model is degenerate; check the response column"
        )


def _ordinal(series: pl.Series) -> tuple[np.ndarray, int]:
    """Per row, the rank of its value among the column's distinct values (0.., sorted)."""
    distinct = series.unique().sort()
    return distinct.search_sorted(series).to_numpy().astype(np.int64), distinct.len()


def _tuple_key(columns: list[str], ordinals: dict[str, tuple[np.ndarray, int]]) -> np.ndarray:
    """One int64 per row, ordered as the rows' tuples of ``columns`` (lexicographically).

    Mixed radix over the columns' ordinals; where the radix would pass 2⁶²
    the partial key is ranked densely first (a sort), which keeps its order.
    """
    key, size = ordinals[columns[0]]
    for column in columns[1:]:
        codes, k = ordinals[column]
        if size * k >= 2**62:
            _, inverse = np.unique(key, return_inverse=True)
            key, size = inverse.astype(np.int64), int(inverse.max()) + 1
        key, size = key * k + codes, size * k
    return key


def _build_levels(frame: pl.DataFrame, formula: Formula) -> tuple[list[Level], np.ndarray]:
    """Order the groupings into a tree, top first, and check it is nested.

    Groupings are ordered by their number of groups (fewest first; ties by
    fewer columns).  Each must nest in the one above it: every group of the
    finer grouping lies in exactly one group of the coarser.  The finest
    must identify the leaf rows.

    Linear in the cells but for one sort: every key column is coded by the
    rank of its value (a sort of its distinct values), a grouping's key is
    one int64 made of them, the cells are sorted once by the tree's columns
    (top level first), and then a cell starts a new group of a level where
    its key, or an ancestor's, differs from the previous cell's.  A finer
    grouping nests when its groups are as many as the runs so counted.
    """
    columns = list(dict.fromkeys(c for g in formula.groupings for c in g.columns))
    ordinals = {c: _ordinal(frame[c]) for c in columns}
    coded = []
    for g in formula.groupings:
        key = _tuple_key(list(g.columns), ordinals)
        coded.append((pl.Series(key).n_unique(), len(g.columns), g, key))
    coded.sort(key=lambda t: (t[0], t[1]))
    tree_columns = list(dict.fromkeys(c for *_, g, _ in coded for c in g.columns))
    order = np.argsort(_tuple_key(tree_columns, ordinals), kind="stable")
    levels = []
    starts = np.zeros(frame.height, dtype=bool)
    starts[:1] = True
    for k, (n_low, _, g_low, key) in enumerate(coded):
        ordered = key[order]
        starts[1:] |= ordered[1:] != ordered[:-1]
        pairs = int(starts.sum())  # distinct (ancestors, group): sorted, each is one run
        if k > 0 and pairs != n_low:
            g_up = coded[k - 1][2]
            raise NotNestedError(
                f"groupings {g_low.name!r} and {g_up.name!r} are crossed in the data: "
                f"{pairs - n_low} of the {n_low} {g_low.name!r} groups span more than one "
                f"{g_up.name!r} group; write the nesting as (1 | {g_up.name}/{g_low.name}) "
                "to read the finer grouping within the coarser one, or fit the crossed model "
                "with the blocked solver (pooljob.fit and jobs choose it by themselves)"
            )
        codes = (np.cumsum(starts) - 1).astype(np.int64)
        levels.append(Level(grouping=g_low, codes=codes, first=np.flatnonzero(starts)))
    n_leaf, _, g_leaf, _ = coded[-1]
    if n_leaf != frame.height:
        raise NotNestedError(
            f"the finest grouping {g_leaf.name!r} has {n_leaf} groups but the grouping columns "
            f"form {frame.height} combinations: the groupings are crossed; nest them as "
            "(1 | a/b), or fit the crossed model with the blocked solver (pooljob.fit and jobs "
            "choose it by themselves)"
        )
    return levels, order
