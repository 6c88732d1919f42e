"""``[model] solver = "iterative"``: the model class it fits, its statistics, the fit.

Gaussian REML for ``y ~ x… + (1 | f_1) + (1 | f_2) [+ (1 | f_3) …]``: numeric
fixed effects (with or without an intercept, offsets allowed) and random
intercepts on any number of groupings, crossed or nested.  The per-cell
moments of the one scan (:mod:`pooljob.scan.cell_moments`) are reduced to
what Henderson's equations need (:class:`~pooljob.model.crossed_system.CrossedCells`);
the fit is :func:`pooljob.model.crossed_iterative.fit_iterative`.  Other model
classes are refused with a message that says what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.cells import CellTable
from pooljob.model.crossed_iterative import IterativeFit, fit_iterative
from pooljob.model.crossed_system import CrossedCells
from pooljob.model.design import Design, build_design, check_rank, grouping_codes
from pooljob.model.formula import Formula

Array = NDArray[np.float64]

#: What the iterative solver fits, for messages.
MODEL_CLASS = (
    "gaussian REML with numeric fixed effects and random intercepts, e.g. "
    "'y ~ x + (1 | user) + (1 | item)'"
)


def check_class(formula: Formula, family: str, method: str, categorical: list[str]) -> None:
    """Raise :class:`InputError` unless the model is one the iterative solver fits."""
    what = 'solver = "iterative" fits ' + MODEL_CLASS
    if family != "gaussian" or method != "reml":
        raise InputError(f"{what}; this model is {family} {method.upper()}: use solver = 'exact'")
    if not formula.random:
        raise InputError(f"{what}; formula {formula.text!r} has no random-effect term")
    for rt in formula.random:
        if rt.terms or not rt.intercept:
            raise InputError(
                f"{what}; the term {rt.name!r} of {formula.text!r} has random slopes: use "
                "solver = 'exact'"
            )
    if categorical:
        names = ", ".join(repr(c) for c in categorical)
        raise InputError(
            f"{what}; {formula.text!r} has categorical variables ({names}) among its fixed "
            "effects: use numeric columns (0/1 indicators), or solver = 'exact'"
        )


@dataclass(frozen=True)
class CrossedPrepared:
    """The design laid out on the cells, in the design's and the solver's orders."""

    design: Design
    cells: CellTable
    codes: list[NDArray[np.int64]]  # design order
    order: list[int]  # solver's block k is the design's order[k]
    crossed: CrossedCells
    xt1: Array  # X'1 (centred columns)


def prepare_crossed(formula: Formula, cells: CellTable, numeric: set[str]) -> CrossedPrepared:
    """Check the design and build the cell statistics the solver reads."""
    design = build_design(formula, numeric, {})
    codes = grouping_codes(cells.keys, design)
    n = cells.n
    c_count, m = cells.mean.shape
    w = np.empty((c_count, m + 1))
    w[:, 0] = 1.0
    w[:, 1:] = cells.mean
    total = (w * n[:, None]).T @ w
    total[1:, 1:] += cells.comoment.sum(axis=0)
    fixed_vars = [c.variable for c in design.fixed]
    response = np.concatenate([[0.0], design.response])
    sums = w * n[:, None]  # Σ_rows (1, v) per cell
    sx = np.ascontiguousarray(sums[:, fixed_vars])
    sy = sums @ response
    xtx = total[np.ix_(fixed_vars, fixed_vars)]
    names = [c.name for c in design.fixed]
    if names:
        check_rank(xtx, names)
    levels = [int(c.max()) + 1 for c in codes]
    nobs = float(n.sum())
    for d, q in enumerate(levels):
        if q >= nobs:
            raise InputError(
                f"grouping {design.blocks[d].grouping.name!r} has {q} groups for {int(nobs)} "
                "rows: as many groups as rows, so its variance cannot be told from the "
                "residual variance; use a coarser grouping or more data per group"
            )
    order = sorted(range(len(codes)), key=lambda d: -levels[d])
    crossed = CrossedCells(
        codes=[codes[d] for d in order],
        levels=[levels[d] for d in order],
        n=n,
        sx=sx,
        sy=sy,
        xtx=xtx,
        xty=total[fixed_vars, :] @ response,
        yty=float(response @ total @ response),
    )
    return CrossedPrepared(design, cells, codes, order, crossed, sx.sum(axis=0))


@dataclass(frozen=True)
class CrossedFit:
    """An iterative fit in the original parametrisation (design order)."""

    prepared: CrossedPrepared
    fit: IterativeFit
    beta: Array
    vcov: Array
    b: list[Array]  # (q, 1) per grouping
    cond_var: list[Array]  # (q, 1, 1): the lower bound σ²/(n_l + λ)
    variances: list[float]  # σ_k², design order
    sigma2: float


def fit_crossed(prep: CrossedPrepared, max_steps: int = 50) -> CrossedFit:
    """Fit, undo the centring of variables, and lay the results out in design order.

    A covariate centred at ``c`` moves ``−c β_x`` onto the intercept, and the
    response's shift ``c_y`` adds ``c_y`` to the combination ``e`` with
    ``X e = 1`` (the intercept).  At most ``max_steps`` Fisher-scoring steps.
    """
    fit = fit_iterative(prep.crossed, max_steps=max_steps)
    design, shifts = prep.design, prep.cells.shifts
    p = len(design.fixed)
    mx = np.eye(p)
    const = [i for i, c in enumerate(design.fixed) if c.variable == 0]
    for j, c in enumerate(design.fixed):
        if c.variable > 0 and shifts[c.variable - 1] != 0.0 and const:
            mx[const[0], j] -= shifts[c.variable - 1]
    shift = np.zeros(p)
    c_y = float(np.dot(design.response, shifts))
    if c_y != 0.0 and p:
        shift = c_y * (mx @ np.linalg.solve(prep.crossed.xtx, prep.xt1))
    beta = mx @ fit.beta + shift
    vcov = mx @ fit.vcov @ mx.T
    k = len(prep.order)
    b: list[Array] = [np.zeros((0, 1))] * k
    cv: list[Array] = [np.zeros((0, 1, 1))] * k
    var: list[float] = [0.0] * k
    for j, d in enumerate(prep.order):
        b[d] = fit.u[j][:, None]
        cv[d] = fit.cond_var[j][:, None, None]
        var[d] = float(fit.variances[j])
    return CrossedFit(prep, fit, beta, vcov, b, cv, var, fit.sigma2)
