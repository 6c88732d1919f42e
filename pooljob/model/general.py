"""Fit a general Gaussian mixed model: scan cells, build blocks, optimise θ, tabulate.

Covariates, categorical fixed effects, random slopes, crossed and nested
groupings.  The data are reduced to per-cell moments in one DuckDB pass
(:mod:`pooljob.scan.cell_moments`); the criterion is lme4's, evaluated from cross-product
blocks (:mod:`pooljob.model.lmm`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model import profiled, profiled_hessian
from pooljob.model.blocks import Blocks, ColumnWeights, build_blocks
from pooljob.model.cells import CellTable
from pooljob.model.criterion import Criterion, Differences, EvaluationLimitError, OnEvaluation
from pooljob.model.design import (
    Column,
    Design,
    build_design,
    check_rank,
    grouping_codes,
    indicator,
)
from pooljob.model.formula import Formula
from pooljob.model.lmm import MAX_DENSE, Solution, objective, solve
from pooljob.model.moment_start import moment_start
from pooljob.model.optimize import GRADIENT_TOL, OptSummary, minimize_criterion
from pooljob.model.options import DEFAULT_MAX_EVALUATIONS
from pooljob.model.profiled import Workspace, objective_and_gradient, workspace
from pooljob.model.profiled_solve import solve_profiled
from pooljob.model.theta import diagonal_positions

Array = NDArray[np.float64]


def _weights(keys: pl.DataFrame, n_cells: int, columns: tuple[Column, ...]) -> ColumnWeights:
    w = (
        np.column_stack([indicator(keys, n_cells, c.spec) for c in columns])
        if columns
        else np.zeros((n_cells, 0))
    )
    return ColumnWeights(w, np.array([c.variable for c in columns], dtype=np.int64))


@dataclass(frozen=True)
class Prepared:
    """The design, its blocks and the cell bookkeeping of one data set."""

    design: Design
    cells: CellTable
    blocks: Blocks
    fixed: ColumnWeights
    random: list[ColumnWeights]
    codes: list[NDArray[np.int64]]
    moments: Array


def prepare(
    formula: Formula, cells: CellTable, numeric: set[str], categorical: list[str]
) -> Prepared:
    """Lay out the design on the cells and assemble the blocks."""
    levels = {c: sorted(cells.keys[c].drop_nulls().unique().to_list()) for c in categorical}
    design = build_design(formula, numeric, levels)
    s = cells.moments()
    fixed = _weights(cells.keys, len(cells.n), design.fixed)
    codes = grouping_codes(cells.keys, design)
    random, spec = [], []
    for block, code in zip(design.blocks, codes, strict=True):
        cw = _weights(cells.keys, len(cells.n), block.columns)
        random.append(cw)
        spec.append((code, int(code.max()) + 1, cw, block.free_entries()))
    blocks = build_blocks(s, design.response, fixed, spec)
    if cells.count is not None:  # weighted: the blocks hold Σ w; N is the number of rows
        blocks = replace(blocks, n=float(cells.count.sum()))
    names = [c.name for c in design.fixed]
    if names:
        check_rank(blocks.xtx[:-1, :-1], names)
    for k, q in enumerate(blocks.levels):
        if q * blocks.widths[k] >= blocks.n and blocks.widths[k] == 1:
            name = design.blocks[blocks.order[k]].grouping.name
            raise InputError(
                f"grouping {name!r} has {q} groups for {int(blocks.n)} rows: as many groups "
                "as rows, so its variance cannot be told from the residual variance; use a "
                "coarser grouping or more data per group"
            )
    if blocks.dense_size > MAX_DENSE:
        sizes = ", ".join(
            f"{design.blocks[blocks.order[k]].grouping.name} {q:,} levels × {w} columns"
            for k, (q, w) in enumerate(zip(blocks.levels, blocks.widths, strict=True))
        )
        raise InputError(
            f"crossed groupings too large for the exact dense solver: {sizes}; all but the "
            f"largest form a dense {blocks.dense_size:,} × {blocks.dense_size:,} block "
            f"({8 * blocks.dense_size**2 / 1e9:.1f} GB, limit {MAX_DENSE:,}); for random "
            'intercepts set [model] solver = "iterative" (solver="iterative" in pooljob.fit), '
            "see docs/crossed-at-scale.md"
        )
    return Prepared(design, cells, blocks, fixed, random, codes, s)


def optimize(
    blocks: Blocks,
    reml: bool,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    on_evaluation: OnEvaluation | None = None,
    ws: Workspace | None = None,
) -> tuple[Array, OptSummary]:
    """Minimise the profiled criterion over θ (diagonal entries ≥ 0).

    With the exact gradient (:mod:`pooljob.model.profiled`, whenever block
    0's pair products fit in memory, ``ws``) and random intercepts only: from
    moment estimates of the variance components
    (:mod:`pooljob.model.moment_start`), Newton steps with the exact gradient
    and the exact Hessian (:mod:`pooljob.model.profiled_hessian`, from the
    same evaluation; about 3-5 evaluations).  Otherwise from
    lme4's start (1 on the diagonal, 0 elsewhere); with the exact gradient,
    the start scaled by a one-dimensional search, then
    L-BFGS-B without bounds (the criterion is even in each column of ``T_k``;
    a column whose diagonal ends negative is negated), then Newton steps with
    a Hessian from differences of the gradient; about 20-30 evaluations of
    the criterion and gradient where COBYQA takes 100-150 of the criterion.
    Otherwise COBYQA (Powell's derivative-free trust-region method with
    quadratic models, the successor of the BOBYQA that lme4 uses) to a
    trust-region radius of 1e-7, then Newton steps by finite differences of
    the criterion.  The boundary restart, the Newton steps and the
    convergence check are :mod:`pooljob.model.optimize`'s.
    """
    n_theta = blocks.n_theta
    diag = diagonal_positions(blocks.free)
    x0 = np.zeros(n_theta)
    x0[diag] = 1.0
    if n_theta == 0:
        f0 = objective(blocks, x0, reml)
        summary = OptSummary(
            optimizer="none (no variance parameters)",
            initial=[],
            final=[],
            fmin=f0,
            evaluations=1,
            max_evaluations=max_evaluations,
            message="no θ",
            converged=True,
            check="no parameters to optimise",
            max_gradient=0.0,
            gradient_tolerance=GRADIENT_TOL * max(1.0, abs(f0)),
            min_hessian_eigenvalue=None,
        )
        return x0, summary
    if ws is None:
        crit = Criterion(
            lambda t: objective(blocks, t, reml), None, max_evaluations, 0, on_evaluation
        )
    else:
        crit = Criterion(
            lambda t: profiled.objective(blocks, ws, t, reml),
            lambda t: objective_and_gradient(blocks, ws, t, reml),
            max_evaluations,
            0,
            on_evaluation,
            hessian=lambda t: profiled_hessian.hessian(blocks, ws, t, reml),
        )
    start, notes = x0.copy(), []
    moments = moment_start(blocks) if ws is not None else None
    try:
        f0 = crit(x0) if moments is None else crit.gradient(moments)[0]
        if moments is not None:
            start = moments
            notes.append("start: moment estimates")
        elif ws is not None:
            # lme4's start scaled by the best common factor c (a 1-D search on log c,
            # criterion only): the criterion can be concave at c = 1 and it is
            # flat along weakly identified components, where L-BFGS-B goes slowly
            from scipy.optimize import minimize_scalar  # here: 0.4 s to import

            scaled = minimize_scalar(
                lambda lc: crit(np.exp(lc) * x0),
                bounds=(np.log(1e-3), np.log(10.0)),
                method="bounded",
                options={"xatol": 0.05},
            )
            if float(scaled.fun) < f0:
                start = np.exp(float(scaled.x)) * x0
                notes.append(f"start: lme4's scaled by {np.exp(float(scaled.x)):.4g}")
    except EvaluationLimitError:
        f0 = crit.best_f
    bounds: list[tuple[float | None, float | None]] = [(None, None)] * n_theta
    for i in diag:
        bounds[i] = (0.0, None)

    def cobyqa(x: Array) -> tuple[Array, str]:
        from scipy.optimize import minimize  # here: the moment start needs none

        res = minimize(
            crit,
            x,
            method="COBYQA",
            bounds=bounds,
            options={"final_tr_radius": 1e-7, "maxfev": 200 * (n_theta + 1) ** 2},
        )
        return np.asarray(res.x, dtype=np.float64), f"COBYQA: {res.message}"

    def lbfgs(x: Array) -> tuple[Array, str]:
        # unbounded: the criterion is even in each column of T_k, so the sign
        # of a diagonal entry is immaterial and 0 is no barrier to cross
        from scipy.optimize import minimize

        res = minimize(
            crit.gradient,
            x,
            jac=True,
            method="L-BFGS-B",
            # to |∂f/∂θ| ~1e-7 |f|: the Newton steps after it go the rest of the
            # way (much tighter, the search stalls on the criterion's rounding)
            options={"ftol": 1e-14, "gtol": 1e-7 * max(1.0, abs(f0)), "maxiter": 1000},
        )
        return np.asarray(res.x, dtype=np.float64), f"L-BFGS-B: {res.message}"

    if ws is None:
        name = "COBYQA (derivative-free, quadratic models), then Newton steps by differences"
        search, diff = cobyqa, Differences(1e-2, 1e-2)
    elif moments is None:
        name = "L-BFGS-B (exact gradient), then Newton steps"
        search, diff = lbfgs, Differences(1e-6, 1e-2)
    else:
        name = "Newton steps (exact gradient) from moment estimates"
        search, diff = None, Differences(1e-6, 1e-2)
    optimum = minimize_criterion(
        crit,
        start,
        blocks.free,
        diff,
        name,
        search=search,
        initial=x0,
        notes=notes,
        secant=moments is not None,
    )
    return optimum.x, optimum.summary


@dataclass(frozen=True)
class Transform:
    """From the centred fit back to the original columns (``coef = M coef_c + shift``)."""

    fixed: Array  # (p, p)
    fixed_shift: Array  # (p,)
    random: list[Array]  # per block in design order, (p_k, p_k)


def back_transform(prep: Prepared) -> Transform:
    """The linear maps undoing the centring of variables (identity if none).

    A centred column ``I·(v − c)`` is ``I·v − c·(I·1)``; its coefficient
    moves ``−c`` times onto the column ``I·1``.  The response shift moves
    onto the constant: ``β += c_y e`` with ``X e = 1``.
    """
    shifts = prep.cells.shifts
    design = prep.design

    def matrix(columns: tuple[Column, ...]) -> Array:
        m = np.eye(len(columns))
        const = {c.spec: i for i, c in enumerate(columns) if c.variable == 0}
        for j, c in enumerate(columns):
            if c.variable > 0 and shifts[c.variable - 1] != 0.0:
                m[const[c.spec], j] -= shifts[c.variable - 1]
        return m

    mx = matrix(design.fixed)
    p = len(design.fixed)
    c_y = float(np.dot(design.response, shifts))
    shift = np.zeros(p)
    if c_y != 0.0 and p:
        xt1 = (prep.fixed.weights * prep.moments[:, prep.fixed.variables, 0]).sum(axis=0)
        xtx = prep.blocks.xtx[:p, :p]
        # X'X and X'1 are in the centred columns: e_c solves X_c e_c = 1, e = M e_c
        shift = c_y * (mx @ np.linalg.solve(xtx, xt1))
    return Transform(mx, shift, [matrix(b.columns) for b in design.blocks])


@dataclass(frozen=True)
class GeneralFit:
    """Numbers of a general fit, in the original parametrisation."""

    prepared: Prepared
    solution: Solution
    theta: Array
    optimizer: OptSummary
    beta: Array
    vcov: Array
    b: list[Array]  # design order
    cond_var: list[Array]
    covariance: list[Array]  # Var(b_k) per block, design order
    objective: float


def fit_general(
    prep: Prepared,
    reml: bool,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    on_evaluation: OnEvaluation | None = None,
) -> GeneralFit:
    """Optimise θ and return every estimate in the original parametrisation.

    ``on_evaluation`` is told ``(evaluations, best criterion)`` as the search goes.
    """
    ws = workspace(prep.blocks) if prep.blocks.n_theta else None
    theta, summary = optimize(prep.blocks, reml, max_evaluations, on_evaluation, ws)
    if prep.cells.log_weight:  # lme4's criterion with precision weights: less Σ log w
        summary = replace(summary, fmin=summary.fmin - prep.cells.log_weight)
    sol = None
    if ws is not None:
        try:
            sol = solve_profiled(prep.blocks, ws, theta, reml)
        except np.linalg.LinAlgError:
            sol = None
    if sol is None:
        sol = solve(prep.blocks, theta, reml)
    tr = back_transform(prep)
    beta = tr.fixed @ sol.beta + tr.fixed_shift
    vcov = tr.fixed @ sol.vcov @ tr.fixed.T
    b: list[Array] = [np.zeros(0)] * len(prep.design.blocks)
    cv: list[Array] = [np.zeros(0)] * len(prep.design.blocks)
    cov: list[Array] = [np.zeros(0)] * len(prep.design.blocks)
    for k, d in enumerate(prep.blocks.order):
        m = tr.random[d]
        b[d] = sol.b[k] @ m.T
        cv[d] = np.einsum("ij,ljk,mk->lim", m, sol.cond_var[k], m)
        t = sol.factor.t[k]
        cov[d] = sol.sigma2 * (m @ t @ t.T @ m.T)
    return GeneralFit(prep, sol, theta, summary, beta, vcov, b, cv, cov, summary.fmin)
