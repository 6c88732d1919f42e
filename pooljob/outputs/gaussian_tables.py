"""The output tables of a Gaussian fit by the blocked solver (:mod:`pooljob.model.general`).

``estimates`` per group of every grouping: the mean over the group's rows of
the fitted values and its prediction error from Henderson's equations;
``effects``, ``coefficients`` and ``components`` as lme4's ``ranef``,
``fixef`` and ``VarCorr``.  The meaning of every column is docs/outputs.md.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from numpy.typing import NDArray

from pooljob.model.design import RandomBlock
from pooljob.model.general import GeneralFit, Prepared
from pooljob.model.lmm import prediction_variance
from pooljob.outputs.frames import (
    ESTIMATE_COLUMNS,
    align,
    coefficients_frame,
    components_frame,
    effects_frame,
    estimates_part,
    intercept_shrinkage,
    level_keys,
)


def _group_frames(prep: Prepared) -> list[tuple[RandomBlock, NDArray[np.int64], pl.DataFrame]]:
    """Per block: cell codes and the key frame of its levels (first cell of each)."""
    return [
        (block, prep.codes[d], level_keys(prep.cells.keys, block.grouping.columns, prep.codes[d]))
        for d, block in enumerate(prep.design.blocks)
    ]


def tables(fit: GeneralFit, interval: float) -> dict[str, pl.DataFrame]:
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
    estimates = _estimates(fit, groups, interval, all_keys, schema)
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
) -> pl.DataFrame:
    """Per group of each grouping: mean of the conditional fitted values over its rows."""
    prep = fit.prepared
    design, s, sol = prep.design, prep.moments, fit.solution
    n_cell = s[:, 0, 0]
    fixed_sum = prep.fixed.weights * s[:, prep.fixed.variables, 0]  # (C, p) Σ x over rows
    # fitted sums per cell in the centred parametrisation, plus offsets and the y shift
    fitted = fixed_sum @ sol.beta
    rand_sums = []
    for k, d in enumerate(prep.blocks.order):
        cw = prep.random[d]
        zsum = cw.weights * s[:, cw.variables, 0]  # (C, p_k)
        rand_sums.append((d, zsum))
        fitted = fitted + (zsum * sol.b[k][prep.codes[d]]).sum(axis=1)
    for o in design.offsets:
        fitted = fitted + s[:, o, 0]
    shifts = prep.cells.shifts
    fitted = fitted + n_cell * (shifts[0])
    y_sum = s[:, 1, 0] + n_cell * shifts[0]
    z = NormalDist().inv_cdf(0.5 + interval / 2.0)
    parts = []
    g_total = sum(len(kf) for _, _, kf in groups)
    a_fixed = np.zeros((len(design.fixed), g_total))
    a_random: dict[int, tuple[list[Any], list[Any], list[Any]]] = {
        k: ([], [], []) for k in range(prep.blocks.n_blocks)
    }
    info = []
    start = 0
    for d, (block, code, keyframe) in enumerate(groups):
        q = keyframe.height
        n = np.bincount(code, n_cell, minlength=q)
        est = np.bincount(code, fitted, minlength=q) / n
        raw = np.bincount(code, y_sum, minlength=q) / n
        for j in range(len(design.fixed)):
            a_fixed[j, start : start + q] = np.bincount(code, fixed_sum[:, j], minlength=q) / n
        for k, (dk, zsum) in enumerate(rand_sums):
            pk = zsum.shape[1]
            other = prep.codes[dk]
            for a in range(pk):
                rows, cols, vals = a_random[k]
                rows.append(other * pk + a)
                cols.append(start + code)
                vals.append(zsum[:, a] / n[code])
        info.append((d, block, keyframe, n, est, raw, start))
        start += q
    sparse = []
    for k in range(prep.blocks.n_blocks):
        rows, cols, vals = a_random[k]
        size = prep.blocks.levels[k] * prep.blocks.widths[k]
        sparse.append(
            sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(size, g_total),
            )
        )
    pev = prediction_variance(prep.blocks, sol, a_fixed, sparse)
    for d, block, keyframe, n, est, raw, st in info:
        se = np.sqrt(np.maximum(pev[st : st + len(n)], 0.0))
        shrink = intercept_shrinkage(design, d, fit.covariance[d], fit.cond_var[d])
        parts.append(
            estimates_part(
                keyframe,
                block.grouping.name,
                {
                    "n": n,
                    "raw_mean": raw,
                    "estimate": est,
                    "std_error": se,
                    "lower": est - z * se,
                    "upper": est + z * se,
                    "shrinkage": shrink,
                },
            )
        )
    tail = list(ESTIMATE_COLUMNS)
    if not parts:
        return pl.DataFrame(schema={"grouping": pl.String, **{t: pl.Float64 for t in tail}})
    return align(parts, ["grouping"], keys, schema, tail)
