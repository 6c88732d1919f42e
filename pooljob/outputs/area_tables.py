"""The output tables of an area-level (Fay–Herriot) fit (:mod:`pooljob.model.area`).

One row per area in ``estimates.parquet`` (docs/models.md, "Area-level
models"): ``n`` 1, ``raw_mean`` the direct estimate ``y_i``, ``estimate`` the
EBLUP, ``parent`` the synthetic part ``x_iᵀβ̂``, ``std_error`` ``√(g1 + g2)``
(metafor's ``blup`` se), ``lower``/``upper`` from ``std_error``, ``shrinkage``
``v_i/(τ² + v_i)`` (lme4's ``condVar`` over τ², as for every model), ``rmse``
``√mse`` (Prasad–Rao for REML, Datta–Lahiri for ML).  ``effects`` holds
``û_i`` with ``cond_sd = √g1``; ``coefficients`` the GLS β̂; ``components``
one row, τ² (the residual variances are the known ``v_i``: no Residual row).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pooljob.model.area import AreaFit
from pooljob.model.formula import Formula
from pooljob.outputs.estimates import GroupingEstimates, estimates_frame
from pooljob.outputs.frames import (
    COMPONENT_SCHEMA,
    GroupingEffects,
    coefficients_frame,
    effects_table,
)
from pooljob.outputs.tables import INTERCEPT, FitResult
from pooljob.scan.area_rows import AreaRows


def area_result(
    formula: Formula,
    areas: AreaRows,
    fit: AreaFit,
    interval: float,
    method: str,
    sampling_variance: str,
    interval_method: str = "plugin",
) -> FitResult:
    """The FitResult of an area-level fit: its four tables and the fit's numbers.

    ``lower``/``upper`` from ``std_error`` (``"plugin"``) or ``rmse`` (``"prasad-rao"``).
    """
    grouping = formula.random[0].grouping
    keys = areas.keys
    m = keys.height
    key_list, schema = list(keys.columns), keys.schema
    estimates = estimates_frame(
        [
            GroupingEstimates(
                name=grouping.name,
                keys=keys,
                n=np.ones(m),
                raw_mean=areas.y,
                estimate=fit.eblup,
                parent=fit.synthetic,
                std_error=fit.std_error,
                shrinkage=1.0 - fit.gamma,
                rmse=fit.rmse,
            )
        ],
        "gaussian",
        interval,
        key_list,
        schema,
        interval_method,
    )
    effects = effects_table(
        [
            GroupingEffects(
                name=grouping.name,
                columns=grouping.columns,
                keys=keys,
                terms=[INTERCEPT],
                estimate=fit.effect[:, None],
                cond_sd=np.sqrt(fit.g1)[:, None],
            )
        ],
        key_list,
        schema,
    )
    components = pl.DataFrame(
        [
            {
                "grouping": grouping.name,
                "term1": INTERCEPT,
                "term2": None,
                "variance": fit.tau2,
                "sd": float(np.sqrt(fit.tau2)),
            }
        ],
        schema=COMPONENT_SCHEMA,
        orient="row",
    )
    return FitResult(
        formula=formula,
        family="gaussian",
        method=method,
        interval=interval,
        estimates=estimates,
        effects=effects,
        coefficients=coefficients_frame(areas.names, fit.beta, fit.vcov),
        components=components,
        objective=fit.objective,
        loglik=fit.loglik,
        converged=fit.optimizer.converged,
        singular=fit.singular,
        nobs=m,
        sigma=1.0,
        groups={grouping.name: m},
        rows=areas.rows,
        optimizer=fit.optimizer.to_dict(),
        hierarchy=(grouping,),
        nested=False,
        sampling_variance=sampling_variance,
        interval_method=interval_method,
    )
