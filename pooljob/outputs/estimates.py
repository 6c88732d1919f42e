"""``estimates.parquet``: every group of every grouping, one definition for every solver.

For a group ``g`` of a grouping, with rows ``i ∈ g`` (docs/outputs.md)::

    estimate  = Σ_{i∈g} w_i μ̂_i / Σ_{i∈g} w_i
    parent    = the same with the effects of g's grouping, and of the
                groupings nested in it, set to 0
    std_error = √(aᵀ C a),   a = ∂estimate/∂(β, b),  C = Henderson's inverse

where ``μ̂_i`` is the fitted value ``x_iᵀβ̂ + z_iᵀb̂`` (+ offset) of a Gaussian
model (``w_i = 1``), or the fitted conditional mean per unit of ``t_i`` of a
binomial or Poisson model (``w_i = t_i``, trials or exposure; ``a`` by the
delta method with the working weights at the mode).  The nested tree solver
computes the same three numbers by passes over the tree
(:func:`pooljob.model.nested.group_means`); the blocked and Laplace solvers
from per-cell sums (:func:`cell_estimates`); :func:`estimates_frame` builds
the table from either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

if TYPE_CHECKING:
    import scipy.sparse as sp

from pooljob.model.families import link, mean_link
from pooljob.outputs.frames import ESTIMATE_COLUMNS, align, published_names

Array = NDArray[np.float64]
Codes = NDArray[np.int64]


@dataclass(frozen=True)
class GroupingEstimates:
    """The groups of one grouping: the numbers of ``estimates.parquet``.

    Attributes
    ----------
    name : str
        lme4's name of the grouping.
    keys : polars.DataFrame
        One row per group: the grouping's key columns.
    n, raw_mean, estimate, parent, std_error : ndarray
        As in the module docstring (response scale).
    shrinkage : ndarray or None
        ``Var(b | y) / Var(b)`` of the group's random intercept; None when
        the grouping has no intercept (published as null).
    rmse : ndarray or None
        The square root of the second-order MSE of the EBLUP,
        ``√(std_error² + 2 g3)``: area-level (Fay–Herriot) models
        (:mod:`pooljob.model.area`), and unit-level Gaussian models with
        ``interval_method = "prasad-rao"`` (:mod:`pooljob.model.second_order`);
        None (null) otherwise.
    """

    name: str
    keys: pl.DataFrame
    n: Array
    raw_mean: Array
    estimate: Array
    parent: Array
    std_error: Array
    shrinkage: Array | None
    rmse: Array | None = None


@dataclass(frozen=True)
class CellPredictions:
    """Per-cell sums the estimates of the blocked and Laplace solvers are built from.

    Attributes
    ----------
    rows : ndarray, shape (C,)
        Rows used per cell.
    weight : ndarray, shape (C,)
        ``Σ w_i`` over the cell: its rows (Gaussian), trials or exposure.
    response : ndarray, shape (C,)
        ``Σ w_i y_i`` over the cell (successes or events for counts).
    fitted : ndarray, shape (C,)
        ``Σ w_i μ̂_i`` over the cell.
    grad_fixed : ndarray, shape (C, p)
        ``∂ fitted / ∂β``.
    grad_random : list of (codes, ndarray)
        Per random block (the solver's order): each cell's level, and
        ``∂ fitted / ∂b[level]``, shape (C, p_k).
    """

    rows: Array
    weight: Array
    response: Array
    fitted: Array
    grad_fixed: Array
    grad_random: list[tuple[Codes, Array]]


@dataclass(frozen=True)
class CellGrouping:
    """One grouping laid out on the cells.

    Attributes
    ----------
    name : str
    keys : polars.DataFrame
        The key columns of its levels.
    codes : ndarray of int, shape (C,)
        Each cell's level.
    parent_fitted : ndarray, shape (C,)
        ``fitted`` with the effects of this grouping, and of the groupings
        nested in it, set to 0.
    shrinkage : ndarray or None
    """

    name: str
    keys: pl.DataFrame
    codes: Codes
    parent_fitted: Array
    shrinkage: Array | None


def nested_blocks(codes: list[Codes]) -> list[list[int]]:
    """Per grouping ``d``: the groupings nested in it, ``d`` included, judged from the cells.

    Grouping ``j`` is nested in ``d`` when every level of ``j`` lies in a
    single level of ``d`` (``b:a`` in ``a``; a grouping in itself).
    """
    out = []
    for cd in codes:
        members = []
        for j, cj in enumerate(codes):
            # one level of d per level of j: any cell's d-level, written per j-level, fits all
            rep = np.zeros(int(cj.max()) + 1 if len(cj) else 0, dtype=cd.dtype)
            rep[cj] = cd
            if np.array_equal(rep[cj], cd):
                members.append(j)
        out.append(members)
    return out


def cell_estimates(
    cells: CellPredictions,
    groupings: list[CellGrouping],
    pev: Callable[[Array, list[sp.csr_matrix]], Array],
) -> list[GroupingEstimates]:
    """Group means of the fitted values and their prediction errors, from cell sums.

    ``pev(a_fixed, a_random)`` returns ``aᵀ C a`` for each column of the
    coefficients ``a`` of β (``p × G``) and of each block's ``b``
    (``q_k p_k × G``, sparse): Henderson's prediction error variance.
    """
    g_total = sum(g.keys.height for g in groupings)
    p = cells.grad_fixed.shape[1]
    a_fixed = np.zeros((p, g_total))
    entries: list[tuple[list[Any], list[Any], list[Any]]] = [
        ([], [], []) for _ in cells.grad_random
    ]
    sums = []
    start = 0
    for g in groupings:
        q = g.keys.height
        code = g.codes
        weight = np.bincount(code, cells.weight, minlength=q)
        scale = 1.0 / weight[code]
        for j in range(p):
            a_fixed[j, start : start + q] = np.bincount(
                code, cells.grad_fixed[:, j] * scale, minlength=q
            )
        for k, (other, grad) in enumerate(cells.grad_random):
            width = grad.shape[1]
            rows, cols, vals = entries[k]
            for a in range(width):
                rows.append(other * width + a)
                cols.append(start + code)
                vals.append(grad[:, a] * scale)
        sums.append(
            (
                np.bincount(code, cells.rows, minlength=q).astype(np.float64),
                np.bincount(code, cells.response, minlength=q) / weight,
                np.bincount(code, cells.fitted, minlength=q) / weight,
                np.bincount(code, g.parent_fitted, minlength=q) / weight,
                start,
            )
        )
        start += q
    if not groupings:
        return []
    import scipy.sparse as sp  # here: the nested tree's tables need no scipy

    a_random = []
    for k, block in enumerate(cells.grad_random):
        rows, cols, vals = entries[k]
        size = _block_size(block)
        a_random.append(
            sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(size, g_total),
            )
        )
    var = pev(a_fixed, a_random)
    out = []
    for g, (n, raw, est, parent, st) in zip(groupings, sums, strict=True):
        se = np.sqrt(np.maximum(var[st : st + len(n)], 0.0))
        out.append(GroupingEstimates(g.name, g.keys, n, raw, est, parent, se, g.shrinkage))
    return out


def _block_size(block: tuple[Codes, Array]) -> int:
    """Rows of a block's coefficient matrix: levels × width."""
    codes, grad = block
    levels = int(codes.max()) + 1 if len(codes) else 0
    return levels * int(grad.shape[1])


def interval_bounds(
    family: str, estimate: Array, std_error: Array, interval: float
) -> tuple[Array, Array]:
    """``lower``, ``upper``: ``estimate ∓ z·std_error``, on the link scale for counts.

    For a binomial or Poisson model the interval is symmetric on the link
    scale, ``g(est) ∓ z·se/m'(g(est))``, and mapped back, so it stays in the
    mean's range; for a Gaussian model it is symmetric on the response scale.
    """
    z = NormalDist().inv_cdf(0.5 + interval / 2.0)
    if family == "gaussian":
        return estimate - z * std_error, estimate + z * std_error
    centre = link(family, estimate)
    _, slope = mean_link(family, centre)
    se_link = std_error / np.maximum(slope, 1e-300)
    return (
        mean_link(family, centre - z * se_link)[0],
        mean_link(family, centre + z * se_link)[0],
    )


def estimates_frame(
    groups: list[GroupingEstimates],
    family: str,
    interval: float,
    keys: list[str],
    schema: Any,
    interval_method: str = "plugin",
) -> pl.DataFrame:
    """The table: ``grouping``, every key column (null where not the grouping's), the numbers.

    ``lower``/``upper`` are ``estimate ∓ z·std_error`` (``"plugin"``) or
    ``estimate ∓ z·rmse`` (``"prasad-rao"``, which needs ``rmse``).
    """
    parts = []
    names = published_names(keys)
    for g in groups:
        spread = g.std_error
        if interval_method == "prasad-rao":
            if g.rmse is None:
                raise ValueError(f"interval_method = 'prasad-rao' without rmse for {g.name!r}")
            spread = g.rmse
        lower, upper = interval_bounds(family, g.estimate, spread, interval)
        shrinkage = (
            pl.Series("shrinkage", g.shrinkage, dtype=pl.Float64)
            if g.shrinkage is not None
            else pl.Series("shrinkage", [None] * g.keys.height, dtype=pl.Float64)
        )
        parts.append(
            g.keys.rename({c: names[c] for c in g.keys.columns}).with_columns(
                pl.lit(g.name).alias("grouping"),
                pl.Series("n", np.round(g.n).astype(np.int64)),
                pl.Series("raw_mean", g.raw_mean, dtype=pl.Float64),
                pl.Series("estimate", g.estimate, dtype=pl.Float64),
                pl.Series("parent", g.parent, dtype=pl.Float64),
                pl.Series("std_error", g.std_error, dtype=pl.Float64),
                pl.Series("lower", lower, dtype=pl.Float64),
                pl.Series("upper", upper, dtype=pl.Float64),
                shrinkage,
                pl.Series("rmse", g.rmse if g.rmse is not None else [None] * g.keys.height).cast(
                    pl.Float64
                ),
                pl.lit(None, dtype=pl.Float64).alias("estimate_unbenchmarked"),  # [benchmark]
            )
        )
    if not parts:
        return pl.DataFrame(
            schema={
                "grouping": pl.String,
                **{names[k]: schema[k] for k in keys},
                "n": pl.Int64,
                **{t: pl.Float64 for t in ESTIMATE_COLUMNS[1:]},
            }
        )
    return align(parts, ["grouping"], keys, schema, list(ESTIMATE_COLUMNS))
