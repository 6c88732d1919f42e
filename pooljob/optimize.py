"""Bounded minimisation of the profiled criterion, with a record of the run.

The optimizer record follows MixedModels.jl's ``OptSummary``: the start and
end points, the criterion there, the number of evaluations and the
optimizer's own message travel with the fit and go into the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

Array = NDArray[np.float64]

#: lme4's ``isSingular`` tolerance on θ.
SINGULAR_TOL = 1e-4


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


def minimize_theta(
    fun_r: Callable[[Array], tuple[float, Array]],
    initial: Array,
    max_restarts: int = 10,
) -> tuple[Array, OptSummary]:
    """Minimise ``f(θ²)`` over ``θ ≥ 0``, given ``fun_r(r) = (f(r), ∂f/∂r)``.

    L-BFGS-B works in lme4's θ with the exact gradient ``2θ ∂f/∂r``.  That
    gradient vanishes at ``θ_k = 0`` whatever the data say, so a boundary
    point is accepted only if it satisfies the optimality (KKT) condition
    in ``r``: ``∂f/∂r_k ≥ 0``; otherwise the optimizer restarts with ``θ_k``
    moved off the boundary.  Components within ``SINGULAR_TOL`` of 0 are then
    tried at exactly 0 and kept there when the criterion is no worse (a
    variance of 0 is a result, not a failure).
    """
    evaluations = 0

    def counted(theta: Array) -> tuple[float, Array]:
        nonlocal evaluations
        evaluations += 1
        f, g = fun_r(theta**2)
        return f, 2.0 * theta * g

    x0 = np.asarray(initial, dtype=np.float64)
    start = x0.copy()
    messages: list[str] = []
    converged = False
    for _ in range(max_restarts + 1):
        res = minimize(
            counted,
            start,
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, None)] * len(start),
            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000, "maxcor": 20},
        )
        theta = np.maximum(np.asarray(res.x, dtype=np.float64), 0.0)
        messages.append(str(res.message))
        fmin, grad_r = fun_r(theta**2)
        evaluations += 1
        scale = max(1.0, abs(fmin))
        # L-BFGS-B may end in a line-search failure at an optimum it cannot
        # improve in floating point; accept it when the projected gradient is 0.
        projected = np.where(theta > 0.0, 2.0 * theta * grad_r, np.minimum(grad_r, 0.0))
        converged = bool(res.success) or bool(np.max(np.abs(projected)) <= 1e-6 * scale)
        violated = (theta == 0.0) & (grad_r < -1e-8 * scale)
        if not violated.any():
            break
        start = theta.copy()
        start[violated] = 0.5
    else:
        converged = False
    for k in range(len(theta)):
        if 0.0 < theta[k] < SINGULAR_TOL:
            trial = theta.copy()
            trial[k] = 0.0
            ft, _ = fun_r(trial**2)
            evaluations += 1
            if ft <= fmin + 1e-10 * max(1.0, abs(fmin)):
                theta, fmin = trial, ft
    summary = OptSummary(
        optimizer="L-BFGS-B (exact gradient)",
        initial=[float(x) for x in x0],
        final=[float(x) for x in theta],
        fmin=float(fmin),
        evaluations=evaluations,
        message="; restart: ".join(messages),
        converged=converged,
    )
    return theta, summary
