"""The tree of a nested random-intercept model, arranged from the scanned cells.

For ``y ~ 1 + (1 | a) + (1 | b:a) …`` the cells are the leaf groups; this
module orders them into the tree the fast solver (:mod:`pooljob.model.nested`)
needs, checks that the groupings nest in the data, and codes every level.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import polars as pl

from pooljob.errors import InputError, NotNestedError
from pooljob.model.cells import CellTable
from pooljob.model.formula import Formula, Grouping
from pooljob.model.nested import NestedStats
from pooljob.scan.cell_moments import scan_cells
from pooljob.scan.schema import check_schema
from pooljob.scan.source import TableSource


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
        count=None if cells.count is None else cells.count[order].astype(np.float64),
        log_weight=cells.log_weight,
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
