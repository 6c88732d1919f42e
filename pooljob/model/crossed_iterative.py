"""REML for crossed random intercepts at scale: AI-REML with stochastic traces.

For ``y = Xβ + Σ_k Z_k u_k + e`` (:mod:`pooljob.model.crossed_system`) the
REML score equations in ``φ = (σ², σ_0², …, σ_{K−1}²)`` are (``T_k = tr C^{kk}``,
the trace of grouping k's block of ``C⁻¹``; ``s = (β̂, û)`` solves
``C s = W'y``; ``e = y − W s``; ``λ_k = σ²/σ_k²``)::

    ∂ℓ/∂σ_k² = −½ [ q_k/σ_k² − T_k σ²/σ_k⁴ − û_k'û_k/σ_k⁴ ]
    ∂ℓ/∂σ²   = −½ [ (n − p − Σ q_k + Σ λ_k T_k)/σ² − e'e/σ⁴ ]

Everything but ``T_k`` is exact up to the solver's tolerance.  ``T_k`` is
computed exactly, from one unit vector per level, for a grouping of at most
``EXACT_LEVELS`` levels, and otherwise estimated by Hutchinson's estimator,
``T_k ≈ mean_r v_{r,k}'(C⁻¹v_r)_k``
with Rademacher probes ``v_r`` (fixed for the whole fit, so the equations
are one deterministic function and the iteration converges to its root),
all probes solved together.  The steps are Fisher scoring with the average
information (Gilmour, Thompson & Cullis 1995)::

    AI_ij = ½ h_i'P h_j,   h_k = Z_k û_k/σ_k²,  h_e = e/σ²,
    h_i'P h_j = (h_i'h_j − (W'h_i)'C⁻¹(W'h_j))/σ²

computed from cell sums and K + 1 more solves.  The Monte Carlo error of
the trace estimates is propagated to ``φ̂`` through the same equations:
``Cov_MC(φ̂) ≈ AI⁻¹ G Σ_T G' AI⁻¹`` with ``G = ∂score/∂T`` and ``Σ_T`` the
sample covariance of the per-probe traces divided by the number of probes.
The start is the method of moments on the response (:func:`moment_start`).
Pure numerics: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pooljob.model.crossed_system import Array, Blocked, CrossedCells, Equations, dot

#: Rademacher probes for the traces.
PROBES = 32
#: Relative residual of the probes' and the information's solves.
PROBE_TOL = 1e-6
#: Relative residual of Henderson's equations for β̂ and the BLUPs at the end.
SOLVE_TOL = 1e-10
#: The iteration stops when no component changes by more than this, relatively.
STEP_TOL = 1e-6
#: A variance component that reaches ``BOUNDARY × σ²`` is held there (it is
#: published as 0) while its score points outward, and the others are fitted.
BOUNDARY = 1e-10
#: Most Fisher-scoring steps.
MAX_STEPS = 50
#: Seed of the probes.
SEED = 20240613
#: Groupings with at most this many levels get their trace exactly, from one
#: unit vector per level, instead of from the probes ...
EXACT_LEVELS = 200
#: ... while those columns take at most this many bytes (one double per level
#: of every grouping per column).
EXACT_BYTES = 2**28


def exact_groupings(levels: list[int]) -> list[int]:
    """The groupings whose traces are computed exactly: the smallest first, within the limits."""
    out: list[int] = []
    width = 0
    for j in sorted(range(len(levels)), key=lambda j: levels[j]):
        if levels[j] > EXACT_LEVELS or 8 * (width + levels[j]) * sum(levels) > EXACT_BYTES:
            break
        out.append(j)
        width += levels[j]
    return sorted(out)


@dataclass(frozen=True)
class IterativeFit:
    """An AI-REML fit by PCG and stochastic traces.

    Attributes
    ----------
    sigma2 : float
        Residual variance σ².
    variances : ndarray, (K,)
        ``σ_k²`` per grouping (the solver's order).
    beta : ndarray, (p,)
    vcov : ndarray, (p, p)
        ``σ² [C⁻¹]_ββ = σ²(X'V*⁻¹X)⁻¹``, by p solves.
    u : list of ndarray
        The BLUPs per grouping.
    cond_var : list of ndarray
        The lower bound ``σ²/(n_l + λ_k)`` of each level's conditional variance.
    mc_se : ndarray, (K + 1,)
        Monte Carlo standard errors of ``(σ², σ_0², …)`` from the trace estimates.
    stat_se : ndarray, (K + 1,)
        Asymptotic standard errors from the average information.
    steps : int
    converged : bool
    residual : float
        Relative residual of Henderson's equations at the final solve.
    iterations : int
        PCG iterations of all solves.
    start : ndarray
        The moment estimates the iteration started from.
    score : ndarray
        The REML score at the end (with the estimated traces).
    exact : list of int
        The groupings whose traces were computed exactly (:func:`exact_groupings`).
    """

    sigma2: float
    variances: Array
    beta: Array
    vcov: Array
    u: list[Array]
    cond_var: list[Array]
    mc_se: Array
    stat_se: Array
    steps: int
    converged: bool
    residual: float
    iterations: int
    start: Array
    score: Array
    exact: list[int]


def moment_start(eq: Equations) -> Array:
    """Method-of-moments ``(σ², σ_0², …)`` from within-level sums of squares of y.

    Henderson's method I on the response, ignoring ``X`` (Gao & Owen 2017)::

        E[Σ_l Σ (y − ȳ_l)²] = Σ_{j≠k} σ_j² (N − Σ_l Σ_m n_lm²/n_l) + σ²(N − q_k)
        E[Σ (y − ȳ)²]       = Σ_j σ_j² (N − Σ_m n_m²/N) + σ²(N − 1)

    solved as a linear system; each value is floored at 1e-3 of the total
    variance (the iteration only needs a positive start).
    """
    c = eq.cells
    n_total = c.nobs
    k = eq.k
    ybar = float(c.sy.sum()) / n_total
    total = c.yty - n_total * ybar**2
    a = np.zeros((k + 1, k + 1))
    rhs = np.zeros(k + 1)
    for i in range(k):
        rhs[i] = c.yty - float(np.sum(eq.zy[i] ** 2 / eq.counts[i]))
        a[i, 0] = n_total - eq.levels[i]
        for j in range(k):
            if j != i:
                m = eq.pairs[(i, j)]
                rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
                a[i, 1 + j] = n_total - float(np.sum(m.data**2 / eq.counts[i][rows]))
    rhs[k] = total
    a[k, 0] = n_total - 1
    for j in range(k):
        a[k, 1 + j] = n_total - float(np.sum(eq.counts[j] ** 2)) / n_total
    try:
        phi = np.linalg.solve(a, rhs)
    except np.linalg.LinAlgError:
        phi = np.full(k + 1, total / n_total / (k + 1))
    floor = 1e-3 * max(total / n_total, 1e-300)
    return np.asarray(np.maximum(phi, floor), dtype=np.float64)


def _probes(eq: Equations, r: int, seed: int) -> Blocked:
    rng = np.random.default_rng(seed)
    u = [rng.choice(np.array([-1.0, 1.0]), size=(q, r)) for q in eq.levels]
    return u, np.zeros((eq.p, r))


def _units(eq: Equations, exact: list[int]) -> Blocked:
    """Unit vectors on every level of the groupings in ``exact``: one column each."""
    width = sum(eq.levels[j] for j in exact)
    u = [np.zeros((q, width)) for q in eq.levels]
    start = 0
    for j in exact:
        u[j][:, start : start + eq.levels[j]] = np.eye(eq.levels[j])
        start += eq.levels[j]
    return u, np.zeros((eq.p, width))


def _columns(v: Blocked, cols: slice) -> Blocked:
    return [a[:, cols] for a in v[0]], v[1][:, cols]


def _stack(parts: list[Blocked]) -> Blocked:
    k = len(parts[0][0])
    return (
        [np.hstack([p[0][i] for p in parts]) for i in range(k)],
        np.hstack([p[1] for p in parts]),
    )


def _z_times(eq: Equations, k: int, v: Array) -> Blocked:
    """``W'Z_k v`` for a vector ``v`` on grouping k's levels: one column."""
    u = []
    for a in range(eq.k):
        u.append((eq.counts[k] * v if a == k else eq.pairs[(a, k)] @ v)[:, None])
    return u, (eq.zx[k].T @ v)[:, None]


def _state(eq: Equations, sol: Blocked) -> tuple[float, Blocked]:
    """``e'e`` and ``W'e`` at the solution ``s``: ``y'y − 2 s'W'y + s'W'W s``."""
    rhs = eq.rhs()
    wws = eq.gram(sol)
    ee = eq.yty_c - 2.0 * float(dot(sol, rhs)[0]) + float(dot(sol, wws)[0])
    return ee, ([a - b for a, b in zip(rhs[0], wws[0], strict=True)], rhs[1] - wws[1])


def fit_iterative(
    cells: CrossedCells,
    probes: int = PROBES,
    seed: int = SEED,
    max_steps: int = MAX_STEPS,
) -> IterativeFit:
    """AI-REML for crossed random intercepts (module docstring), then β̂, û at the end."""
    eq = Equations(cells)
    k, p = eq.k, eq.p
    n_total = cells.nobs
    q = np.array(eq.levels, dtype=np.float64)
    start = moment_start(eq)
    phi = start.copy()
    exact = exact_groupings(eq.levels)
    probe = _probes(eq, probes, seed)
    for j in exact:
        probe[0][j][:] = 0.0
    units = _units(eq, exact)
    probe = _stack([probe, units])
    guess: Blocked | None = None
    mme_guess: Blocked | None = None
    iterations = 0
    converged = False
    steps = 0
    ai = np.eye(k + 1)
    score = np.zeros(k + 1)
    samples = np.zeros((probes, k))
    bound = np.zeros(k + 1, dtype=bool)
    for count in range(1, max_steps + 1):
        steps = count
        sigma2, var = phi[0], phi[1:]
        system = eq.at(sigma2 / var)
        sol, _, its = system.solve(eq.rhs(), np.array([SOLVE_TOL]), mme_guess)
        mme_guess = sol
        iterations += its
        ee, we = _state(eq, sol)
        u = sol[0]
        h = [_z_times(eq, j, u[j][:, 0] / var[j]) for j in range(k)]
        h.append(([a / sigma2 for a in we[0]], we[1] / sigma2))
        rhs = _stack([*h, probe])
        tol = np.full(k + 1 + probe[1].shape[1], PROBE_TOL)
        x, _, its = system.solve(rhs, tol, guess)
        guess = x
        iterations += its
        # the traces
        xp = _columns(x, slice(k + 1, None))
        for j in range(k):
            quad = np.einsum("ij,ij->j", probe[0][j], xp[0][j])
            # exact traces (unit vectors) are the same number in every probe's sample
            samples[:, j] = quad[probes:].sum() if j in exact else quad[:probes]
        t = samples.mean(axis=0)
        # h_i'h_j from cell sums
        hh = np.zeros((k + 1, k + 1))
        for i in range(k):
            for j in range(i, k):
                wi = eq.counts[i] * u[i][:, 0] if i == j else eq.pairs[(i, j)] @ u[j][:, 0]
                hh[i, j] = hh[j, i] = float(u[i][:, 0] @ wi) / (var[i] * var[j])
            hh[i, k] = hh[k, i] = float(u[i][:, 0] @ u[i][:, 0]) / var[i] ** 2
        hh[k, k] = ee / sigma2**2
        xh = _columns(x, slice(0, k + 1))
        quad = _cross(_columns(rhs, slice(0, k + 1)), xh)
        info = 0.5 * (hh - quad) / sigma2
        # reorder to φ = (σ², σ_0², …): h index k is σ²
        order = [k, *range(k)]
        ai = info[np.ix_(order, order)]
        ai = 0.5 * (ai + ai.T)
        lam = sigma2 / var
        uu = np.array([float(u[j][:, 0] @ u[j][:, 0]) for j in range(k)])
        s_var = -0.5 * (q / var - t * sigma2 / var**2 - uu / var**2)
        s_e = -0.5 * ((n_total - p - q.sum() + float(lam @ t)) / sigma2 - ee / sigma2**2)
        score = np.concatenate([[s_e], s_var])
        # a component held at the boundary is released when its score points inward
        bound &= ~(score > 0.0)
        free = ~bound
        step = np.zeros(k + 1)
        step[free] = np.linalg.solve(ai[np.ix_(free, free)], score[free])
        new = phi + step
        floor = BOUNDARY * new[0] if new[0] > 0 else BOUNDARY * phi[0]
        new[0] = max(new[0], 0.5 * phi[0])
        hit = np.zeros(k + 1, dtype=bool)
        hit[1:] = new[1:] <= floor
        new[hit] = floor
        bound |= hit
        change = float(np.max(np.abs(new - phi)[~bound] / phi[~bound]))
        phi = new
        if change < STEP_TOL:
            converged = True
            break
    sigma2, var = phi[0], phi[1:]
    at_bound = bound[1:]
    lam = sigma2 / var
    beta, vcov, u_hat, rel, its = solve_at(eq, sigma2, var, mme_guess)
    iterations += its
    cond = [sigma2 / (eq.counts[j] + lam[j]) for j in range(k)]
    # Monte Carlo error of the traces, propagated
    cov_t = np.atleast_2d(np.cov(samples, rowvar=False)) / probes
    g = np.zeros((k + 1, k))
    for j in range(k):
        g[0, j] = -0.5 * lam[j] / sigma2
        g[1 + j, j] = 0.5 * sigma2 / var[j] ** 2
    free = ~bound
    ai_inv = np.zeros((k + 1, k + 1))
    ai_inv[np.ix_(free, free)] = np.linalg.inv(ai[np.ix_(free, free)])
    mc = ai_inv @ g @ cov_t @ g.T @ ai_inv.T
    # at the boundary: published as 0, as lme4 does
    for j in [int(i) for i in np.flatnonzero(at_bound)]:
        u_hat[j] = np.zeros_like(u_hat[j])
        cond[j] = np.zeros_like(cond[j])
    return IterativeFit(
        sigma2=float(sigma2),
        variances=np.where(at_bound, 0.0, var).astype(np.float64),
        beta=beta,
        vcov=vcov,
        u=u_hat,
        cond_var=cond,
        mc_se=np.sqrt(np.maximum(np.diag(mc), 0.0)),
        stat_se=np.sqrt(np.maximum(np.diag(ai_inv), 0.0)),
        steps=steps,
        converged=converged,
        residual=rel,
        iterations=iterations,
        start=start,
        score=score,
        exact=exact,
    )


def solve_at(
    eq: Equations, sigma2: float, variances: Array, guess: Blocked | None = None
) -> tuple[Array, Array, list[Array], float, int]:
    """β̂, ``Var(β̂) = σ²[C⁻¹]_ββ`` and the BLUPs at given components, to ``SOLVE_TOL``.

    One block solve of ``C [s, B] = [W'(y − c·1), (0, I_p)]`` (the response's
    mean ``c`` moved onto the intercept, :meth:`Equations.rhs`).  Returns β̂, its
    covariance, the BLUPs per grouping (the solver's order), the relative
    residual ``‖C s − W'y‖/‖W'y‖`` of the BLUPs' column, and the PCG
    iterations.
    """
    p = eq.p
    system = eq.at(sigma2 / np.asarray(variances, dtype=np.float64))
    unit: Blocked = ([np.zeros((ql, p)) for ql in eq.levels], np.eye(p))
    rhs = _stack([eq.rhs(), unit])
    start = None
    if guess is not None:
        start = _stack([guess, ([np.zeros((ql, p)) for ql in eq.levels], np.zeros((p, p)))])
    sol, rel, its = system.solve(rhs, np.full(p + 1, SOLVE_TOL), start)
    vcov = sigma2 * sol[1][:, 1:]
    return (
        sol[1][:, 0] + eq.centre * eq.unit,
        0.5 * (vcov + vcov.T),
        [a[:, 0].copy() for a in sol[0]],
        float(rel[0]),
        its,
    )


def _cross(a: Blocked, b: Blocked) -> Array:
    """``a'b`` over all blocks: (columns of a, columns of b)."""
    out = a[1].T @ b[1]
    for x, y in zip(a[0], b[0], strict=True):
        out = out + x.T @ y
    return np.asarray(out, dtype=np.float64)
