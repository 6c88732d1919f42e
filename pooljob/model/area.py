"""Area-level (Fay–Herriot) models: one row per area, its sampling variance known.

The model (``sae::eblupFH``, ``metafor::rma(yi, vi, mods)``)::

    y_i = x_iᵀβ + u_i + e_i,   u_i ~ N(0, A),   e_i ~ N(0, v_i),  v_i known

so ``y ~ N(Xβ, V)`` with ``V = diag(A + v_i)``.  With ``w_i = 1/(A + v_i)``,
``Q = (XᵀWX)⁻¹``, ``β̂ = Q XᵀWy`` (GLS) and ``r = y − Xβ̂``, the criteria are
−2 times metafor's log-likelihoods::

    ML:   f = n log 2π + Σ log(A + v_i) + rᵀWr
    REML: f = (n − p) log 2π − log|XᵀX| + Σ log(A + v_i) + log|XᵀWX| + rᵀWr

(metafor's REML log-likelihood keeps ``½ log|XᵀX|``; lme4's REML criterion
has no such term), with exact derivatives in ``A``::

    ML:   ∂f/∂A = Σ w_i − Σ w_i² r_i²
    REML: ∂f/∂A = Σ w_i − tr(Q XᵀW²X) − Σ w_i² r_i²

The optimizer (:func:`pooljob.model.optimize.minimize_criterion`) works on
``θ = √A / s`` with ``s² = median(v_i)``: θ is τ on the scale of a typical
sampling standard deviation, as lme4's θ is τ/σ, so its boundary tolerance
(``SINGULAR_TOL``) means the same whatever the unit of ``y``.  ``A = 0`` is a
result (``singular``).

Per area, with ``γ_i = A/(A + v_i)`` and ``B_i = 1 − γ_i = v_i/(A + v_i)``::

    EBLUP  = x_iᵀβ̂ + γ_i (y_i − x_iᵀβ̂)
    g1     = γ_i v_i                    (the BLUP's error with A and β known)
    g2     = B_i² x_iᵀ Q x_i             (β̂'s uncertainty)
    g3     = B_i² Var(Â) / (A + v_i),    Var(Â) = 2 / Σ w_i²
    se     = √(g1 + g2)                  (metafor::blup's se)
    mse    = g1 + g2 + 2 g3              (REML: Prasad–Rao / Datta–Lahiri)
    mse    = g1 + g2 + 2 g3 − b B_i²     (ML: Datta–Lahiri; B_i² = ∂g1/∂A)
    b      = −tr(Q XᵀW²X) / Σ w_i²       (the bias of ML's Â to O(1/m))

as ``sae::mseFH`` computes them.  Pure numerics: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pooljob.model.criterion import Criterion, Differences
from pooljob.model.optimize import OptSummary, is_singular, minimize_criterion
from pooljob.model.options import DEFAULT_MAX_EVALUATIONS

Array = NDArray[np.float64]
LOG_2PI = float(np.log(2.0 * np.pi))
LAYOUT = [[(0, 0)]]


@dataclass(frozen=True)
class AreaFit:
    """A fitted Fay–Herriot model (module docstring for every formula).

    Attributes
    ----------
    tau2 : float
        ``Â``, the variance of the area effects.
    beta, vcov : ndarray
        GLS coefficients and their covariance ``Q`` at ``Â``.
    objective : float
        −2 × metafor's REML or ML log-likelihood.
    eblup, synthetic, gamma, effect : ndarray, shape (m,)
        Per area: the EBLUP, ``x_iᵀβ̂``, ``γ_i`` and ``û_i = γ_i (y_i − x_iᵀβ̂)``.
    g1, g2, g3, mse : ndarray, shape (m,)
        The terms of the prediction error and the second-order MSE.
    """

    method: str
    tau2: float
    beta: Array
    vcov: Array
    objective: float
    eblup: Array
    synthetic: Array
    gamma: Array
    effect: Array
    g1: Array
    g2: Array
    g3: Array
    mse: Array
    singular: bool
    optimizer: OptSummary

    @property
    def loglik(self) -> float:
        """The log-likelihood (metafor's ``logLik``): ``−objective / 2``."""
        return -0.5 * self.objective

    @property
    def std_error(self) -> Array:
        """``√(g1 + g2)``: metafor::blup's ``se``, the plug-in prediction error."""
        return np.asarray(np.sqrt(self.g1 + self.g2), dtype=np.float64)

    @property
    def rmse(self) -> Array:
        """``√mse``: the second-order-correct root mean squared error."""
        return np.asarray(np.sqrt(np.maximum(self.mse, 0.0)), dtype=np.float64)


def _gls(a: float, y: Array, v: Array, x: Array) -> tuple[Array, Array, Array, Array]:
    """``w``, ``β̂``, ``Q`` and ``r`` at ``A = a``."""
    w = 1.0 / (a + v)
    q = np.asarray(np.linalg.inv(x.T @ (w[:, None] * x)), dtype=np.float64)
    beta = q @ (x.T @ (w * y))
    return w, beta, q, y - x @ beta


def criterion(a: float, y: Array, v: Array, x: Array, reml: bool) -> tuple[float, float]:
    """``f(A)`` and ``∂f/∂A`` (module docstring)."""
    w, _, q, r = _gls(a, y, v, x)
    n, p = x.shape
    f = float(np.sum(np.log(a + v)) + np.sum(w * r * r))
    g = float(np.sum(w) - np.sum(w * w * r * r))
    if reml:
        f += (n - p) * LOG_2PI - np.linalg.slogdet(x.T @ x)[1] - np.linalg.slogdet(q)[1]
        g -= float(np.trace(q @ (x.T @ ((w * w)[:, None] * x))))
    else:
        f += n * LOG_2PI
    return f, g


def moment_start(y: Array, v: Array, x: Array) -> float:
    """A start for ``A``: the residual variance of OLS beyond the mean sampling variance."""
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    r = y - x @ beta
    dof = max(len(y) - x.shape[1], 1)
    return float(max(float(r @ r) / dof - float(np.mean(v)), 0.1 * float(np.median(v))))


def fit_area(
    y: Array,
    v: Array,
    x: Array,
    method: str = "reml",
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
) -> AreaFit:
    """Fit the Fay–Herriot model by REML or ML, and every per-area number.

    ``y`` the direct estimates, ``v`` their known sampling variances (> 0),
    ``x`` the fixed-effect design (full column rank, fewer columns than rows).
    """
    reml = method == "reml"
    scale = float(np.median(v))

    def value_and_gradient(theta: Array) -> tuple[float, Array]:
        t = float(theta[0])
        f, g = criterion(t * t * scale, y, v, x, reml)
        return f, np.array([2.0 * t * scale * g])

    def outward(theta: Array) -> Array:
        t = float(theta[0])
        return np.array([scale * criterion(t * t * scale, y, v, x, reml)[1]])

    crit = Criterion(gradient=value_and_gradient, max_evaluations=max_evaluations)
    start = np.array([np.sqrt(moment_start(y, v, x) / scale)])
    optimum = minimize_criterion(
        crit,
        start,
        LAYOUT,
        Differences(1e-6, 0.01),
        "Newton (exact gradient in τ², Hessian by its forward differences)",
        outward=outward,
    )
    theta = optimum.x
    a = float(theta[0]) ** 2 * scale
    return area_numbers(a, y, v, x, method, optimum.summary, is_singular(LAYOUT, theta))


def area_numbers(
    a: float,
    y: Array,
    v: Array,
    x: Array,
    method: str,
    summary: OptSummary,
    singular: bool,
) -> AreaFit:
    """β̂, the EBLUPs, g1, g2, g3 and the MSE at ``A = a`` (module docstring)."""
    w, beta, q, r = _gls(a, y, v, x)
    synthetic = x @ beta
    gamma = a * w
    b2 = (v * w) ** 2
    s2 = float(np.sum(w * w))
    g1 = gamma * v
    g2 = b2 * np.einsum("ij,jk,ik->i", x, q, x)
    g3 = b2 * (2.0 / s2) * w
    mse = g1 + g2 + 2.0 * g3
    if method == "ml":
        bias = -float(np.trace(q @ (x.T @ ((w * w)[:, None] * x)))) / s2
        mse = mse - bias * b2
    f, _ = criterion(a, y, v, x, method == "reml")
    return AreaFit(
        method=method,
        tau2=a,
        beta=beta,
        vcov=q,
        objective=f,
        eblup=synthetic + gamma * r,
        synthetic=synthetic,
        gamma=gamma,
        effect=gamma * r,
        g1=g1,
        g2=g2,
        g3=g3,
        mse=mse,
        singular=singular,
        optimizer=summary,
    )
