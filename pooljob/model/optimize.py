"""The optimizer driver of every solver: search, boundary restart, Newton polish, check.

A solver gives its criterion (:class:`Criterion`: values, and the exact
gradient when it has one), the layout of θ (the free entries of each
``T_k``; coordinates after θ, such as β, are unbounded) and optionally a
global search (L-BFGS-B, COBYQA).  :func:`minimize_criterion` then

1. runs the search, then Newton's method (:func:`newton`) on the interior
   coordinates, or on all of them from the start without a search, with
   the Hessian by finite differences of the gradient or of values, down
   to the gradient's rounding floor: inputs equal up to rounding give
   optima equal up to rounding;
2. restarts at the boundary (:mod:`pooljob.model.theta`: diagonal entries
   are bounded by 0): a diagonal θ_i below ``SINGULAR_TOL`` is kept
   only if the criterion does not fall as θ_i² grows (the one-sided
   derivative points outward: KKT), else the search starts again from
   θ_i = ``PROBE``; then sets such θ_i to exactly 0 where no worse;
3. checks the point: the projected gradient (``|∂f/∂x_i|``, but
   ``max(0, −∂f/∂θ_i²)`` for diagonal θ_i below ``10 × SINGULAR_TOL``)
   must not exceed ``GRADIENT_TOL × max(1, |f|)`` and the Hessian on the
   interior coordinates must be positive definite; the verdict and its
   numbers go into the optimizer record, :class:`OptSummary`.

Every evaluation counts; after ``max_evaluations`` (lme4's ``maxfun``)
the search stops at the best point seen, which is checked like any other.
Pure numerics: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pooljob.model.criterion import (
    Criterion,
    Differences,
    EvaluationLimitError,
    curvature,
    gradient_from_values,
    hessian_from_gradient,
    hessian_from_values,
    secant_update,
)
from pooljob.model.theta import (
    SINGULAR_TOL,
    Layout,
    diagonal_positions,
    interior,
    positive_diagonal,
)

Array = NDArray[np.float64]
#: The check: max |projected gradient| ≤ GRADIENT_TOL × max(1, |criterion|).
GRADIENT_TOL = 1e-6
#: Restart off the boundary when ∂f/∂θ_i² < −RESTART_TOL × max(1, |criterion|).
RESTART_TOL = 1e-9
#: Where a diagonal entry at the boundary is probed, and restarted from.
PROBE = 0.1
#: The criterion's rounding, relative: a rise this small is no rise.
RISE = 1e-11
#: A rise Newton's method accepts, relative, below the rounding's scale, where an
#: exact gradient falls tenfold (:func:`newton`).
WIDE_RISE = 1e-9
MAX_RESTARTS = 4
#: Newton with a secant Hessian stops where its step would lower the criterion
#: by less than this, relative (each step costs an evaluation).
SECANT_FLOOR = 1e-18
MAX_NEWTON = 100
#: Points whose values the criterion keeps.


def is_singular(free: Layout, theta: Array) -> bool:
    """lme4's ``isSingular``: some diagonal entry of θ below ``SINGULAR_TOL``."""
    return any(theta[i] < SINGULAR_TOL for i in diagonal_positions(free))


@dataclass(frozen=True)
class OptSummary:
    """What the optimizer did, and the check of where it stopped (MixedModels.jl's name).

    ``initial``/``final`` are the start and the optimum (θ, then β for count
    models), ``fmin`` the criterion there, ``evaluations`` those made (the
    check's included) and ``max_evaluations`` the limit; ``message`` the
    optimizers' own messages.  ``converged``: the check passed; ``check``
    its verdict; ``max_gradient`` the largest |projected gradient| and
    ``gradient_tolerance`` its bound; ``min_hessian_eigenvalue`` the
    smallest eigenvalue of the Hessian on the interior coordinates (None
    without any).  ``vcov``, count models only: where β's covariance came
    from, ``"hessian"`` or ``"conditional"`` (:mod:`pooljob.model.glmm_fit`).
    """

    optimizer: str
    initial: list[float]
    final: list[float]
    fmin: float
    evaluations: int
    max_evaluations: int
    message: str
    converged: bool
    check: str
    max_gradient: float
    gradient_tolerance: float
    min_hessian_eigenvalue: float | None
    vcov: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON-ready values (non-finite numbers as None)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not np.isfinite(value):
                out[key] = None
        return out


def _direction(hess: Array, g: Array) -> Array:
    """``−|H|⁻¹ g``: Newton's step with the eigenvalues of H made positive.

    A descent direction where the criterion is not convex; Newton's step
    where it is.
    """
    lam, vec = np.linalg.eigh(hess)
    floor = max(1e-10 * float(np.max(np.abs(lam))), 1e-300)
    lam = np.maximum(np.abs(lam), floor)
    return np.asarray(-(vec @ ((vec.T @ g) / lam)), dtype=np.float64)


@dataclass(frozen=True)
class NewtonResult:
    """Where Newton's method stopped: the point, f, g and H on ``coords``, and why."""

    x: Array
    f: float
    coords: list[int]
    g: Array
    hess: Array
    message: str


def _secant_start(
    crit: Criterion, x: Array, f: float, g: Array, coords: list[int]
) -> tuple[Array, bool]:
    """The first Hessian of the secant variant: the criterion's own (True), else from values."""
    exact = crit.hessian(x)
    if exact is not None:
        return exact[np.ix_(coords, coords)], True
    return hessian_from_values(crit, x, f, g, coords), False


def newton(
    crit: Criterion,
    x: Array,
    coords: list[int],
    diff: Differences,
    max_iter: int = MAX_NEWTON,
    secant: bool = False,
) -> NewtonResult:
    """Newton's method on ``coords`` down to the gradient's rounding floor.

    Steps ``−|H|⁻¹ g`` (:func:`_direction`).  A step is taken when it lowers
    the criterion by Armijo's rule (halved until it does) or, when the
    decrease it promises is below the criterion's rounding (``RISE``), when
    it halves ``|g|`` without raising the criterion beyond its rounding
    (Newton's steps shrink it far more, rounding noise does not), or, with
    an exact gradient, divides ``|g|`` by ten without raising the criterion
    by more than ``WIDE_RISE`` (its rounding on badly scaled data).
    The first step that does neither ends the search: the gradient is at
    its rounding floor; so does a step below 10⁻¹⁵ of the coordinates'
    scale (``max(|x_i|, diff.floor)``), e.g. towards a variance of 0.
    ``H`` is recomputed after a large step (more than 10⁻³ relative, or a
    shortened one) and reused otherwise; with ``secant`` (exact gradients
    only) it is the criterion's own Hessian where it has one
    (:meth:`Criterion.hessian`: recomputed after a large step, kept after a
    small one), else computed once from criterion values and the gradient
    (:func:`hessian_from_values`) and then updated by BFGS's secant formula
    after every full step, recomputed only after a
    shortened step or when the update does not apply (``sᵀy ≤ 0``), and
    once by differences of the gradient where a step fails at the rounding
    floor (then tried again); it
    stops once the decrease its next step predicts, ``−½ gᵀΔ``, is below
    ``SECANT_FLOOR × max(1, |f|)``, below what the criterion itself
    resolves (~1e-16), rather than evaluating that step.
    """
    x = np.array(x, dtype=np.float64)
    if crit.exact:
        f, g_all = crit.gradient(x)
        g = g_all[coords]
        hess, own_hess = (
            _secant_start(crit, x, f, g, coords)
            if secant
            else (hessian_from_gradient(crit, x, g, coords, diff), False)
        )
    else:
        f = crit(x)
        g, hess = curvature(crit, x, f, coords, diff)
        own_hess = False
    if not coords:
        return NewtonResult(x, f, coords, g, hess, "no free coordinates")
    message = f"no convergence in {max_iter} steps"
    refreshed = False
    for it in range(max_iter):
        if not np.any(g):
            message = f"gradient 0 after {it} steps"
            break
        step = _direction(hess, g)
        if np.all(np.abs(step) <= 1e-15 * np.maximum(np.abs(x[coords]), diff.floor)):
            message = f"step below rounding after {it} steps"
            break
        slope = float(g @ step)
        noise = RISE * max(1.0, abs(f))
        if secant and -0.5 * slope < SECANT_FLOOR * max(1.0, abs(f)):
            message = f"predicted decrease below {SECANT_FLOOR:.0e} relative after {it} steps"
            break
        t = 1.0
        taken: tuple[Array, float, Array | None] | None = None
        while t >= 1e-10:
            trial = x.copy()
            trial[coords] += t * step
            g_new: Array | None = None
            if crit.exact:
                f_new, g_full = crit.gradient(trial)
                g_new = g_full[coords]
            else:
                f_new = crit(trial)
            if -t * slope > noise:  # a decrease the criterion resolves: Armijo
                if f_new <= f + 1e-4 * t * slope:
                    taken = (trial, f_new, g_new)
                    break
                t *= 0.5
                continue
            # below the rounding: judge by the gradient.  An exact gradient that
            # falls tenfold outweighs a rise of up to WIDE_RISE: on badly scaled
            # data (a response far from 0) the criterion rounds worse than RISE
            wide = crit.exact and f_new <= f + WIDE_RISE * max(1.0, abs(f))
            if f_new <= f + noise or wide:
                if g_new is None:
                    g_new = gradient_from_values(crit, trial, coords, diff)
                shrink = 0.5 if f_new <= f + noise else 0.1
                if np.linalg.norm(g_new) <= shrink * np.linalg.norm(g):
                    taken = (trial, f_new, g_new)
            break
        if taken is None:
            if secant and not refreshed and not own_hess:
                # a secant Hessian may be too rough for the last steps: once,
                # retry with one by differences of the gradient
                hess = hessian_from_gradient(crit, x, g, coords, diff)
                refreshed = True
                continue
            message = f"gradient at its rounding floor after {it} steps"
            break
        large = t < 1.0 or bool(
            np.any(np.abs(t * step) > 1e-3 * np.maximum(np.abs(x[coords]), diff.floor))
        )
        x_old, g_old = x, g
        x, f, g_new = taken
        if crit.exact:
            assert g_new is not None
            g = g_new
            # the criterion's own Hessian after a large step; after a small one the
            # last is as good (its own error is of the step's order), and cheaper
            own = secant and crit.curved
            exact = crit.hessian(x) if own and (large or not own_hess) else None
            updated = secant_update(hess, x[coords] - x_old[coords], g - g_old) if secant else None
            own_hess = exact is not None or (own_hess and not large)
            if exact is not None:
                hess = exact[np.ix_(coords, coords)]
            elif own_hess:
                pass
            elif secant and t == 1.0 and updated is not None:
                hess = updated
            elif secant:
                hess = hessian_from_values(crit, x, f, g, coords)
            elif large:
                hess = hessian_from_gradient(crit, x, g, coords, diff)
        elif large:
            g, hess = curvature(crit, x, f, coords, diff)
        else:
            g = gradient_from_values(crit, x, coords, diff) if g_new is None else g_new
    return NewtonResult(x, f, coords, g, hess, message)


def snap_to_zero(
    crit: Criterion, x: Array, fmin: float, indices: Sequence[int]
) -> tuple[Array, float]:
    """Set each ``x_k`` (k in ``indices``) below ``SINGULAR_TOL`` to exactly 0 when no worse.

    "No worse" is within ``1e-10`` relative: a variance of 0 is a result.
    """
    for k in indices:
        if 0.0 < x[k] < SINGULAR_TOL:
            trial = x.copy()
            trial[k] = 0.0
            ft = crit(trial)
            if ft <= fmin + 1e-10 * max(1.0, abs(fmin)):
                x, fmin = trial, ft
    return x, fmin


def _outward(
    crit: Criterion,
    x: Array,
    f: float,
    indices: list[int],
    outward: Callable[[Array], Array] | None,
) -> dict[int, float]:
    """``∂f/∂θ_i²`` at diagonal entries near 0: exact, or over ``[θ_i², PROBE²]``.

    A criterion that cannot be evaluated at the probe (infinite) rises there.
    """
    if not indices:
        return {}
    if outward is not None:
        exact = outward(x)
        return {i: float(exact[i]) for i in indices}
    out = {}
    for i in indices:
        trial = x.copy()
        trial[i] = PROBE
        slope = (crit(trial) - f) / (PROBE**2 - x[i] ** 2)
        out[i] = slope if np.isfinite(slope) else float("inf")
    return out


@dataclass(frozen=True)
class Optimum:
    """The checked optimum: the point, its record, and the Hessian on ``free``."""

    x: Array
    summary: OptSummary
    hessian: Array
    free: list[int]


def minimize_criterion(
    crit: Criterion,
    start: Array,
    layout: Layout,
    diff: Differences,
    name: str,
    search: Callable[[Array], tuple[Array, str]] | None = None,
    outward: Callable[[Array], Array] | None = None,
    initial: Array | None = None,
    notes: Sequence[str] = (),
    secant: bool = False,
) -> Optimum:
    """Minimise ``crit`` from ``start``: search, restart, Newton, check (module docstring).

    ``layout`` is θ's (:mod:`pooljob.model.theta`); ``diff`` the steps of
    the finite differences; ``name`` the optimizer's description.
    ``search(x) → (x, message)`` is a global search using ``crit`` (without
    one, Newton's method runs on every coordinate); ``outward(x)`` the exact
    ``∂f/∂(x_i²)`` per coordinate, if known (otherwise a difference);
    ``initial`` the start to record, ``notes`` earlier stages' messages;
    ``secant``: Newton's Hessian by BFGS updates (:func:`newton`).
    """
    n = len(start)
    diagonal = diagonal_positions(layout)
    messages = list(notes)
    x = positive_diagonal(layout, np.asarray(start, dtype=np.float64))
    result: NewtonResult | None = None
    try:
        for attempt in range(MAX_RESTARTS + 1):
            if search is not None:
                found, message = search(x)
                x = positive_diagonal(layout, found)
                messages.append(message)
            coords = list(range(n)) if search is None else interior(layout, x)
            result = newton(crit, x, coords, diff, secant=secant)
            messages.append(f"Newton: {result.message}")
            x = positive_diagonal(layout, result.x)
            f = crit(x)
            near = [i for i in diagonal if x[i] < SINGULAR_TOL]
            slopes = _outward(crit, x, f, near, outward)
            off = [i for i, s in slopes.items() if s < -RESTART_TOL * max(1.0, abs(f))]
            if not off or attempt == MAX_RESTARTS:
                break
            x = x.copy()
            x[off] = PROBE
            messages.append("restart off the boundary")
    except EvaluationLimitError:
        if crit.best_x is not None:
            x = positive_diagonal(layout, crit.best_x)
        messages.append(f"stopped at max_evaluations = {crit.max_evaluations}")
        result = None
    crit.enforce = False
    x, f = snap_to_zero(crit, x, crit(x), diagonal)
    free, hess, projected = _derivatives(crit, x, f, layout, diff, result, outward)
    smallest = float(np.linalg.eigvalsh(hess)[0]) if free and np.all(np.isfinite(hess)) else None
    tol = GRADIENT_TOL * max(1.0, abs(f)) if np.isfinite(f) else GRADIENT_TOL
    failed = []
    if not np.isfinite(f):
        failed.append(f"the criterion is not finite ({f})")
    elif not projected <= tol:
        failed.append(f"max |gradient| {projected:.1e} > tolerance {tol:.1e}")
    shown = "not finite" if smallest is None else f"{smallest:.1e}"
    if free and (smallest is None or not smallest > 0.0):
        failed.append(f"the Hessian is not positive definite (smallest eigenvalue {shown})")
    verdict = "; ".join(failed) or f"max |gradient| {projected:.1e} <= tolerance {tol:.1e}" + (
        f", Hessian positive definite (smallest eigenvalue {shown})" if free else ""
    )
    summary = OptSummary(
        optimizer=name,
        initial=[float(v) for v in (start if initial is None else initial)],
        final=[float(v) for v in x],
        fmin=float(f),
        evaluations=crit.evaluations,
        max_evaluations=crit.max_evaluations,
        message="; ".join(messages),
        converged=not failed,
        check=verdict,
        max_gradient=projected,
        gradient_tolerance=tol,
        min_hessian_eigenvalue=smallest,
    )
    return Optimum(x, summary, hess, free)


def _positive_definite(hess: Array) -> bool:
    """Whether the symmetric ``hess`` is finite with a positive smallest eigenvalue."""
    return bool(np.all(np.isfinite(hess)) and np.linalg.eigvalsh(hess)[0] > 0.0)


def _derivatives(
    crit: Criterion,
    x: Array,
    f: float,
    layout: Layout,
    diff: Differences,
    result: NewtonResult | None,
    outward: Callable[[Array], Array] | None,
) -> tuple[list[int], Array, float]:
    """The interior coordinates, the Hessian on them and max |projected gradient| at ``x``.

    What Newton's method left (its gradient at ``x``, its last Hessian) is
    reused; the rest is computed.  With an exact gradient, a last Hessian
    that is not positive definite (secant updates and values approximate
    it) is recomputed by differences of the gradient before the check
    judges it.
    """
    boundary = [i for i in diagonal_positions(layout) if x[i] < 10 * SINGULAR_TOL]
    free = interior(layout, x)
    rest = [i for i in range(len(x)) if i not in boundary]
    if crit.exact:
        g = crit.gradient(x)[1][rest]
    else:
        same = result is not None and np.array_equal(result.x, x)
        known = dict(zip(result.coords, result.g, strict=True)) if result and same else {}
        missing = [i for i in rest if i not in known]
        known.update(zip(missing, gradient_from_values(crit, x, missing, diff), strict=True))
        g = np.array([known[i] for i in rest])
    slopes = _outward(crit, x, f, boundary, outward).values()
    projected = max([float(np.max(np.abs(g), initial=0.0))] + [max(-s, 0.0) for s in slopes])
    if not free:
        return free, np.zeros((0, 0)), projected
    if result is not None and set(free) <= set(result.coords):
        where = [result.coords.index(i) for i in free]
        hess = result.hess[np.ix_(where, where)]
        # a Hessian from secant updates or from values is an approximation: where it
        # is not positive definite, the check asks the gradient's differences
        if not crit.exact or _positive_definite(hess):
            return free, hess, projected
    if crit.exact:
        return (
            free,
            hessian_from_gradient(crit, x, crit.gradient(x)[1][free], free, diff),
            projected,
        )
    return free, curvature(crit, x, f, free, diff)[1], projected
