"""Poststratification (the P of MRP): cell predictions weighted to a population.

For every cell ``c`` of the population table (a combination of the model's
grouping and predictor columns, with a count ``N_c``) the model predicts
``m(η_c)``, ``η_c = x_cᵀβ̂ + Σ_k z_ckᵀ b̂_k[level]`` — a probability
(binomial), a rate per unit of exposure (Poisson) or ``η_c`` itself
(Gaussian).  A level the sample
never saw contributes 0 (its effect's prior mean), so such a cell gets the
prediction from the parts the model knows.  For each ``by`` group::

    estimate_g = Σ_{c ∈ g} N_c m(η_c) / Σ_{c ∈ g} N_c

Uncertainty comes from draws of (β, b) from the Laplace approximation of
their posterior (:func:`pooljob.model.glmm.sample_effects`); an unseen level's
effect is drawn from its prior ``N(0, Σ_k)``.  ``std_error`` is the
standard deviation of the draws of ``estimate_g``, ``lower``/``upper``
their quantiles.  The draws are seeded: the same seed gives the same table.

A Gaussian model's estimate is linear in (β, b) and their posterior given the
variance components is exactly normal: no draws.  ``std_error`` is
``√(a_gᵀ C a_g + prior variance of the unseen levels' part)`` with ``C``
Henderson's inverse (``Predictor.variance``: the tree's pass or the blocked
factor), ``lower``/``upper`` are ``estimate ∓ z·std_error``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.design import Column, Design, indicator
from pooljob.model.families import mean_link
from pooljob.model.formula import Formula, display_name
from pooljob.model.options import PoststratifyConfig
from pooljob.outputs.estimates import interval_bounds
from pooljob.outputs.frames import cast_keys, published_names
from pooljob.scan.source import open_data, quote_identifier

Array = NDArray[np.float64]

#: Draws made at a time (memory: chunk × population cells doubles).
DRAW_CHUNK = 100
#: Population cells handled at a time for the draws.
CELL_CHUNK = 50_000


@dataclass(frozen=True)
class Predictor:
    """What predicting for new cells needs, from a fitted count model.

    Attributes
    ----------
    family : {"gaussian", "binomial", "poisson"}
    formula : Formula
    design : Design
    beta : ndarray, shape (p,)
    b : list of ndarray, shape (q_d, p_d)
        Conditional modes per design block (design order).
    levels : list of polars.DataFrame
        Per design block: its grouping columns, row ``i`` being level ``i``.
    covariance : list of ndarray, shape (p_d, p_d)
        Prior covariance of each block's effects.
    keys : polars.Schema
        Types of the sample's key columns.
    sample : callable or None
        Count models: ``sample(draws, rng)`` returns β draws (draws, p) and
        per design block b draws (draws, q_d, p_d).
    variance : callable or None
        Gaussian models: ``variance(a_fixed, a_random)`` returns the exact
        posterior variances ``Var(aᵀ(β, b) | y)`` given the variance
        components of G combinations, ``a_fixed`` (p, G) and per design block
        ``a_random[d]`` (q_d p_d, G), row ``level · p_d + column``.
    """

    family: str
    formula: Formula
    design: Design
    beta: Array
    b: list[Array]
    levels: list[pl.DataFrame]
    covariance: list[Array]
    keys: pl.Schema
    sample: Callable[[int, np.random.Generator], tuple[Array, list[Array]]] | None = None
    variance: Callable[[Array, list[sp.csr_matrix]], Array] | None = None


def model_columns(pred: Predictor) -> tuple[list[str], list[str]]:
    """(key columns, numeric columns) a population table must have."""
    keys = list(pred.design.keys)
    numeric: list[str] = []
    for v in pred.design.variables[1:]:
        for c in v.columns:
            if c not in numeric and c not in keys:
                numeric.append(c)
    offsets = set(pred.formula.offsets)
    return keys, [c for c in numeric if c not in offsets]


def require_population(config: PoststratifyConfig) -> None:
    """Fail before the scan when the population file is missing."""
    if "://" in config.path or any(ch in config.path for ch in "*?["):
        return
    if not Path(config.path).exists():
        raise InputError(
            f"population table {config.path!r} does not exist: check [poststratify] path"
        )


def read_population(
    pred: Predictor, config: PoststratifyConfig, data: Any = None
) -> tuple[pl.DataFrame, list[str], list[str]]:
    """Read and check the population table: the model's columns, the weight and ``by``.

    ``data``, when given, is the table itself (any input of
    :func:`pooljob.fit`); ``config.path`` then only names it in messages.

    Raises
    ------
    InputError
        A missing column (naming those available), a null or negative count,
        a null model column, duplicated cells, or a level of a fixed-effect
        column the sample never saw.
    """
    if pred.formula.offsets:
        raise InputError(
            "poststratification of a model with offset(col) is not supported: the population "
            "cells would need the offset; use offset(log(exposure)) for rates"
        )
    keys, numeric = model_columns(pred)
    wanted = list(dict.fromkeys([*keys, *numeric, config.weight, *config.by]))
    where = f"population table {config.path!r}"
    if data is None:
        require_population(config)
    with open_data(config.path if data is None else data) as source:
        source.require(tuple(wanted))
        weight_type = source.columns[config.weight]
        sql = "select " + ", ".join(quote_identifier(c) for c in wanted) + " from source"
        table = pl.from_arrow(source.arrow(sql))
    assert isinstance(table, pl.DataFrame)
    if not table.height:
        raise InputError(f"{where} has no rows")
    try:
        weight = table[config.weight].cast(pl.Float64)
    except pl.exceptions.PolarsError:
        raise InputError(
            f"{where}: weight column {config.weight!r} has type {weight_type}; it must be a "
            "number (the population count of each cell)"
        ) from None
    bad = int((weight.is_null() | ~weight.is_finite() | (weight < 0)).sum())
    if bad:
        raise InputError(
            f"{where}: weight column {config.weight!r} has {bad} null, infinite or negative "
            "values; every cell needs a count >= 0"
        )
    if float(weight.sum()) <= 0:
        raise InputError(f"{where}: the counts in {config.weight!r} sum to 0")
    table = check_cells(pred, table, keys, numeric, where)
    dup = table.select(keys + numeric).is_duplicated()
    if bool(dup.any()):
        first = table.filter(dup).row(0, named=True)
        cell = ", ".join(f"{c} = {first[c]!r}" for c in keys + numeric)
        raise InputError(
            f"{where}: {int(dup.sum())} rows repeat a cell (e.g. {cell}); each combination of "
            "the model's columns must appear once: aggregate the counts first"
        )
    return table.with_columns(weight.alias(config.weight)), keys, numeric


def check_cells(
    pred: Predictor, table: pl.DataFrame, keys: list[str], numeric: list[str], where: str
) -> pl.DataFrame:
    """Check and type the model's columns of new cells (population or predict table).

    Raises
    ------
    InputError
        A null model column, a key column whose values do not convert to the
        sample's type, or a level of a fixed-effect column the sample never saw.
    """
    for c in keys + numeric:
        nulls = int(table[c].is_null().sum())
        if nulls:
            raise InputError(
                f"{where}: column {c!r} has {nulls} null values; every cell needs "
                "a value of each model column"
            )
    table = cast_keys(table, {c: pred.keys[c] for c in keys}, where)
    for c, levels in pred.design.categorical.items():
        unseen = table.filter(~pl.col(c).is_in(levels))[c].unique().to_list()
        if unseen:
            raise InputError(
                f"{where}: column {display_name(c)!r} has levels the sample never saw "
                f"({', '.join(map(repr, sorted(unseen)[:5]))}): the model has no fixed effect "
                "for them; drop those cells or model the column as a grouping (1 | col)"
            )
    return table


def _design_values(table: pl.DataFrame, columns: tuple[Column, ...], design: Design) -> Array:
    """The model columns ``indicator × variable`` on the population cells."""
    n = table.height
    if not columns:
        return np.zeros((n, 0))
    out = []
    for col in columns:
        v = indicator(table, n, col.spec)
        var = col.variable
        if var:
            for c in design.variables[var - 1].columns:
                v = v * table[c].cast(pl.Float64).to_numpy()
        out.append(v)
    return np.column_stack(out)


def _positional(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """``columns`` of ``frame``, renamed ``k0``, ``k1`` … in that order.

    Joined beside an index column of pooljob's, a user's column name can then
    clash with nothing.
    """
    return frame.select([pl.col(c).alias(f"k{i}") for i, c in enumerate(columns)])


def _level_index(table: pl.DataFrame, levels: pl.DataFrame) -> tuple[NDArray[np.int64], int]:
    """Each population cell's level of one grouping, and the number of unseen levels.

    Levels the sample saw keep their index ``0 … q−1``; each distinct level
    it never saw gets its own index from ``q`` on.
    """
    cols = levels.columns
    names = [f"k{i}" for i in range(len(cols))]
    q = levels.height
    indexed = _positional(levels, cols).with_row_index("level")
    cells = _positional(table, cols).with_row_index("row")
    joined = cells.join(indexed, on=names, how="left").sort("row")
    level = joined["level"].cast(pl.Int64).to_numpy(allow_copy=True).copy()
    unseen = joined["level"].is_null().to_numpy()
    if not unseen.any():
        return level.astype(np.int64), 0
    new = (
        joined.filter(pl.Series(unseen))
        .select(pl.struct(names).rank("dense").cast(pl.Int64).alias("new"))["new"]
        .to_numpy()
    )
    level[unseen] = q + new - 1
    return level.astype(np.int64), int(new.max())


def _prior_factor(cov: Array) -> Array:
    """``F`` with ``F Fᵀ = cov`` for a covariance that may be singular."""
    vals, vecs = np.linalg.eigh(cov)
    return np.asarray(vecs * np.sqrt(np.maximum(vals, 0.0)))


def poststratify(
    pred: Predictor, config: PoststratifyConfig, interval: float, table: pl.DataFrame
) -> pl.DataFrame:
    """The ``poststratified`` table: per ``by`` group, estimate, std_error, lower, upper.

    ``table`` is the checked population (:func:`read_population`).
    """
    design = pred.design
    n_cells = table.height
    weight = table[config.weight].to_numpy().astype(np.float64)
    x = _design_values(table, design.fixed, design)
    idx, extra, zs = [], [], []
    for d, block in enumerate(design.blocks):
        level, unseen = _level_index(table, pred.levels[d])
        idx.append(level)
        extra.append(unseen)
        zs.append(_design_values(table, block.columns, design))
    by = list(config.by)
    if by:
        groups = table.select(by).unique().sort(by, nulls_last=True)
        names = [f"k{i}" for i in range(len(by))]
        gid = (
            _positional(table, by)
            .with_row_index("row")
            .join(
                _positional(groups, by).with_row_index("group"),
                on=names,
                how="left",
                nulls_equal=True,
            )
            .sort("row")["group"]
            .to_numpy()
            .astype(np.int64)
        )
    else:
        groups = pl.DataFrame()
        gid = np.zeros(n_cells, dtype=np.int64)
    n_groups = int(gid.max()) + 1
    # N_c in the column of its group
    member = sp.csr_matrix((weight, (np.arange(n_cells), gid)), shape=(n_cells, n_groups))
    total = np.asarray(member.sum(axis=0)).ravel()

    if pred.variance is not None:
        columns = _linear(pred, x, zs, idx, extra, member, total, interval)
    else:
        columns = _drawn(pred, config, interval, x, zs, idx, extra, member, total)
    if by:  # a by column named like a column of the table gets `_key` appended
        return groups.rename(published_names(by)).with_columns(
            [pl.Series(k, v) for k, v in columns.items()]
        )
    return pl.DataFrame(columns)


def _linear(
    pred: Predictor,
    x: Array,
    zs: list[Array],
    idx: list[NDArray[np.int64]],
    extra: list[int],
    member: sp.csr_matrix,
    total: Array,
    interval: float,
) -> dict[str, Array]:
    """Gaussian models: the estimate is linear in (β, b), its posterior normal.

    Per group ``g`` the estimate is ``a_gᵀ (β̂, b̂)`` with ``a_g = Σ N_c (x_c,
    z_c) / Σ N_c``; its variance ``a_gᵀ C a_g`` (``pred.variance``, Henderson)
    plus, for each level the sample never saw, ``w Σ_d wᵀ`` with ``w`` the
    weighted ``z`` of the cells at that level (its prior variance).
    """
    assert pred.variance is not None
    share = sp.csr_matrix(member.multiply(1.0 / total[None, :]))  # N_c / N_g
    a_fixed = np.asarray((share.T @ x).T, dtype=np.float64)  # (p, G)
    estimate = a_fixed.T @ pred.beta
    prior = np.zeros(len(total))
    a_random = []
    for d, bd in enumerate(pred.b):
        q, p_d = bd.shape
        rows = (idx[d][:, None] * p_d + np.arange(p_d)).ravel()
        cells = np.repeat(np.arange(len(idx[d])), p_d)
        scatter = sp.csr_matrix(
            (zs[d].ravel(), (rows, cells)), shape=((q + extra[d]) * p_d, len(idx[d]))
        )
        coef = sp.csr_matrix(scatter @ share)  # ((q + unseen) p_d, G)
        seen = sp.csr_matrix(coef[: q * p_d])
        a_random.append(seen)
        estimate = estimate + np.asarray(seen.T @ bd.ravel()).ravel()
        if extra[d]:
            unseen = sp.csr_matrix(coef[q * p_d :])
            cov = sp.kron(sp.identity(extra[d]), sp.csr_matrix(pred.covariance[d])).tocsr()
            prior += np.asarray(unseen.multiply(cov @ unseen).sum(axis=0)).ravel()
    variance = pred.variance(a_fixed, a_random) + prior
    std_error = np.sqrt(np.maximum(variance, 0.0))
    lower, upper = interval_bounds("gaussian", estimate, std_error, interval)
    return {
        "estimate": estimate,
        "std_error": std_error,
        "lower": lower,
        "upper": upper,
        "population": total,
    }


def _drawn(
    pred: Predictor,
    config: PoststratifyConfig,
    interval: float,
    x: Array,
    zs: list[Array],
    idx: list[NDArray[np.int64]],
    extra: list[int],
    member: sp.csr_matrix,
    total: Array,
) -> dict[str, Array]:
    """Count models: the estimate from the modes, its uncertainty from seeded draws."""
    assert pred.sample is not None
    design = pred.design
    n_cells, n_groups = member.shape

    def group_means(beta: Array, b: list[Array]) -> Array:
        """Per draw and group: Σ N m(η) / Σ N; beta (S, p), b[d] (S, q_d + unseen, p_d)."""
        acc = np.zeros((beta.shape[0], n_groups))
        for c0 in range(0, n_cells, CELL_CHUNK):
            rows = slice(c0, min(n_cells, c0 + CELL_CHUNK))
            eta = beta @ x[rows].T
            for d in range(len(design.blocks)):
                eta = eta + np.einsum("scp,cp->sc", b[d][:, idx[d][rows], :], zs[d][rows])
            mean = mean_link(pred.family, eta)[0]
            acc += np.asarray(member[rows].T @ mean.T).T
        return np.asarray(acc / total, dtype=np.float64)

    point_b = [
        np.concatenate([bd, np.zeros((extra[d], bd.shape[1]))])[None] for d, bd in enumerate(pred.b)
    ]
    estimate = group_means(pred.beta[None, :], point_b)[0]
    rng = np.random.default_rng(config.seed)
    factors = [_prior_factor(c) for c in pred.covariance]
    sims = np.empty((config.draws, n_groups))
    for start in range(0, config.draws, DRAW_CHUNK):
        stop = min(config.draws, start + DRAW_CHUNK)
        s = stop - start
        beta_s, b_s = pred.sample(s, rng)
        for d in range(len(design.blocks)):
            if extra[d]:
                eps = rng.standard_normal((s, extra[d], factors[d].shape[0]))
                prior = np.einsum("ij,suj->sui", factors[d], eps)
                b_s[d] = np.concatenate([b_s[d], prior], axis=1)
        sims[start:stop] = group_means(beta_s, b_s)
    alpha = 1.0 - interval
    lower, upper = np.quantile(sims, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return {
        "estimate": estimate,
        "std_error": sims.std(axis=0, ddof=1),
        "lower": lower,
        "upper": upper,
        "population": total,
    }
