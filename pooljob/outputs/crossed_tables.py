"""The output tables of an iterative fit (``[model] solver = "iterative"``).

The same four tables as every Gaussian fit (docs/outputs.md).  Exact up to
the solver's stated tolerance, given the variance components: ``coefficients``
(β̂ and ``√diag(σ²[C⁻¹]_ββ)``), ``effects.estimate`` (the BLUPs),
``estimates.estimate``/``parent``/``raw_mean``/``n``.  Approximate, and named
as such in the manifest's ``approximation``: the variance components
(REML with stochastic traces, their Monte Carlo standard errors alongside),
``effects.cond_sd`` (the lower bound ``σ/√(n_l + σ²/σ_k²)``, the other
effects treated as known), ``estimates.shrinkage`` (from that bound) and
``estimates.std_error``/``lower``/``upper`` (the same bound, :func:`crossed_result`).
``objective`` and ``loglik`` are not evaluated (NaN, null in the manifest).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from pooljob.model import crossed_iterative as ci
from pooljob.model.crossed_fit import CrossedFit
from pooljob.model.formula import Formula
from pooljob.model.optimize import OptSummary
from pooljob.outputs.estimates import GroupingEstimates, estimates_frame
from pooljob.outputs.frames import (
    coefficients_frame,
    components_frame,
    effects_frame,
    intercept_shrinkage,
    level_keys,
)
from pooljob.outputs.tables import FitResult

Array = NDArray[np.float64]

#: The published numbers an iterative fit gives approximately (docs/outputs.md).
APPROXIMATE = (
    "components.variance",
    "components.sd",
    "effects.cond_sd",
    "estimates.std_error",
    "estimates.lower",
    "estimates.upper",
    "estimates.shrinkage",
)


def _nested_in(codes: list[NDArray[np.int64]], d: int) -> list[int]:
    """The groupings nested in grouping ``d`` (itself included): each level in one of d's."""
    out = []
    for j, cj in enumerate(codes):
        q = int(cj.max()) + 1
        count = np.bincount(cj, minlength=q)
        mean = np.bincount(cj, codes[d].astype(np.float64), minlength=q) / np.maximum(count, 1)
        if np.array_equal(mean[cj], codes[d].astype(np.float64)):
            out.append(j)
    return out


def _estimates(fit: CrossedFit, interval: float, keys: list[str], schema: Any) -> Any:
    prep = fit.prepared
    cells, design, crossed = prep.cells, prep.design, prep.crossed
    n = cells.n
    shift = cells.shifts[0]
    fitted = crossed.sx @ fit.fit.beta + n * shift
    for o in design.offsets:
        fitted = fitted + n * cells.mean[:, o - 1]
    contribution = [n * fit.b[d][prep.codes[d], 0] for d in range(len(prep.codes))]
    total = fitted + np.sum(contribution, axis=0)
    response = n * (cells.mean[:, 0] + shift)
    groups = []
    for d, block in enumerate(design.blocks):
        code = prep.codes[d]
        q = int(code.max()) + 1
        rows = np.bincount(code, n, minlength=q).astype(np.float64)
        parent = total - np.sum([contribution[j] for j in _nested_in(prep.codes, d)], axis=0)
        groups.append(
            GroupingEstimates(
                name=block.grouping.name,
                keys=level_keys(cells.keys, block.grouping.columns, code),
                n=rows,
                raw_mean=np.bincount(code, response, minlength=q) / rows,
                estimate=np.bincount(code, total, minlength=q) / rows,
                parent=np.bincount(code, parent, minlength=q) / rows,
                std_error=np.sqrt(fit.cond_var[d][:, 0, 0]),
                shrinkage=intercept_shrinkage(
                    design, d, np.array([[fit.variances[d]]]), fit.cond_var[d]
                ),
            )
        )
    return estimates_frame(groups, "gaussian", interval, keys, schema)


def approximation(fit: CrossedFit) -> dict[str, Any]:
    """The manifest's ``approximation``: the method, its settings and its estimated error."""
    prep, it = fit.prepared, fit.fit
    names = [prep.design.blocks[d].grouping.name for d in prep.order]
    rows = [
        {
            "grouping": "Residual",
            "variance": it.sigma2,
            "mc_se": float(it.mc_se[0]),
            "start": float(it.start[0]),
        }
    ]
    rows += [
        {
            "grouping": name,
            "variance": float(it.variances[j]),
            "mc_se": float(it.mc_se[1 + j]),
            "start": float(it.start[1 + j]),
        }
        for j, name in enumerate(names)
    ]
    return {
        "solver": "iterative",
        "method": (
            "REML by Fisher scoring with the average information, from moment estimates; "
            "traces of C⁻¹ by Hutchinson's estimator; Henderson's equations by block PCG"
        ),
        "probes": ci.PROBES,
        "exact_traces": [names[j] for j in it.exact],
        "probe_seed": ci.SEED,
        "probe_tolerance": ci.PROBE_TOL,
        "solve_tolerance": ci.SOLVE_TOL,
        "solve_residual": it.residual,
        "steps": it.steps,
        "pcg_iterations": it.iterations,
        "components": rows,
        "approximate": list(APPROXIMATE),
    }


def optimizer_record(fit: CrossedFit, max_evaluations: int) -> OptSummary:
    """The optimizer's record of an iterative fit: φ = (σ², σ_k² …) in the solver's order."""
    it = fit.fit
    phi = np.concatenate([[it.sigma2], it.variances])
    scaled = np.abs(it.score * phi)
    return OptSummary(
        optimizer="AI-REML (Fisher scoring, average information), stochastic traces",
        initial=[float(v) for v in it.start],
        final=[float(v) for v in phi],
        fmin=float("nan"),
        evaluations=it.steps,
        max_evaluations=max_evaluations,
        message=f"{it.steps} steps, {it.iterations} PCG iterations",
        converged=it.converged,
        check=(
            f"largest relative step below {ci.STEP_TOL:g}"
            if it.converged
            else f"no convergence in {it.steps} steps"
        ),
        max_gradient=float(scaled.max()),
        gradient_tolerance=float("nan"),
        min_hessian_eigenvalue=None,
    )


def crossed_result(
    formula: Formula, fit: CrossedFit, interval: float, max_evaluations: int
) -> FitResult:
    """The output tables and the fit's numbers of an iterative fit.

    ``effects.cond_sd`` and ``estimates.std_error`` are the same lower bound
    ``σ/√(n_g + σ²/σ_k²)``: the prediction error of the group's own effect
    with β and the other groupings' effects known (for random intercepts,
    the group's estimate moves one for one with its effect).
    """
    prep = fit.prepared
    design, cells = prep.design, prep.cells
    all_keys = [
        c for c in cells.keys.columns if any(c in b.grouping.columns for b in design.blocks)
    ]
    schema = cells.keys.schema
    frames = [
        level_keys(cells.keys, b.grouping.columns, prep.codes[d])
        for d, b in enumerate(design.blocks)
    ]
    levels = [int(c.max()) + 1 for c in prep.codes]
    summary = optimizer_record(fit, max_evaluations)
    return FitResult(
        formula=formula,
        family="gaussian",
        method="reml",
        interval=interval,
        estimates=_estimates(fit, interval, all_keys, schema),
        effects=effects_frame(design, frames, fit.b, fit.cond_var, all_keys, schema),
        coefficients=coefficients_frame([c.name for c in design.fixed], fit.beta, fit.vcov),
        components=components_frame(
            design, [np.array([[v]]) for v in fit.variances], levels, fit.sigma2
        ),
        objective=float("nan"),
        loglik=float("nan"),
        converged=fit.fit.converged,
        singular=bool(min(fit.variances) <= 1e-8 * fit.sigma2),
        nobs=round(prep.crossed.nobs),
        sigma=float(np.sqrt(fit.sigma2)),
        groups={b.grouping.name: levels[d] for d, b in enumerate(design.blocks)},
        rows=cells.rows,
        optimizer=summary.to_dict(),
        hierarchy=tuple(b.grouping for b in design.blocks),
        nested=False,
        approximation=approximation(fit),
    )
