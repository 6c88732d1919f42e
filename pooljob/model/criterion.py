"""The criterion as the optimizer sees it, and its derivatives by finite differences.

:class:`Criterion` counts evaluations, stops at ``max_evaluations``, caches
the last points and keeps the best one seen; :class:`Differences` and the
functions below give gradients and Hessians by finite differences, written
once for every solver (:mod:`pooljob.model.optimize`).  Pure numerics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pooljob.model.options import DEFAULT_MAX_EVALUATIONS

Array = NDArray[np.float64]
#: Points whose values the criterion keeps (asking again costs no evaluation).
RECENT = 8
#: Told ``(evaluations, best criterion so far)`` after each evaluation (e.g. to show progress).
OnEvaluation = Callable[[int, float], None]


class EvaluationLimitError(Exception):
    """The criterion was evaluated ``max_evaluations`` times."""


class Criterion:
    """The criterion as the optimizer sees it: counted, bounded, cached, its best point kept.

    ``value(x)`` is ``f(x)``; ``gradient(x)``, when an exact gradient exists,
    ``(f(x), ∇f(x))``; ``hessian(x)``, where the solver has it, ``∇²f(x)``
    from the gradient evaluation at ``x``.  ``spent`` evaluations were made by earlier stages;
    once ``max_evaluations`` are made, the next raises
    :class:`EvaluationLimitError` (while ``enforce``).  The last ``RECENT``
    points are cached: asking again costs no evaluation.  ``on_evaluation``,
    if given, is called after each evaluation with the count and the best
    value so far; it only observes (the search does not depend on it).
    """

    def __init__(
        self,
        value: Callable[[Array], float] | None = None,
        gradient: Callable[[Array], tuple[float, Array]] | None = None,
        max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
        spent: int = 0,
        on_evaluation: OnEvaluation | None = None,
        hessian: Callable[[Array], Array | None] | None = None,
    ) -> None:
        self._value, self._gradient = value, gradient
        self._hessian = hessian
        self.max_evaluations = max_evaluations
        self.evaluations = spent
        self.enforce = True
        self.limit_reached = False
        self._recent: dict[bytes, tuple[float, Array | None]] = {}
        self.best_x: Array | None = None
        self.best_f = float("inf")
        self.on_evaluation = on_evaluation

    @property
    def exact(self) -> bool:
        """Whether an exact gradient exists."""
        return self._gradient is not None

    def _evaluate(self, x: Array, gradient: bool) -> tuple[float, Array | None]:
        key = x.tobytes()
        if key in self._recent and (self._recent[key][1] is not None or not gradient):
            return self._recent[key]
        if self.enforce and self.evaluations >= self.max_evaluations:
            self.limit_reached = True
            raise EvaluationLimitError
        self.evaluations += 1
        out: tuple[float, Array | None]
        if gradient:
            assert self._gradient is not None
            f, g = self._gradient(x)
            out = (float(f), np.asarray(g, dtype=np.float64))
        else:
            assert self._value is not None
            out = (float(self._value(x)), None)
        self._recent[key] = out
        if len(self._recent) > RECENT:
            del self._recent[next(iter(self._recent))]
        if out[0] < self.best_f:
            self.best_x, self.best_f = x.copy(), out[0]
        if self.on_evaluation is not None:
            self.on_evaluation(self.evaluations, self.best_f)
        return out

    def __call__(self, x: Array) -> float:
        """``f(x)``."""
        return self._evaluate(np.asarray(x, dtype=np.float64), self._value is None)[0]

    @property
    def curved(self) -> bool:
        """Whether the criterion has its own Hessian (:meth:`hessian`)."""
        return self._hessian is not None

    def hessian(self, x: Array) -> Array | None:
        """The exact Hessian at ``x`` where the criterion gives one (else None).

        It reuses the gradient evaluation at ``x`` (made first if need be), so
        it counts no evaluation of its own.
        """
        if self._hessian is None:
            return None
        x = np.asarray(x, dtype=np.float64)
        self.gradient(x)
        hess = self._hessian(x)
        return None if hess is None else np.asarray(hess, dtype=np.float64)

    def gradient(self, x: Array) -> tuple[float, Array]:
        """``(f(x), ∇f(x))`` (exact gradients only)."""
        f, g = self._evaluate(np.asarray(x, dtype=np.float64), True)
        assert g is not None
        return f, g.copy()


@dataclass(frozen=True)
class Differences:
    """Finite-difference steps ``h_i = step × max(|x_i|, floor)``.

    ``central``: Hessians from a gradient by central differences (2k
    gradients for k coordinates) rather than forward ones (k).
    """

    step: float
    floor: float
    central: bool = False

    def steps(self, x: Array) -> Array:
        """The steps at ``x``."""
        return np.asarray(self.step * np.maximum(np.abs(x), self.floor), dtype=np.float64)


def hessian_from_gradient(
    crit: Criterion, x: Array, g: Array, coords: list[int], diff: Differences
) -> Array:
    """``H`` on ``coords`` from the exact gradient (``g`` its value there), symmetrised.

    ``H e_i ≈ (∇f(x + h_i e_i) − ∇f(x)) / h_i``, or ``(∇f(x + h_i e_i) −
    ∇f(x − h_i e_i)) / 2h_i`` when ``diff.central``.
    """
    h = diff.steps(x[coords])
    hess = np.empty((len(coords), len(coords)))
    for a, i in enumerate(coords):
        e = h[a] * np.eye(len(x))[i]
        up = crit.gradient(x + e)[1][coords]
        if diff.central:
            hess[:, a] = (up - crit.gradient(x - e)[1][coords]) / (2 * h[a])
        else:
            hess[:, a] = (up - g) / h[a]
    return np.asarray(0.5 * (hess + hess.T), dtype=np.float64)


def gradient_from_values(crit: Criterion, x: Array, coords: list[int], diff: Differences) -> Array:
    """``(f(x − 2h_i) − 8f(x − h_i) + 8f(x + h_i) − f(x + 2h_i)) / 12h_i`` on ``coords``.

    Rounding error ~``ε|f|/h_i``, truncation ~``h_i⁴``.
    """
    h = diff.steps(x[coords])
    g = np.empty(len(coords))
    for a, i in enumerate(coords):
        e = h[a] * np.eye(len(x))[i]
        g[a] = (crit(x - 2 * e) - 8 * crit(x - e) + 8 * crit(x + e) - crit(x + 2 * e)) / (12 * h[a])
    return g


def curvature(
    crit: Criterion, x: Array, f0: float, coords: list[int], diff: Differences
) -> tuple[Array, Array]:
    """Gradient and Hessian on ``coords`` from values, by central differences.

    ``H_aa = (f(x + h_a) − 2f(x) + f(x − h_a)) / h_a²``,
    ``H_ab = (f(x+h_a+h_b) − f(x+h_a−h_b) − f(x−h_a+h_b) + f(x−h_a−h_b)) / 4h_a h_b``,
    and the gradient of :func:`gradient_from_values`, sharing the points
    ``x ± h_a``: ``2k² + 2k`` evaluations for ``k`` coordinates.
    """
    k = len(coords)
    h = diff.steps(x[coords])
    steps = [h[a] * np.eye(len(x))[i] for a, i in enumerate(coords)]
    grad, hess = np.empty(k), np.empty((k, k))
    for a in range(k):
        ea = steps[a]
        fp, fm = crit(x + ea), crit(x - ea)
        grad[a] = (crit(x - 2 * ea) - 8 * fm + 8 * fp - crit(x + 2 * ea)) / (12 * h[a])
        hess[a, a] = (fp - 2 * f0 + fm) / h[a] ** 2
        for b in range(a + 1, k):
            eb = steps[b]
            cross = crit(x + ea + eb) - crit(x + ea - eb) - crit(x - ea + eb) + crit(x - ea - eb)
            hess[a, b] = hess[b, a] = cross / (4 * h[a] * h[b])
    return grad, hess


def secant_update(hess: Array, s: Array, y: Array) -> Array | None:
    """BFGS's update of ``hess`` for the step ``s``, gradient change ``y`` (None if ``sᵀy ≤ 0``)."""
    sy = float(s @ y)
    hs = hess @ s
    shs = float(s @ hs)
    if not sy > 0.0 or not shs > 0.0:
        return None
    return np.asarray(hess - np.outer(hs, hs) / shs + np.outer(y, y) / sy, dtype=np.float64)


#: Relative step of :func:`hessian_from_values`.
VALUE_STEP = 1e-3


def hessian_from_values(crit: Criterion, x: Array, f: float, g: Array, coords: list[int]) -> Array:
    """``H`` on ``coords`` from criterion values and the exact gradient ``g`` at ``x``.

    With ``h_i = VALUE_STEP × max(|x_i|, 10⁻²)`` and ``f_i = f(x + h_i e_i)``,
    ``f_ij = f(x + h_i e_i + h_j e_j)``::

        H_ii = 2 (f_i − f − h_i g_i) / h_i²
        H_ij = (f_ij − f_i − f_j + f) / (h_i h_j)

    ``k(k + 1)/2`` values for ``k`` coordinates, each without the gradient
    (for the profiled solver a Cholesky without the inverse: about a third of
    a gradient evaluation); errors of order ``h`` (the secant updates that
    follow correct them).
    """
    k = len(coords)
    h = VALUE_STEP * np.maximum(np.abs(x[coords]), 1e-2)
    unit = np.eye(len(x))
    single = [crit(x + h[a] * unit[i]) for a, i in enumerate(coords)]
    hess = np.empty((k, k))
    for a, i in enumerate(coords):
        hess[a, a] = 2.0 * (single[a] - f - h[a] * g[a]) / h[a] ** 2
        for b in range(a + 1, k):
            both = crit(x + h[a] * unit[i] + h[b] * unit[coords[b]])
            hess[a, b] = hess[b, a] = (both - single[a] - single[b] + f) / (h[a] * h[b])
    return hess
