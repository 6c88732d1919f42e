"""Reduce the source to per-group sufficient statistics in one DuckDB pass.

The query is ``sql/group_stats.sql``; this module fills its template with
quoted, schema-checked identifiers, accounts for the rows it cannot use, and
arranges the groups into the tree the solver needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl

from pooljob.errors import InputError, NotNestedError
from pooljob.formula import Formula, Grouping
from pooljob.nested import NestedStats
from pooljob.source import Source, quote_identifier

_NUMERIC = re.compile(
    r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT"
    r"|FLOAT|DOUBLE|REAL|DECIMAL(\(.*\))?|BOOLEAN)$"
)
_GROUPABLE_EXCLUDED = re.compile(r"(\[\]|^STRUCT|^MAP|^UNION|^LIST|\[\d+\]$)")


def sql_text(name: str) -> str:
    """Return the text of ``sql/<name>.sql``, installed or from the source tree."""
    here = Path(__file__).resolve().parent
    for folder in (here / "sql", here.parent / "sql"):
        candidate = folder / f"{name}.sql"
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise FileNotFoundError(f"pooljob SQL file {name}.sql is missing from the installation")


def group_stats_sql(formula: Formula, finite_only: bool = False) -> str:
    """The statistics query for ``formula`` with its identifiers quoted.

    ``finite_only`` selects ``finite_group_stats.sql``, which skips NaN and
    infinite responses (a second scan, needed only when there are some).
    """
    keys = ", ".join(quote_identifier(c) for c in formula.key_columns)
    name = "finite_group_stats" if finite_only else "group_stats"
    return sql_text(name).format(keys=keys, response=quote_identifier(formula.response))


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


def check_schema(source: Source, formula: Formula) -> None:
    """Check that the model's columns exist and have usable types."""
    source.require(formula.columns)
    rtype = source.columns[formula.response]
    if not _NUMERIC.match(rtype):
        raise InputError(
            f"response column {formula.response!r} has type {rtype}; a gaussian model needs a "
            "numeric column (integer, decimal, floating point or boolean): cast it in a "
            "[source] query or fix the data"
        )
    for col in formula.key_columns:
        if _GROUPABLE_EXCLUDED.search(source.columns[col]):
            raise InputError(
                f"grouping column {col!r} has type {source.columns[col]}; grouping columns "
                "must be scalar (text, integer, date, ...)"
            )


#: Largest ratio of |group mean| to the spread of the response for which the
#: uncentred statistics lose less than ~1e-12 relative (doubles carry ~1e-16).
CENTRING_RATIO = 1e4


def centring_shift(n: np.ndarray, mean: np.ndarray, var_pop: np.ndarray) -> float:
    """The shift that centres the response, or 0.0 when none is needed.

    Group means are doubles: a mean of 1e9 carries an error of ~1e-7, which
    is large beside a spread of 1.  When ``max |ȳ_j|`` exceeds
    ``CENTRING_RATIO`` times the smaller of the within-group and
    between-group standard deviations, the scan is repeated on ``y − shift``
    with ``shift`` the overall mean rounded to a power of ten at the scale
    of the spread (so that it does not depend on summation order).
    """
    total = float(n.sum())
    grand = float(np.dot(n, mean)) / total
    within = float(np.dot(n, var_pop)) / total
    between = float(np.dot(n, (mean - grand) ** 2)) / total
    spreads = [s for s in (within, between) if s > 0.0]
    if not spreads:
        return 0.0
    spread = float(np.sqrt(min(spreads)))
    if float(np.max(np.abs(mean))) <= CENTRING_RATIO * spread:
        return 0.0
    quantum = 10.0 ** np.floor(np.log10(spread))
    return float(np.round(grand / quantum) * quantum)


def _scan(source: Source, formula: Formula, shift: float, finite_only: bool) -> pl.DataFrame:
    sql = group_stats_sql(formula, finite_only)
    table = pl.from_arrow(source.arrow(sql, {"shift": shift}))
    assert isinstance(table, pl.DataFrame)
    null_key = pl.any_horizontal([pl.col(k).is_null() for k in formula.key_columns])
    return table.filter(~null_key & (pl.col("n") > 0))


def compute(source: Source, formula: Formula) -> GroupStatistics:
    """Scan the source and return the tree of group statistics.

    One scan for clean data whose mean is within ``CENTRING_RATIO`` spreads
    of 0 (nearly all data).  A second scan when it is needed: of the finite
    responses only, if some are NaN or infinite; centred, if the mean is far
    from 0 beside the spread.
    """
    check_schema(source, formula)
    table = pl.from_arrow(source.arrow(group_stats_sql(formula), {"shift": 0.0}))
    assert isinstance(table, pl.DataFrame)
    keys = list(formula.key_columns)
    null_key = pl.any_horizontal([pl.col(k).is_null() for k in keys])
    read = int(table["n_rows"].sum()) if table.height else 0
    keyed = table.filter(~null_key)
    non_null = int(keyed["n"].sum()) if keyed.height else 0
    good = keyed.filter(pl.col("n") > 0)
    finite_only = bool(
        good.height and not (good["mean"].is_finite().all() and good["var_pop"].is_finite().all())
    )
    if finite_only:
        good = _scan(source, formula, 0.0, finite_only)
    used = int(good["n"].sum()) if good.height else 0
    dropped = {
        "null_group_key": read - (int(keyed["n_rows"].sum()) if keyed.height else 0),
        "null_response": (int(keyed["n_rows"].sum()) if keyed.height else 0) - non_null,
        "nonfinite_response": non_null - used,
    }
    rows: dict[str, object] = {"read": read, "used": used, "dropped": dropped}
    if used == 0:
        detail = ", ".join(f"{v} with {k.replace('_', ' ')}" for k, v in dropped.items() if v)
        raise InputError(
            f"no usable rows in {source.description}: {read} rows read"
            + (f" ({detail})" if detail else "")
            + "; check the [source] where filter and the response and grouping columns"
        )
    shift = centring_shift(
        good["n"].to_numpy().astype(np.float64),
        good["mean"].to_numpy(),
        good["var_pop"].to_numpy(),
    )
    if shift != 0.0:
        good = _scan(source, formula, shift, finite_only)
    unsorted, order = _build_levels(good, formula)
    good = good[order]
    n = good["n"].to_numpy().astype(np.float64)
    mean = good["mean"].to_numpy().astype(np.float64)
    within = good["var_pop"].to_numpy().astype(np.float64) * n
    levels = tuple(_relabel(lev.grouping, lev.codes[order]) for lev in unsorted)
    parents = [np.zeros(levels[0].size, dtype=np.int64)]
    for upper, lower in pairwise(levels):
        parents.append(upper.codes[lower.first].astype(np.int64))
    stats = NestedStats(n=n, mean=mean, within_ss=np.maximum(within, 0.0), parents=tuple(parents))
    _check_identifiable(stats, levels, source.description)
    return GroupStatistics(
        keys=good.select(keys), stats=stats, levels=levels, shift=shift, rows=rows
    )


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


def _relabel(grouping: Grouping, sorted_codes: np.ndarray) -> Level:
    """Number the groups in order of appearance (groups are contiguous after the sort)."""
    change = np.empty(len(sorted_codes), dtype=bool)
    change[0] = True
    np.not_equal(sorted_codes[1:], sorted_codes[:-1], out=change[1:])
    codes = np.cumsum(change) - 1
    return Level(grouping=grouping, codes=codes.astype(np.int64), first=np.flatnonzero(change))


def _dense_codes(frame: pl.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    series = frame.select(pl.struct(list(columns)).rank("dense").alias("c"))["c"]
    return series.to_numpy().astype(np.int64) - 1


def _build_levels(frame: pl.DataFrame, formula: Formula) -> tuple[list[Level], np.ndarray]:
    """Order the groupings into a tree, top first, and check it is nested.

    Groupings are ordered by their number of groups (fewest first; ties by
    fewer columns).  Each must nest in the one above it: every group of the
    finer grouping lies in exactly one group of the coarser.  The finest
    must identify the leaf rows.
    """
    coded = []
    for g in formula.groupings:
        codes = _dense_codes(frame, g.columns)
        coded.append((int(codes.max()) + 1, len(g.columns), g, codes))
    coded.sort(key=lambda t: (t[0], t[1]))
    for (n_up, _, g_up, c_up), (n_low, _, g_low, c_low) in pairwise(coded):
        pairs = np.unique(c_low * n_up + c_up).size
        if pairs != n_low:
            raise NotNestedError(
                f"groupings {g_low.name!r} and {g_up.name!r} are crossed in the data: "
                f"{pairs - n_low} of the {n_low} {g_low.name!r} groups span more than one "
                f"{g_up.name!r} group; write the nesting as (1 | {g_up.name}/{g_low.name}) "
                "to read the finer grouping within the coarser one (crossed models come later)"
            )
    n_leaf, _, g_leaf, _ = coded[-1]
    if n_leaf != frame.height:
        raise NotNestedError(
            f"the finest grouping {g_leaf.name!r} has {n_leaf} groups but the grouping columns "
            f"form {frame.height} combinations: the groupings are crossed; nest them as "
            "(1 | a/b) (crossed models come later)"
        )
    sort_keys = np.lexsort([c for *_, c in reversed(coded)])
    levels = [
        Level(grouping=g, codes=codes, first=np.zeros(n, dtype=np.int64))
        for n, _, g, codes in coded
    ]
    return levels, sort_keys
