"""A Newton polish of a derivative-free optimum, by finite differences.

A method that compares criterion values (COBYQA, BOBYQA) cannot place the
optimum closer than about ``√(ε |f| / H)``: near it, ``f`` changes by less
than its rounding.  For a criterion of 3·10⁴ that is ~10⁻⁷ in θ, so two
inputs equal up to rounding (the same rows in another order, the same
statistics from another engine) give θ that differ in the seventh digit.
Differences of ``f`` over a step ``h`` resolve much finer: the gradient

    g_i = (f(θ − 2h_i) − 8 f(θ − h_i) + 8 f(θ + h_i) − f(θ + 2h_i)) / (12 h_i)

has rounding error ~``ε |f| / h_i`` and truncation error ~``h_i⁴``, and
with ``h_i = 10⁻² |θ_i|`` (the criterion's scale in θ_i is θ_i itself) one
or two Newton steps ``θ ← θ − H⁻¹ g`` (``H`` by central second differences)
place θ to ~10⁻¹⁰ relative.

This module is pure numerics: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

#: Step of the differences, relative to |θ_i| (at least ``STEP * FLOOR``).
STEP = 1e-2
FLOOR = 1e-2
#: Largest Newton step accepted, relative to max(|θ|, FLOOR): a polish, not a search.
MAX_MOVE = 1e-3
#: A polished θ is kept unless the criterion rises by more than this, relative.
RISE = 1e-9


def _gradient(f: Callable[[Array], float], x: Array, free: list[int], h: Array) -> Array:
    g = np.empty(len(free))
    for a, i in enumerate(free):
        e = np.zeros_like(x)
        e[i] = h[a]
        g[a] = (f(x - 2 * e) - 8 * f(x - e) + 8 * f(x + e) - f(x + 2 * e)) / (12 * h[a])
    return g


def _hessian(f: Callable[[Array], float], x: Array, f0: float, free: list[int], h: Array) -> Array:
    k = len(free)
    steps = np.zeros((k, len(x)))
    steps[np.arange(k), free] = h
    hess = np.empty((k, k))
    for a in range(k):
        ea = steps[a]
        hess[a, a] = (f(x + ea) - 2 * f0 + f(x - ea)) / h[a] ** 2
        for b in range(a + 1, k):
            eb = steps[b]
            cross = f(x + ea + eb) - f(x + ea - eb) - f(x - ea + eb) + f(x - ea - eb)
            hess[a, b] = hess[b, a] = cross / (4 * h[a] * h[b])
    return hess


def newton_polish(
    f: Callable[[Array], float], theta: Array, free: list[int], steps: int = 1
) -> tuple[Array, float, int]:
    """Refine a minimum of ``f`` at ``theta`` over the coordinates ``free``.

    Parameters
    ----------
    f : callable
        The criterion.
    theta : ndarray
        A point where a derivative-free method stopped (e.g. COBYQA with a
        trust region of 10⁻⁷).
    free : list of int
        The coordinates to refine: those in the interior of their bounds,
        far enough from them that ``θ_i ± 2h_i`` stays inside.
    steps : int
        Newton steps, all with the Hessian at ``theta`` (one suffices from
        within 10⁻⁶ of the optimum: the Hessian is right to ~10⁻⁴).

    Returns
    -------
    theta : ndarray
        The polished point, or ``theta`` unchanged if the Hessian is not
        positive definite, a step is larger than ``MAX_MOVE`` (``theta`` was
        no optimum), or the criterion rose by more than ``RISE``.
    fmin : float
        ``f`` there.
    evaluations : int
        Evaluations of ``f`` made here.
    """
    count = 0

    def counted(x: Array) -> float:
        nonlocal count
        count += 1
        return f(x)

    x = np.array(theta, dtype=np.float64)
    f_start = counted(x)
    if not free:
        return x, f_start, count
    h = STEP * np.maximum(np.abs(x[free]), FLOOR)
    hess = _hessian(counted, x, f_start, free, h)
    try:
        chol = np.linalg.cholesky(hess)
    except np.linalg.LinAlgError:
        return np.array(theta, dtype=np.float64), f_start, count
    for _ in range(steps):
        g = _gradient(counted, x, free, h)
        move = np.linalg.solve(chol.T, np.linalg.solve(chol, g))
        if np.any(np.abs(move) > MAX_MOVE * np.maximum(np.abs(x[free]), FLOOR)):
            return np.array(theta, dtype=np.float64), f_start, count
        x[free] -= move
    f_end = counted(x)
    if not f_end <= f_start + RISE * max(1.0, abs(f_start)):
        return np.array(theta, dtype=np.float64), f_start, count
    return x, f_end, count


def gradient_polish(
    fg: Callable[[Array], tuple[float, Array]],
    theta: Array,
    free: list[int],
    max_steps: int = 4,
) -> tuple[Array, float, int]:
    """Newton steps on ``free`` with an exact gradient and a Hessian from it.

    The Hessian is computed once, by forward differences of the gradient
    (``H e_i ≈ (g(θ + h_i e_i) − g(θ)) / h_i`` with
    ``h_i = 10⁻⁶ max(|θ_i|, FLOOR)``: an error of ~10⁻⁶ relative, which
    slows Newton's quadratic convergence by no more than that factor a step),
    then ``θ ← θ − H⁻¹ g`` until a step is below 10⁻¹² relative or
    ``max_steps`` are made.  Each step is kept only if the criterion does not
    rise by more than ``RISE``; a step larger than ``MAX_MOVE`` (no optimum
    nearby) or a Hessian that is not positive definite ends the polish.

    Returns
    -------
    theta, fmin, evaluations
        As for :func:`newton_polish` (evaluations of ``fg``).
    """
    count = 0

    def counted(x: Array) -> tuple[float, Array]:
        nonlocal count
        count += 1
        return fg(x)

    x = np.array(theta, dtype=np.float64)
    f, g = counted(x)
    if not free:
        return x, f, count
    h = 1e-6 * np.maximum(np.abs(x[free]), FLOOR)
    hess = np.empty((len(free), len(free)))
    for a, i in enumerate(free):
        e = np.zeros_like(x)
        e[i] = h[a]
        hess[:, a] = (counted(x + e)[1][free] - g[free]) / h[a]
    hess = 0.5 * (hess + hess.T)
    try:
        chol = np.linalg.cholesky(hess)
    except np.linalg.LinAlgError:
        return x, f, count
    for _ in range(max_steps):
        move = np.linalg.solve(chol.T, np.linalg.solve(chol, g[free]))
        if np.any(np.abs(move) > MAX_MOVE * np.maximum(np.abs(x[free]), FLOOR)):
            break
        trial = x.copy()
        trial[free] -= move
        f_new, g_new = counted(trial)
        if not f_new <= f + RISE * max(1.0, abs(f)):
            break
        x, f, g = trial, f_new, g_new
        if np.all(np.abs(move) <= 1e-12 * np.maximum(np.abs(x[free]), FLOOR)):
            break
    return x, f, count
