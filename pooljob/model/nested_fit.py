"""Fit a nested random-intercept model from its sufficient statistics.

``fit_nested`` composes the small pure steps of :mod:`pooljob.model.nested`:
optimise θ, then one upward and two downward passes give the fixed effect,
the variance components, lme4's conditional modes and conditional variances,
and the prediction error variances of the pooled group means.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from pooljob.model.criterion import Criterion, Differences, OnEvaluation
from pooljob.model.nested import (
    Array,
    NestedStats,
    downward,
    group_means,
    level_totals,
    moment_start,
    objective_and_gradient_r,
    upward,
)
from pooljob.model.optimize import OptSummary, minimize_criterion
from pooljob.model.options import DEFAULT_MAX_EVALUATIONS
from pooljob.model.theta import SINGULAR_TOL

Method = Literal["reml", "ml"]


@dataclass(frozen=True)
class LevelEstimates:
    """Per-group results at one level of the hierarchy (response units).

    Attributes
    ----------
    n : ndarray
        Rows in the group.
    raw_mean : ndarray
        Mean of the group's rows (centred response); with observation
        weights, ``Σ w y / Σ w``.
    estimate : ndarray
        Mean over the group's rows of the fitted values ``μ̂ + Σ_ℓ b̂_ℓ``: its
        own and its ancestors' effects, and the row-weighted mean of the
        effects of the groups nested in it.
    parent : ndarray
        The same with the effects of the group's own level and of the levels
        below it set to 0: ``μ̂ + Σ_{ancestors} b̂``.
    std_error : ndarray
        ``√PEV`` of ``estimate`` (Henderson): includes the uncertainty of ``μ̂``.
    effect : ndarray
        Conditional mode of the group's own effect (lme4 ``ranef``).
    cond_sd : ndarray
        Its conditional standard deviation (lme4 ``condVar``).
    shrinkage : ndarray
        ``Var(b | y) / τ²`` of the group's own effect (lme4's ``condVar`` over
        the level's variance; ``σ²/(σ² + n τ²)`` in a one-level model); 1 where
        ``τ² = 0``.
    """

    n: Array
    raw_mean: Array
    estimate: Array
    parent: Array
    std_error: Array
    effect: Array
    cond_sd: Array
    shrinkage: Array


@dataclass(frozen=True)
class NestedFit:
    """A fitted nested model; every number in units of the centred response.

    Attributes
    ----------
    method : {"reml", "ml"}
    theta : ndarray
        lme4's θ: relative standard deviations ``τ_ℓ/σ``, top level first.
    sigma2 : float
        Residual variance ``σ̂² = q/ν``.
    intercept, intercept_se : float
        ``μ̂`` and ``√(σ̂²/W_root)``.
    objective : float
        REML criterion, or −2 log-likelihood for ML (as lme4's ``REMLcrit``
        and ``deviance``); with observation weights the criterion of the rows
        scaled by ``√w`` less ``Σ log w``, as lme4's.
    levels : tuple of LevelEstimates
        Top level first.
    optimizer : OptSummary
    """

    method: Method
    theta: Array
    sigma2: float
    intercept: float
    intercept_se: float
    objective: float
    nobs: float
    levels: tuple[LevelEstimates, ...]
    optimizer: OptSummary

    @property
    def variances(self) -> Array:
        """Between-group variances ``τ²_ℓ = θ_ℓ² σ̂²``, top level first."""
        return np.asarray(self.theta**2 * self.sigma2, dtype=np.float64)

    @property
    def loglik(self) -> float:
        """lme4's ``logLik``: −objective/2 (restricted for REML)."""
        return -0.5 * self.objective

    @property
    def converged(self) -> bool:
        """Whether the optimum passed the convergence check (:mod:`pooljob.model.optimize`)."""
        return self.optimizer.converged

    @property
    def singular(self) -> bool:
        """lme4's ``isSingular``: some ``θ_ℓ`` below 1e-4."""
        return bool(np.any(self.theta < SINGULAR_TOL))


def _shrinkage(effect_var: Array, r: float) -> Array:
    """``Var(b | y) / τ²`` (both over σ²); 1 where ``τ² = 0`` (fully pooled)."""
    if r > 0.0:
        return np.asarray(effect_var / r, dtype=np.float64)
    return np.ones_like(effect_var)


def optimize_theta(
    stats: NestedStats,
    reml: bool,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    on_evaluation: OnEvaluation | None = None,
) -> tuple[Array, OptSummary]:
    """Minimise the criterion over θ ≥ 0 from the moment start.

    Newton's method in lme4's θ with the exact gradient ``2θ ∂f/∂r`` and a
    Hessian from its forward differences (:mod:`pooljob.model.optimize`);
    since ``f`` depends on θ only through θ², the search runs over all of
    ``ℝ^d`` and reports ``|θ|``.  At ``θ_k = 0`` the θ-gradient vanishes
    whatever the data say: the boundary is judged by the exact ``∂f/∂r_k``.
    """
    last: dict[str, Array] = {}

    def value_and_gradient(theta: Array) -> tuple[float, Array]:
        f, grad_r = objective_and_gradient_r(stats, theta**2, reml)
        last["r"] = grad_r
        return f, 2.0 * theta * grad_r

    crit = Criterion(
        gradient=value_and_gradient,
        max_evaluations=max_evaluations,
        on_evaluation=on_evaluation,
    )

    def outward(theta: Array) -> Array:
        crit.gradient(theta)  # evaluated last, or now
        return last["r"]

    optimum = minimize_criterion(
        crit,
        moment_start(stats),
        [[(0, 0)] for _ in stats.parents],
        Differences(1e-6, 1.0),
        "Newton (exact gradient, Hessian by its forward differences)",
        outward=outward,
    )
    return optimum.x, optimum.summary


def fit_nested(
    stats: NestedStats,
    method: Method = "reml",
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    on_evaluation: OnEvaluation | None = None,
) -> NestedFit:
    """Fit ``y ~ 1 + (1 | g₁) + … + (1 | g_L)`` with nested groupings.

    Parameters
    ----------
    stats : NestedStats
        Per-leaf count, mean and within sum of squares, and the tree.
    method : {"reml", "ml"}
    max_evaluations : int
        Criterion evaluations after which the search stops.
    on_evaluation : callable, optional
        Told ``(evaluations, best criterion)`` after each evaluation.

    Returns
    -------
    NestedFit
    """
    reml = method == "reml"
    n_levels = len(stats.parents)
    theta, summary = optimize_theta(stats, reml, max_evaluations, on_evaluation)
    if stats.log_weight:  # lme4's criterion with precision weights: less Σ log w
        summary = replace(summary, fmin=summary.fmin - stats.log_weight)
    r = theta**2
    up = upward(stats, r)
    nu = stats.nobs - (1.0 if reml else 0.0)
    sigma2 = up.q / nu
    cond = downward(stats, up, r, root_var=0.0)
    pred = downward(stats, up, r, root_var=1.0 / up.root_weight)
    means = group_means(stats, up, r, pred)
    ns, sums = level_totals(stats)
    rows = ns if stats.count is None else level_totals(replace(stats, n=stats.count))[0]
    parents = (np.full(1, up.root_mean), *cond.mean[:-1])
    levels = tuple(
        LevelEstimates(
            n=rows[k],
            raw_mean=sums[k] / ns[k],
            estimate=means.mean[k],
            parent=parents[k][stats.parents[k]],
            std_error=np.sqrt(np.maximum(means.var[k], 0.0) * sigma2),
            effect=cond.effect[k],
            cond_sd=np.sqrt(cond.effect_var[k] * sigma2),
            shrinkage=_shrinkage(cond.effect_var[k], r[k]),
        )
        for k in range(n_levels)
    )
    return NestedFit(
        method=method,
        theta=theta,
        sigma2=sigma2,
        intercept=up.root_mean,
        intercept_se=float(np.sqrt(sigma2 / up.root_weight)),
        objective=summary.fmin,
        nobs=stats.nobs,
        levels=levels,
        optimizer=summary,
    )
