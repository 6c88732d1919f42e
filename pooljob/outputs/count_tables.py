"""The output tables of a binomial or Poisson fit (:mod:`pooljob.model.glmm_fit`).

The tables follow the output contract
(docs/outputs.md): ``estimates`` on the response scale (a proportion, or a
rate per unit of exposure), ``effects`` and ``coefficients`` on the link
scale, ``components`` as lme4's ``as.data.frame(VarCorr(m))`` (no residual
row: a binomial or Poisson model has none).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.model.count_design import PreparedCounts
from pooljob.model.families import mean_link
from pooljob.model.glmm import CountFit, sample_effects
from pooljob.model.lmm import prediction_variance
from pooljob.outputs.estimates import (
    CellGrouping,
    CellPredictions,
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

Array = NDArray[np.float64]


def _key_frames(prep: PreparedCounts) -> list[pl.DataFrame]:
    """Per design block: the key columns of its levels."""
    return [
        level_keys(prep.counts.keys, block.grouping.columns, prep.codes[d])
        for d, block in enumerate(prep.design.blocks)
    ]


def count_tables(prep: PreparedCounts, fit: CountFit, interval: float) -> dict[str, pl.DataFrame]:
    """Estimates, effects, coefficients and components of a count fit."""
    design, model, counts = prep.design, prep.model, prep.counts
    all_keys = [
        c for c in counts.keys.columns if any(c in b.grouping.columns for b in design.blocks)
    ]
    schema = counts.keys.schema
    by_design = {d: k for k, d in enumerate(model.order)}
    blocks = range(len(design.blocks))
    coefficients = coefficients_frame([c.name for c in design.fixed], fit.beta, fit.vcov)
    frames = _key_frames(prep)
    effects = effects_frame(
        design,
        frames,
        [fit.solution.b[by_design[d]] for d in blocks],
        [fit.solution.cond_var[by_design[d]] for d in blocks],
        all_keys,
        schema,
    )
    estimates = _estimates(prep, fit, frames, interval, all_keys, schema)
    return {
        "estimates": estimates,
        "effects": effects,
        "coefficients": coefficients,
        "components": components_frame(
            design,
            [fit.covariance[by_design[d]] for d in blocks],
            [model.levels[by_design[d]] for d in blocks],
            None,
        ),
    }


def _estimates(
    prep: PreparedCounts,
    fit: CountFit,
    frames: list[pl.DataFrame],
    interval: float,
    keys: list[str],
    schema: Any,
) -> pl.DataFrame:
    """Per group: ``Σ t_c m(η_c) / Σ t_c`` over its cells, with a delta-method SE.

    ``m`` is the inverse link per unit of ``t`` (a probability, or a rate
    per unit of exposure).  Its variance is ``gᵀ M⁻¹ g`` with ``g`` the
    gradient in (β, b) and ``M`` Henderson's matrix at the mode
    (:func:`pooljob.model.lmm.prediction_variance`); the interval is symmetric on
    the link scale and mapped back, so it stays inside the mean's range.
    """
    design, model, counts = prep.design, prep.model, prep.counts
    eta = fit.mode.eta - model.offset
    mean, deriv = mean_link(model.family, eta)
    by_design = {d: k for k, d in enumerate(model.order)}
    contribution = {
        d: (model.z[k] * fit.solution.b[k][model.codes[k]]).sum(axis=1)
        for k, d in enumerate(model.order)
    }
    grad = counts.t * deriv  # ∂(t m(η))/∂η per cell
    cells = CellPredictions(
        rows=counts.n,
        weight=counts.t,
        response=counts.y,
        fitted=counts.t * mean,
        grad_fixed=grad[:, None] * model.x,
        grad_random=[(model.codes[k], grad[:, None] * model.z[k]) for k in range(len(model.order))],
    )
    nested = nested_blocks(prep.codes)
    groupings = []
    for d, keyframe in enumerate(frames):
        removed = sum((contribution[j] for j in nested[d]), np.zeros_like(eta))
        k = by_design[d]
        groupings.append(
            CellGrouping(
                name=design.blocks[d].grouping.name,
                keys=keyframe,
                codes=prep.codes[d],
                parent_fitted=counts.t * mean_link(model.family, eta - removed)[0],
                shrinkage=intercept_shrinkage(
                    design, d, fit.covariance[k], fit.solution.cond_var[k]
                ),
            )
        )
    estimates = cell_estimates(
        cells, groupings, lambda a, b: prediction_variance(fit.henderson, fit.solution, a, b)
    )
    return estimates_frame(estimates, model.family, interval, keys, schema)


def predictor(prep: PreparedCounts, fit: CountFit) -> Predictor:
    """Predictions and posterior draws for new cells (:mod:`pooljob.outputs.poststratify`)."""
    order = prep.model.order
    by_design = {d: k for k, d in enumerate(order)}
    n_blocks = len(order)

    def sample(draws: int, rng: np.random.Generator) -> tuple[Array, list[Array]]:
        beta, b = sample_effects(fit, prep.model, draws, rng)
        return beta, [b[by_design[d]] for d in range(n_blocks)]

    return Predictor(
        family=prep.model.family,
        formula=prep.design_formula,
        design=prep.design,
        beta=fit.beta,
        b=[fit.solution.b[by_design[d]] for d in range(n_blocks)],
        levels=_key_frames(prep),
        covariance=[fit.covariance[by_design[d]] for d in range(n_blocks)],
        keys=prep.counts.keys.schema,
        sample=sample,
    )
