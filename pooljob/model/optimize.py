"""Bounded minimisation of the profiled criterion, with a record of the run.

The optimizer record follows MixedModels.jl's ``OptSummary``: the start and
end points, the criterion there, the number of evaluations and the
optimizer's own message travel with the fit and go into the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

#: lme4's ``isSingular`` tolerance on θ.
SINGULAR_TOL = 1e-4


def diagonal_positions(free: list[list[tuple[int, int]]]) -> list[int]:
    """Indices in θ of the diagonal entries of the templates ``T_k`` (bounded by 0)."""
    pos, out = 0, []
    for entries in free:
        for i, j in entries:
            if i == j:
                out.append(pos)
            pos += 1
    return out


def is_singular(free: list[list[tuple[int, int]]], theta: NDArray[np.float64]) -> bool:
    """lme4's ``isSingular``: some diagonal entry of θ below ``SINGULAR_TOL``."""
    return any(theta[i] < SINGULAR_TOL for i in diagonal_positions(free))


@dataclass(frozen=True)
class OptSummary:
    """What the optimizer did.

    Attributes
    ----------
    optimizer : str
    initial : list of float
        Starting θ.
    final : list of float
        θ at the optimum.
    fmin : float
        Criterion at ``final``.
    evaluations : int
        Criterion evaluations (each is one pass over the groups).
    message : str
        The optimizer's own convergence message.
    converged : bool
    """

    optimizer: str
    initial: list[float]
    final: list[float]
    fmin: float
    evaluations: int
    message: str
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON-ready values."""
        return asdict(self)


def _hessian(grad: Callable[[Array], Array], x: Array, g: Array) -> Array:
    """Symmetric Hessian by forward differences of the exact gradient ``g`` at ``x``.

    One gradient per parameter (central differences take two); the error,
    ~1e-6 relative, slows Newton's quadratic convergence by no more than
    that factor per step.
    """
    d = len(x)
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    hess = np.empty((d, d))
    for j in range(d):
        step = np.zeros(d)
        step[j] = h[j]
        hess[:, j] = (grad(x + step) - g) / h[j]
    return 0.5 * (hess + hess.T)


def _newton_direction(hess: Array, g: Array) -> Array:
    """``−|H|⁻¹ g``: Newton's step with the eigenvalues of H made positive.

    Taking absolute values (and a floor) keeps the step a descent direction
    where the criterion is not convex, and is Newton's step where it is.
    """
    lam, vec = np.linalg.eigh(hess)
    floor = max(1e-10 * float(np.max(np.abs(lam))), 1e-300)
    lam = np.maximum(np.abs(lam), floor)
    return np.asarray(-(vec @ ((vec.T @ g) / lam)), dtype=np.float64)


def _newton(
    fun: Callable[[Array], tuple[float, Array]],
    x: Array,
    max_iter: int,
) -> tuple[Array, float, bool, str, int]:
    """Minimise ``fun`` by Newton's method with |H| and backtracking.

    Returns the point, its value, whether the gradient vanished, a message
    and the number of evaluations.
    """
    evals = 0

    def grad(z: Array) -> Array:
        nonlocal evals
        evals += 1
        return fun(z)[1]

    f, g = fun(x)
    evals += 1
    for it in range(max_iter):
        scale = max(1.0, abs(f))
        if float(np.max(np.abs(g))) <= 1e-9 * scale:
            return x, f, True, f"gradient 0 after {it} iterations", evals
        step = _newton_direction(_hessian(grad, x, g), g)
        t = 1.0
        while t > 1e-12:
            trial = x + t * step
            f_new, g_new = fun(trial)
            evals += 1
            if f_new <= f + 1e-4 * t * float(g @ step):
                break
            t *= 0.5
        else:
            return x, f, True, f"no further decrease after {it} iterations", evals
        done = abs(f - f_new) <= 1e-15 * scale and bool(
            np.all(np.abs(trial - x) <= 1e-10 * np.maximum(1.0, np.abs(x)))
        )
        x, f, g = trial, f_new, g_new
        if done:
            return x, f, True, f"step below tolerance after {it + 1} iterations", evals
    return x, f, False, f"no convergence in {max_iter} iterations", evals


def snap_to_zero(
    fun: Callable[[Array], float], theta: Array, fmin: float, indices: Iterable[int]
) -> tuple[Array, float, int]:
    """Set each ``θ_k`` (k in ``indices``) within ``SINGULAR_TOL`` of 0 to exactly 0.

    A value is snapped only when the criterion is no worse (within 1e-10
    relative): a variance of 0 is a result.  Returns θ, its criterion and the
    number of evaluations made.
    """
    evaluations = 0
    for k in indices:
        if 0.0 < theta[k] < SINGULAR_TOL:
            trial = theta.copy()
            trial[k] = 0.0
            ft = fun(trial)
            evaluations += 1
            if ft <= fmin + 1e-10 * max(1.0, abs(fmin)):
                theta, fmin = trial, ft
    return theta, fmin, evaluations


def minimize_theta(
    fun_r: Callable[[Array], tuple[float, Array]],
    initial: Array,
    max_restarts: int = 10,
) -> tuple[Array, OptSummary]:
    """Minimise ``f(θ²)`` over ``θ ≥ 0``, given ``fun_r(r) = (f(r), ∂f/∂r)``.

    Newton's method works in lme4's θ with the exact gradient ``2θ ∂f/∂r``
    and a Hessian from forward differences of it; with a handful of
    parameters it reaches the optimum to machine precision in a few
    iterations.  Since ``f`` depends on θ only through θ², the search runs
    over all of ``ℝ^d`` and reports ``|θ|``: the bound needs no projection.
    The θ-gradient vanishes at ``θ_k = 0`` whatever the data say, so a point
    there is accepted only if it satisfies the optimality (KKT) condition
    in ``r``: ``∂f/∂r_k ≥ 0``; otherwise the search restarts with ``θ_k``
    moved off 0.  Components within
    ``SINGULAR_TOL`` of 0 are then tried at exactly 0 and kept there when
    the criterion is no worse (a variance of 0 is a result, not a failure).
    """
    evaluations = 0

    def fun_theta(theta: Array) -> tuple[float, Array]:
        f, g = fun_r(theta**2)
        return f, 2.0 * theta * g

    x0 = np.asarray(initial, dtype=np.float64)
    start = x0.copy()
    messages: list[str] = []
    converged = False
    for _ in range(max_restarts + 1):
        theta, fmin, converged, message, evals = _newton(fun_theta, start, 200)
        theta = np.abs(theta)
        evaluations += evals
        messages.append(message)
        _, grad_r = fun_r(theta**2)
        evaluations += 1
        violated = (theta < SINGULAR_TOL) & (grad_r < -1e-8 * max(1.0, abs(fmin)))
        if not violated.any():
            break
        start = theta.copy()
        start[violated] = 0.5
    else:
        converged = False
    theta, fmin, evals = snap_to_zero(lambda t: fun_r(t**2)[0], theta, fmin, range(len(theta)))
    evaluations += evals
    summary = OptSummary(
        optimizer="Newton (exact gradient, central-difference Hessian)",
        initial=[float(x) for x in x0],
        final=[float(x) for x in theta],
        fmin=float(fmin),
        evaluations=evaluations,
        message="; restart: ".join(messages),
        converged=converged,
    )
    return theta, summary
