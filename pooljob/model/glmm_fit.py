"""Fit a binomial or Poisson mixed model: minimise the Laplace criterion over (θ, β).

The model, PIRLS and the criterion are :mod:`pooljob.model.glmm`'s; the
exact gradient of random-intercept models is :mod:`pooljob.model.laplace`'s;
the search, boundary restart, Newton polish and convergence check are
:mod:`pooljob.model.optimize`'s.  As glmer with ``nAGQ = 1``, the criterion
is minimised over (θ, β) jointly.

Pure numerics (numpy, scipy): no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import scipy.linalg as sla
from numpy.typing import NDArray
from scipy.optimize import minimize

from pooljob.model.blocks import Blocks
from pooljob.model.criterion import Criterion, Differences, EvaluationLimitError, OnEvaluation
from pooljob.model.families import mean_link
from pooljob.model.glmm import (
    CountFit,
    CountModel,
    Mode,
    pirls,
    predict_mode,
    random_part,
    shape,
    weighted_blocks,
)
from pooljob.model.laplace import laplace_gradient
from pooljob.model.lmm import Solution, solve, templates
from pooljob.model.optimize import Optimum, minimize_criterion
from pooljob.model.options import DEFAULT_MAX_EVALUATIONS
from pooljob.model.theta import diagonal_positions

Array = NDArray[np.float64]

#: Stage 1 (θ with β by PIRLS, nAGQ = 0) only gives stage 2 its start.
STAGE1_RADIUS = 1e-1
#: Stage 2's COBYQA stops at this trust-region radius; the Newton steps take
#: the optimum from there to the rounding floor of their differences.
STAGE2_RADIUS = 1e-5
#: Differences of the gradient (central, for β's standard errors: ~1e-8 error).
GRADIENT_DIFFERENCES = Differences(1e-4, 0.1, central=True)
#: Differences of values, without a gradient: the criterion's scale in θ_i is
#: θ_i itself, and β_i's is O(1).
VALUE_DIFFERENCES = Differences(3e-3, 0.1)


def fit_counts(
    model: CountModel,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    on_evaluation: OnEvaluation | None = None,
) -> CountFit:
    """Minimise the Laplace criterion over (θ, β), as glmer does with nAGQ = 1.

    Random-intercept models: L-BFGS-B with the exact gradient from θ = 1 (β
    by PIRLS there), unbounded since the criterion is even in each θ_k, then
    Newton steps with the Hessian from central differences of the gradient;
    if that point fails the convergence check, COBYQA and Newton steps by
    differences of values finish.  Other models: stage 1 minimises over θ
    with β found by PIRLS along with u (glmer's nAGQ = 0 start); stage 2
    over (θ, β) jointly from there, with COBYQA to a trust-region radius of
    ``STAGE2_RADIUS`` and Newton steps by differences of values.  The final
    Hessian also gives β's standard errors (:func:`_beta_vcov`).
    ``on_evaluation`` is told ``(evaluations, best criterion)`` as the
    search goes (the count runs on across the stages).
    """
    n_theta, p = model.n_theta, model.x.shape[1]
    diag = diagonal_positions(model.free)
    warm: dict[str, Array] = {}

    def stage1(theta: Array) -> float:
        try:
            mode = pirls(model, theta, None, warm.get("u1"))
        except np.linalg.LinAlgError:
            return float("inf")
        warm["u1"], warm["b1"] = mode.u, mode.beta
        return mode.deviance

    last: list[tuple[Array, Mode]] = []

    def stage2(xb: Array) -> float:
        theta, beta = xb[:n_theta], xb[n_theta:]
        starts: list[Array | None] = []
        if last:
            with np.errstate(all="ignore"):
                guess = predict_mode(model, last[0][1], last[0][0][:n_theta], theta, beta)
            # a prediction far from the last mode (e.g. from θ_k = 0) is no guide
            if np.all(np.isfinite(guess)) and np.max(np.abs(guess - last[0][1].u)) < 1.0:
                starts.append(guess)
        starts += [warm.get("u2"), None]
        for u0 in starts:
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    mode = pirls(model, theta, beta, u0)
            except np.linalg.LinAlgError:
                continue
            if np.isfinite(mode.deviance):
                warm["u2"] = mode.u
                last[:] = [(xb.copy(), mode)]
                return mode.deviance
        return float("inf")

    theta0 = np.zeros(n_theta)
    theta0[diag] = 1.0
    bounds1: list[tuple[float | None, float | None]] = [(None, None)] * n_theta
    for i in diag:
        bounds1[i] = (0.0, None)
    gradient = _gradient_function(model, stage2, last)
    spent = 0
    if gradient is None:
        crit1 = Criterion(stage1, max_evaluations=max_evaluations, on_evaluation=on_evaluation)
        try:
            res1 = minimize(
                crit1,
                theta0,
                method="COBYQA",
                bounds=bounds1,
                options={"final_tr_radius": STAGE1_RADIUS, "maxfev": 100 * (n_theta + 1) ** 2},
            )
            theta1 = np.asarray(res1.x, dtype=np.float64)
        except EvaluationLimitError:
            theta1 = theta0 if crit1.best_x is None else crit1.best_x
        spent = crit1.evaluations
        stage1_note = f"COBYQA over θ with β by PIRLS (nAGQ = 0, {spent} evaluations)"
    else:
        # with the exact gradient, the nAGQ = 0 stage does not pay for itself
        theta1 = theta0
        stage1_note = "start at θ = 1 with β by PIRLS"
    start_mode = pirls(model, theta1, None)
    x0 = np.concatenate([theta1, start_mode.beta])
    warm["u2"] = start_mode.u
    bounds2 = bounds1 + [(None, None)] * p

    def cobyqa(crit: Criterion) -> Callable[[Array], tuple[Array, str]]:
        def search(start: Array) -> tuple[Array, str]:
            res = minimize(
                crit,
                start,
                method="COBYQA",
                bounds=bounds2,
                options={
                    "initial_tr_radius": 0.1,
                    "final_tr_radius": STAGE2_RADIUS,
                    "maxfev": 200 * (n_theta + p + 1) ** 2,
                },
            )
            return np.asarray(res.x, dtype=np.float64), f"COBYQA: {res.message}"

        return search

    name = f"{stage1_note}, then COBYQA over (θ, β) (Laplace), then Newton steps"
    optimum: Optimum
    if gradient is None:
        crit = Criterion(stage2, None, max_evaluations, spent, on_evaluation)
        optimum = minimize_criterion(
            crit, x0, model.free, VALUE_DIFFERENCES, name, search=cobyqa(crit)
        )
    else:
        crit = Criterion(stage2, gradient, max_evaluations, spent, on_evaluation)

        def lbfgs(start: Array) -> tuple[Array, str]:
            res = minimize(
                crit.gradient,
                start,
                jac=True,
                method="L-BFGS-B",
                options={"ftol": 1e-15, "gtol": 1e-8, "maxiter": 1000},
            )
            return np.asarray(res.x, dtype=np.float64), f"L-BFGS-B: {res.message}"

        optimum = minimize_criterion(
            crit,
            x0,
            model.free,
            GRADIENT_DIFFERENCES,
            f"{stage1_note}, then L-BFGS-B with the exact gradient over (θ, β) (Laplace), "
            "then Newton steps",
            search=lbfgs,
        )
        if not optimum.summary.converged and not crit.limit_reached:
            # the gradient search stopped short of a checked optimum: finish without it
            values = Criterion(stage2, None, max_evaluations, crit.evaluations, on_evaluation)
            first = optimum.summary
            optimum = minimize_criterion(
                values,
                optimum.x,
                model.free,
                VALUE_DIFFERENCES,
                f"{first.optimizer}; then {name}",
                search=cobyqa(values),
                initial=x0,
                notes=[first.message, f"not a checked optimum ({first.check})"],
            )
    xb = optimum.x
    theta, beta = xb[:n_theta], xb[n_theta:]
    mode = pirls(model, theta, beta, warm.get("u2"))
    sol, henderson = _solution(model, theta, beta, mode)
    vcov, source = _beta_vcov(optimum.hessian, optimum.free, n_theta, sol.vcov)
    summary = replace(optimum.summary, fmin=float(mode.deviance), vcov=source)
    cov = [tk @ tk.T for tk in templates(shape(model), theta)]
    return CountFit(theta, beta, vcov, mode, henderson, sol, cov, float(mode.deviance), summary)


def _gradient_function(
    model: CountModel, stage2: Callable[[Array], float], last: list[tuple[Array, Mode]]
) -> Callable[[Array], tuple[float, Array]] | None:
    """``x ↦ (d(x), ∇d(x))`` for random-intercept models (None otherwise).

    ``stage2`` evaluates the criterion and leaves its mode in ``last``; the
    gradient is then computed from that mode (:mod:`pooljob.model.laplace`).
    """
    if not all(model.unit):
        return None
    n_theta = model.n_theta

    def value_and_gradient(xb: Array) -> tuple[float, Array]:
        value = stage2(xb)
        if not np.isfinite(value) or not last or not np.array_equal(last[0][0], xb):
            return float("inf"), np.zeros(len(xb))
        mode = last[0][1]
        return value, laplace_gradient(model, xb[:n_theta], xb[n_theta:], mode)

    return value_and_gradient


def _beta_vcov(hess: Array, free: list[int], n_theta: int, conditional: Array) -> tuple[Array, str]:
    """β's covariance: ``2 H⁻¹`` on β, or the conditional one if H is not positive definite.

    The criterion is −2 log-likelihood, so ``2 H⁻¹`` (``H`` its Hessian over
    the interior coordinates; θ on the boundary is held fixed) is the inverse
    observed information: glmer's default ``vcov``.  When ``H`` is not
    positive definite (no Cholesky factor), β's block of the inverse of
    Henderson's matrix at the mode, ``(R_Xᵀ R_X)⁻¹`` from PIRLS, given θ —
    glmer's ``vcov(use.hessian = FALSE)`` — is used instead.  Returns the
    matrix and ``"hessian"`` or ``"conditional"``.
    """
    p = conditional.shape[0]
    if not p:
        return np.zeros((0, 0)), "hessian"
    try:
        factor = np.linalg.cholesky(hess)
    except np.linalg.LinAlgError:
        return conditional, "conditional"
    if not np.all(np.isfinite(factor)):
        return conditional, "conditional"
    inv = sla.cho_solve((factor, True), np.eye(len(free)))
    where = [free.index(n_theta + j) for j in range(p)]
    return np.asarray(2.0 * inv[np.ix_(where, where)], dtype=np.float64), "hessian"


def _solution(model: CountModel, theta: Array, beta: Array, mode: Mode) -> tuple[Solution, Blocks]:
    """β, b, ``Var(b | y)`` and β's conditional covariance with σ = 1, at the mode.

    The blocks carry the fixed columns (Henderson's matrix includes X) so
    that :func:`pooljob.model.lmm.prediction_variance` covers β's uncertainty.
    """
    mean, deriv = mean_link(model.family, mode.eta)
    w = np.maximum(model.t * deriv, 1e-300)
    r = mode.eta - model.offset + (model.y - model.t * mean) / w
    blocks = weighted_blocks(model, w, model.x, r)
    sol = solve(blocks, theta, reml=False)
    # solve() scales the covariances by its σ̂²; a GLMM has σ = 1
    cond_var = [cv / sol.sigma2 for cv in sol.cond_var]
    t = templates(blocks, theta)
    _, b = random_part(model, t, mode.u)
    return replace(
        sol, beta=beta, vcov=sol.vcov / sol.sigma2, b=b, cond_var=cond_var, sigma2=1.0
    ), blocks
