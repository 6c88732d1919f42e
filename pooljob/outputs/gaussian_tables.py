"""The output tables of a Gaussian fit by the blocked solver (:mod:`pooljob.model.general`).

``estimates`` per group of every grouping: the mean over the group's rows of
the fitted values and its prediction error from Henderson's equations;
``effects``, ``coefficients`` and ``components`` as lme4's ``ranef``,
``fixef`` and ``VarCorr``.  The meaning of every column is docs/outputs.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.design import RandomBlock
from pooljob.model.formula import Formula
from pooljob.model.general import Array, GeneralFit, Prepared, back_transform
from pooljob.model.lmm import prediction_variance
from pooljob.model.second_order import cells_g3, split_levels
from pooljob.outputs.estimates import (
    CellGrouping,
    CellPredictions,
    GroupingEstimates,
    cell_estimates,
    estimates_frame,
    nested_blocks,
)
from pooljob.outputs.frames import (
    coefficients_frame,
    components_frame,
    effects_frame,
    intercept_shrinkage,
    level_keys,
)
from pooljob.outputs.poststratify import Predictor


def _group_frames(prep: Prepared) -> list[tuple[RandomBlock, NDArray[np.int64], pl.DataFrame]]:
    """Per block: cell codes and the key frame of its levels (first cell of each)."""
    return [
        (block, prep.codes[d], level_keys(prep.cells.keys, block.grouping.columns, prep.codes[d]))
        for d, block in enumerate(prep.design.blocks)
    ]


def tables(
    fit: GeneralFit, interval: float, interval_method: str = "plugin"
) -> dict[str, pl.DataFrame]:
    """Return estimates, effects, coefficients and components as polars frames."""
    prep = fit.prepared
    design = prep.design
    all_keys = [
        c for c in prep.cells.keys.columns if any(c in b.grouping.columns for b in design.blocks)
    ]
    schema = prep.cells.keys.schema
    coefficients = coefficients_frame([c.name for c in design.fixed], fit.beta, fit.vcov)
    groups = _group_frames(prep)
    effects = effects_frame(design, [g[2] for g in groups], fit.b, fit.cond_var, all_keys, schema)
    estimates = _estimates(fit, groups, interval, all_keys, schema, interval_method)
    return {
        "estimates": estimates,
        "effects": effects,
        "coefficients": coefficients,
        "components": components_frame(
            design,
            fit.covariance,
            [int(c.max()) + 1 for c in prep.codes],
            fit.solution.sigma2,
        ),
    }


def _estimates(
    fit: GeneralFit,
    groups: list[tuple[RandomBlock, NDArray[np.int64], pl.DataFrame]],
    interval: float,
    keys: list[str],
    schema: Any,
    interval_method: str = "plugin",
) -> pl.DataFrame:
    """Per group of each grouping: mean of the fitted values over its rows (module docs)."""
    prep = fit.prepared
    design, s, sol = prep.design, prep.moments, fit.solution
    n_cell = s[:, 0, 0]
    shift = prep.cells.shifts[0]
    fixed_sum = prep.fixed.weights * s[:, prep.fixed.variables, 0]  # (C, p) Σ x over rows
    # fitted sums per cell in the centred parametrisation, plus offsets and the y shift
    fitted = fixed_sum @ sol.beta + n_cell * shift
    for o in design.offsets:
        fitted = fitted + s[:, o, 0]
    contribution: dict[int, Array] = {}
    grad_random = []
    for k, d in enumerate(prep.blocks.order):
        cw = prep.random[d]
        zsum = cw.weights * s[:, cw.variables, 0]  # (C, p_k) Σ z over rows
        contribution[d] = (zsum * sol.b[k][prep.codes[d]]).sum(axis=1)
        grad_random.append((prep.codes[d], zsum))
    total = fitted + sum(contribution.values(), np.zeros_like(fitted))
    cells = CellPredictions(
        rows=prep.cells.row_counts,
        weight=n_cell,
        response=s[:, 1, 0] + n_cell * shift,
        fitted=total,
        grad_fixed=fixed_sum,
        grad_random=grad_random,
    )
    nested = nested_blocks(prep.codes)
    groupings = [
        CellGrouping(
            name=block.grouping.name,
            keys=keyframe,
            codes=code,
            parent_fitted=total - sum((contribution[j] for j in nested[d]), np.zeros_like(total)),
            shrinkage=intercept_shrinkage(design, d, fit.covariance[d], fit.cond_var[d]),
        )
        for d, (block, code, keyframe) in enumerate(groups)
    ]
    estimates = cell_estimates(cells, groupings, _group_mean_pev(fit, n_cell))
    if interval_method == "prasad-rao":
        estimates = _with_rmse(fit, estimates)
    return estimates_frame(estimates, "gaussian", interval, keys, schema, interval_method)


def _group_mean_pev(fit: GeneralFit, n_cell: Array) -> Any:
    """``pev(a_fixed, a_random)`` for :func:`cell_estimates`, the group means' part known.

    Where the solver gives them (``Solution.mean_pev``: each level's own
    block of ``Ω⁻¹``, :func:`pooljob.model.lmm.mean_prediction_variance`), the
    variances of the groupings whose first random column is their intercept
    are taken from it; the other columns (other groupings, ill-conditioned
    levels) go to :func:`prediction_variance`.  Columns are in
    :func:`cell_estimates`'s order: each grouping's levels in code order.
    """
    prep, sol = fit.prepared, fit.solution
    known: list[Array] = []
    for d in range(len(prep.design.blocks)):
        code = prep.codes[d]
        q = int(code.max()) + 1
        part = np.full(q, np.nan)
        cw = prep.random[d]
        intercept = bool(
            cw.variables.size and cw.variables[0] == 0 and np.all(cw.weights[:, 0] == 1.0)
        )
        if sol.mean_pev is not None and intercept:
            value, ok = sol.mean_pev(
                prep.blocks.order.index(d), np.bincount(code, n_cell, q).astype(np.float64)
            )
            part[ok] = value[ok]
        known.append(part)
    given = np.concatenate(known) if known else np.zeros(0)

    def pev(a_fixed: Array, a_random: list[sp.csr_matrix]) -> Array:
        out = given.copy()
        rest = np.flatnonzero(np.isnan(out))
        if len(rest):
            out[rest] = prediction_variance(
                prep.blocks,
                sol,
                a_fixed[:, rest],
                [sp.csr_matrix(sp.csc_matrix(a)[:, rest]) for a in a_random],
            )
        return out

    return pev


def _with_rmse(fit: GeneralFit, estimates: list[GroupingEstimates]) -> list[GroupingEstimates]:
    """Every grouping's estimates with ``rmse = √(std_error² + 2 g3)`` (random intercepts).

    ``g3`` from the cells' cross-products (:mod:`pooljob.model.second_order`),
    in the design's order of the groupings, as ``estimates``.
    """
    prep = fit.prepared
    if any(len(block.columns) != 1 for block in prep.design.blocks):
        raise InputError(
            "interval_method = 'prasad-rao' supports one random intercept (1 | g) per "
            "grouping only: use 'plugin'"
        )
    tau2 = np.array([float(c[0, 0]) for c in fit.covariance])
    g3_all = cells_g3(prep.moments[:, 0, 0], list(prep.codes), tau2, fit.solution.sigma2)
    g3 = split_levels(g3_all, [g.n.shape[0] for g in estimates])
    return [
        replace(g, rmse=np.sqrt(np.maximum(g.std_error**2 + 2.0 * extra, 0.0)))
        for g, extra in zip(estimates, g3, strict=True)
    ]


def predictor(fit: GeneralFit, formula: Formula) -> Predictor:
    """Predictions and exact posterior variances for new cells (poststratification).

    The population's columns are on the original scale; the blocks may be
    centred (:func:`pooljob.model.general.back_transform`): a coefficient
    vector ``a`` of the original ``(β, b)`` is ``Mᵀ a`` of the centred ones.
    """
    prep = fit.prepared
    tr = back_transform(prep)

    def variance(a_fixed: Array, a_random: list[sp.csr_matrix]) -> Array:
        centred: list[sp.csr_matrix] = []
        for d in prep.blocks.order:
            q = int(prep.codes[d].max()) + 1
            back = sp.kron(sp.identity(q), sp.csr_matrix(tr.random[d].T)).tocsr()
            centred.append(sp.csr_matrix(back @ a_random[d]))
        return prediction_variance(prep.blocks, fit.solution, tr.fixed.T @ a_fixed, centred)

    return Predictor(
        family="gaussian",
        formula=formula,
        design=prep.design,
        beta=fit.beta,
        b=list(fit.b),
        levels=[g[2] for g in _group_frames(prep)],
        covariance=list(fit.covariance),
        keys=prep.cells.keys.schema,
        variance=variance,
    )
