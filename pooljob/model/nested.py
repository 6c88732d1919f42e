"""Exact REML/ML criterion of nested Gaussian random-intercept models.

The model is ``y = μ + b₁[g₁] + b₂[g₂] + … + b_L[g_L] + ε`` where the
groupings ``g₁ ⊃ g₂ ⊃ … ⊃ g_L`` form a tree (level 0 is the top, level L-1
the leaves that hold the rows), ``b_ℓ ~ N(0, τ²_ℓ)`` and ``ε ~ N(0, σ²)``.
With ``r_ℓ = τ²_ℓ / σ²`` (lme4's ``θ_ℓ = √r_ℓ``) the likelihood factorises up
the tree.  In units of σ², every node carries a pseudo-observation ``(m, v)``
of its own mean: a leaf has ``m = ȳ``, ``v = 1/n``; a node whose children
``i`` carry ``(m_i, v_i)`` has ``u_i = v_i + r_child``, ``W = Σ 1/u_i``,
``m = Σ (m_i/u_i) / W``, ``v = 1/W`` and contributes
``Σ log u_i + log W`` to the log-determinant and ``Σ (m_i − m)²/u_i`` to the
penalised residual sum of squares ``q``.  With ``S = Σ_j S_j`` the pooled
within-group sum of squares::

    D(r) = Σ_leaves log n_j + Σ_nodes (Σ_i log u_i + log W)  [− log W_root for ML]
    q(r) = S + Σ_nodes Σ_i (m_i − m)² / u_i
    −2ℓ(r) = D(r) + ν (1 + log(2π q(r) / ν)),   ν = N − 1 (REML) or N (ML)

with ``σ̂² = q/ν`` profiled out.  For one grouping this is lme4's
``Σ log(1 + n_j r) + log Σ w_j + (N − 1)(1 + log 2πσ̂²)``.  Every step is a
``numpy.bincount`` over parent codes: cost linear in the number of groups.

This module is pure numerics: it imports no I/O, DuckDB or polars.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Codes = NDArray[np.int64]


@dataclass(frozen=True)
class NestedStats:
    """Sufficient statistics of a nested random-intercept model.

    Attributes
    ----------
    n : ndarray of float, shape (G,)
        Rows per leaf group (all ≥ 1).
    mean : ndarray of float, shape (G,)
        Mean of the (centred) response per leaf group.
    within_ss : ndarray of float, shape (G,)
        Within-group sum of squares ``S_j = Σ_i (y_ij − ȳ_j)²``.
    parents : tuple of ndarray of int
        ``parents[ℓ][k]`` is the code, at level ``ℓ − 1``, of the parent of
        group ``k`` at level ``ℓ``; ``parents[0]`` is all zeros (the root).
        The last level is the leaves.
    count : ndarray or None
        With observation weights ``w`` (residual variance ``σ²/w``): rows
        per leaf; ``n`` is then ``Σ w``, ``mean`` the weighted mean and
        ``within_ss`` ``Σ w (y − ȳ)²``, which is the model of the rows scaled
        by ``√w``.  ``N`` in ``ν`` is the number of rows.
    log_weight : float
        ``Σ log w`` over the rows (0 unweighted): subtracted from the
        criterion of the scaled rows to give lme4's (:func:`fit_nested`).
    """

    n: Array
    mean: Array
    within_ss: Array
    parents: tuple[Codes, ...]
    count: Array | None = None
    log_weight: float = 0.0

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of groups at each level, top first."""
        return tuple(len(p) for p in self.parents)

    @property
    def nobs(self) -> float:
        """Total number of rows ``N``."""
        return float((self.n if self.count is None else self.count).sum())


@dataclass(frozen=True)
class _Level:
    """Forward-pass quantities of one level, kept for gradients and smoothing."""

    m: Array  # children's pseudo-observations
    v: Array
    w: Array  # 1 / (v + r)
    big_w: Array  # per parent: Σ w
    d: Array  # m − M[parent]


@dataclass(frozen=True)
class Upward:
    """Result of the upward pass for one value of ``r``.

    Attributes
    ----------
    logdet : float
        ``D(r)`` without the ML root term.
    q : float
        Penalised residual sum of squares in units of σ².
    root_mean : float
        GLS estimate ``μ̂`` of the intercept.
    root_weight : float
        ``W_root``; ``Var(μ̂) = σ² / W_root``.
    """

    logdet: float
    q: float
    root_mean: float
    root_weight: float
    levels: tuple[_Level, ...]


def _sum_by(codes: Codes, weights: Array, size: int) -> Array:
    """Per-code sums ``Σ_{i: codes_i = k} weights_i`` (one ``bincount``)."""
    return np.bincount(codes, weights, minlength=size).astype(np.float64, copy=False)


def upward(stats: NestedStats, r: Array) -> Upward:
    """Run the upward pass: pseudo-observations from the leaves to the root.

    Parameters
    ----------
    stats : NestedStats
    r : ndarray, shape (L,)
        Variance ratios ``τ²_ℓ / σ²``, top level first, all ≥ 0.
    """
    m = stats.mean
    v = 1.0 / stats.n
    logdet = float(np.log(stats.n).sum())
    q = float(stats.within_ss.sum())
    levels: list[_Level] = []
    for lev in range(len(stats.parents) - 1, -1, -1):
        parent = stats.parents[lev]
        n_parent = len(stats.parents[lev - 1]) if lev > 0 else 1
        u = v + r[lev]
        w = 1.0 / u
        big_w = _sum_by(parent, w, n_parent)
        big_m = _sum_by(parent, w * m, n_parent) / big_w
        d = m - big_m[parent]
        q += float(np.dot(w * d, d))
        logdet += float(np.log(u).sum() + np.log(big_w).sum())
        levels.append(_Level(m=m, v=v, w=w, big_w=big_w, d=d))
        m, v = big_m, 1.0 / big_w
    levels.reverse()
    return Upward(
        logdet=logdet,
        q=q,
        root_mean=float(m[0]),
        root_weight=float(1.0 / v[0]),
        levels=tuple(levels),
    )


def moment_start(stats: NestedStats) -> Array:
    """A starting θ for the optimizer, from moments (one pass up the tree).

    With ``σ̂² = S / (N − G)`` (the pooled within-group variance) and, at
    each level from the leaves up, children with means ``m_i`` and sampling
    variances ``v_i`` (in units of σ²; ``1/n`` for a leaf) around the
    unweighted means ``m̄_p`` of their parents (``k_p`` children each)::

        r = Σ (m_i − m̄_p)² / (σ̂² Σ_p (k_p − 1)) − mean(v)

    since ``E (m_i − m̄_p)² = (1 − 1/k_p)(τ² + σ² v_i)``; the parent then
    carries ``m̄_p`` with variance ``Σ_i (v_i + r) / k_p²``.  Returns
    ``θ = √max(r, 0.01)`` (θ = 0 would stall the search: the θ-gradient
    vanishes there), and 1 where a level has one child per parent or the
    data give no within-group variance.
    """
    n_levels = len(stats.parents)
    r = np.ones(n_levels)
    within_dof = stats.nobs - len(stats.n)
    sigma2 = float(stats.within_ss.sum()) / within_dof if within_dof > 0 else 0.0
    if not sigma2 > 0.0:
        return r
    m = stats.mean
    v = 1.0 / stats.n
    for lev in range(n_levels - 1, -1, -1):
        parent = stats.parents[lev]
        size = len(stats.parents[lev - 1]) if lev > 0 else 1
        k = _sum_by(parent, np.ones(len(parent)), size)
        m_bar = _sum_by(parent, m, size) / k
        spread = float(np.sum((m - m_bar[parent]) ** 2))
        pairs = float(np.sum(k - 1.0))
        if pairs > 0.0:
            r[lev] = spread / (sigma2 * pairs) - float(v.mean())
        v = _sum_by(parent, v + r[lev], size) / k**2
        m = m_bar
    return np.asarray(np.sqrt(np.maximum(r, 0.01)), dtype=np.float64)


def dof(stats: NestedStats, reml: bool) -> float:
    """Degrees of freedom ν of the profiled residual variance: N − 1 or N."""
    return stats.nobs - (1.0 if reml else 0.0)


def criterion(up: Upward, nu: float, reml: bool) -> float:
    """Profiled −2 log-likelihood (ML) or lme4's REML criterion.

    ``D + ν (1 + log(2π q / ν))`` with ``D`` the log-determinant of the
    upward pass, less ``log W_root`` for ML (the density of ``μ̂`` at ``μ̂``).
    """
    d = up.logdet - (0.0 if reml else np.log(up.root_weight))
    if up.q <= 0.0:
        return float("-inf")
    return float(d + nu * (1.0 + np.log(2.0 * np.pi * up.q / nu)))


def objective(stats: NestedStats, theta: Array, reml: bool) -> float:
    """Criterion as a function of lme4's ``θ = √r`` (pure; no state)."""
    r = np.asarray(theta, dtype=np.float64) ** 2
    return criterion(upward(stats, r), dof(stats, reml), reml)


def objective_and_gradient(stats: NestedStats, theta: Array, reml: bool) -> tuple[float, Array]:
    """Criterion and its exact gradient with respect to ``θ``: ``∂/∂θ = 2θ ∂/∂r``."""
    theta = np.asarray(theta, dtype=np.float64)
    f, grad_r = objective_and_gradient_r(stats, theta**2, reml)
    return f, 2.0 * theta * grad_r


def objective_and_gradient_r(stats: NestedStats, r: Array, reml: bool) -> tuple[float, Array]:
    """Criterion and its exact gradient with respect to the ratios ``r = θ²``.

    The gradient is reverse-mode differentiation of the upward pass.  With
    adjoints ``ḡ_M``, ``ḡ_V`` of a parent's ``(m, v)`` and ``γ = ν/q``, a child
    ``i`` gets ``ḡ_w = 1/W + γ d_i² + ḡ_M d_i/W − ḡ_V/W²``,
    ``ḡ_u = w_i − w_i² ḡ_w`` (its ``ḡ_v``; summed, ``∂/∂r``) and
    ``ḡ_m = 2γ w_i d_i + ḡ_M w_i/W``; the root starts from ``ḡ_M = 0`` and
    ``ḡ_V = W_root`` for ML (0 for REML).  Unlike the gradient in θ, this
    one is informative on the boundary ``r = 0``.
    """
    up = upward(stats, np.asarray(r, dtype=np.float64))
    nu = dof(stats, reml)
    f = criterion(up, nu, reml)
    gamma = nu / up.q
    g_m = np.zeros(1)
    g_v = np.full(1, 0.0 if reml else up.root_weight)
    grad_r = np.zeros(len(stats.parents))
    for lev, level in enumerate(up.levels):
        parent = stats.parents[lev]
        inv_w = 1.0 / level.big_w
        a = inv_w - g_v * inv_w**2  # per parent: ḡ_w = a + γ d² + b d
        b = g_m * inv_w
        w2 = level.w**2
        w2d = w2 * level.d
        # Σ ḡ_u = Σ w − Σ w² ḡ_w, the per-parent terms summed over parents first
        size = len(inv_w)
        grad_r[lev] = float(level.w.sum()) - (
            float(np.dot(a, _sum_by(parent, w2, size)))
            + gamma * float(np.dot(w2d, level.d))
            + float(np.dot(b, _sum_by(parent, w2d, size)))
        )
        if lev + 1 < len(up.levels):  # the leaves' own adjoints are not needed
            g_w = a[parent] + gamma * level.d**2 + b[parent] * level.d
            g_v = level.w - w2 * g_w
            g_m = 2.0 * gamma * level.w * level.d + b[parent] * level.w
    return f, grad_r


@dataclass(frozen=True)
class Smoothed:
    """Posterior summaries of every node, in units of σ² for variances.

    Attributes
    ----------
    mean : tuple of ndarray
        Per level, ``E[μ + b₁ + … + b_ℓ | y]``: the partially pooled mean.
    var : tuple of ndarray
        Per level, its posterior variance (over σ²).
    effect : tuple of ndarray
        Per level, the conditional mode of the node's own effect ``b_ℓ``.
    effect_var : tuple of ndarray
        Per level, ``Var(b_ℓ | y)`` (over σ²).
    pull : tuple of ndarray
        Per level, the weight ``v/(v + r)`` of the parent in the node's
        estimate (``σ²/(σ² + n τ²)`` for a leaf): 0 keeps the node's own
        data, 1 pools it fully to its parent.
    """

    mean: tuple[Array, ...]
    var: tuple[Array, ...]
    effect: tuple[Array, ...]
    effect_var: tuple[Array, ...]
    pull: tuple[Array, ...]


def downward(stats: NestedStats, up: Upward, r: Array, root_var: float) -> Smoothed:
    """Smooth down the tree: the posterior of every node given all the data.

    A child with pseudo-observation ``(m, v)`` below a parent whose posterior
    is ``N(E_p, V_p)`` has, with ``a = v/(v + r)``::

        E = a E_p + (1 − a) m,          V = r v/(r + v) + a² V_p
        b = E − E_p,                    Var(b) = r v/(r + v) + (1 − a)² V_p

    ``root_var = 0`` treats ``μ`` as known at ``μ̂`` (lme4's ``ranef`` and
    ``condVar``); ``root_var = 1/W_root`` adds the uncertainty of ``μ̂``
    (Henderson's prediction error variance).
    """
    e_p = np.full(1, up.root_mean)
    v_p = np.full(1, root_var)
    means, variances, effects, effect_vars, pulls = [], [], [], [], []
    for lev, level in enumerate(up.levels):
        parent = stats.parents[lev]
        a = level.v / (level.v + r[lev])
        own = r[lev] * a
        e = a * e_p[parent] + (1.0 - a) * level.m
        v = own + a**2 * v_p[parent]
        effects.append(e - e_p[parent])
        effect_vars.append(own + (1.0 - a) ** 2 * v_p[parent])
        means.append(e)
        variances.append(v)
        pulls.append(a)
        e_p, v_p = e, v
    return Smoothed(
        mean=tuple(means),
        var=tuple(variances),
        effect=tuple(effects),
        effect_var=tuple(effect_vars),
        pull=tuple(pulls),
    )


def level_totals(stats: NestedStats) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """Rows (weight sums, when weighted) and response sums per group at every level."""
    n, s = stats.n, stats.n * stats.mean
    ns: list[Array] = []
    ss: list[Array] = []
    for lev in range(len(stats.parents) - 1, -1, -1):
        ns.append(n)
        ss.append(s)
        if lev > 0:
            k = len(stats.parents[lev - 1])
            n = _sum_by(stats.parents[lev], n, k)
            s = _sum_by(stats.parents[lev], s, k)
    return tuple(reversed(ns)), tuple(reversed(ss))


@dataclass(frozen=True)
class GroupMeans:
    """Per level, the mean of the fitted values over each group's rows.

    Attributes
    ----------
    mean : tuple of ndarray
        ``E[F_g | y]`` with ``F_g = Σ_leaves (n_l / n_g) T_l``: the row-weighted
        mean of the node values ``T_l = μ + b₁ + … + b_L`` of the leaves below
        ``g``, i.e. the mean over the group's rows of the fitted values.
    var : tuple of ndarray
        ``Var(F_g | y)`` over σ²: Henderson's prediction error variance of
        ``F_g`` (with the uncertainty of ``μ̂`` when ``smoothed`` has it).
    """

    mean: tuple[Array, ...]
    var: tuple[Array, ...]


def group_means(stats: NestedStats, up: Upward, r: Array, smoothed: Smoothed) -> GroupMeans:
    """Means of the fitted values over each group's rows, and their prediction error.

    Given its parent's value ``T_p``, a child's subtree is independent of the
    rest of the tree, and (with ``a = v/(v + r)``, ``ω = r v/(r + v)`` of the
    downward pass) ``E[T_c | T_p, y] = a T_p + (1 − a) m``, ``Var = ω``.  So by
    induction from the leaves (``α = 1``, ``V = 0``), with ``w_c = n_c/n_p``::

        E[F_p | T_p, y] = α_p T_p + const,   α_p = Σ_c w_c α_c a_c
        Var(F_p | T_p, y) = V_p = Σ_c w_c² (V_c + α_c² ω_c)

    and ``Var(F_g | y) = α_g² Var(T_g | y) + V_g``.  One ``bincount`` per level.
    """
    n_levels = len(stats.parents)
    n = stats.n
    mean = smoothed.mean[-1]
    alpha = np.ones_like(n)
    big_v = np.zeros_like(n)
    means: list[Array] = [mean]
    variances: list[Array] = [smoothed.var[-1]]
    for lev in range(n_levels - 1, 0, -1):
        parent = stats.parents[lev]
        size = len(stats.parents[lev - 1])
        level = up.levels[lev]
        a = level.v / (level.v + r[lev])
        own = r[lev] * a
        n_parent = _sum_by(parent, n, size)
        w = n / n_parent[parent]
        mean = _sum_by(parent, w * mean, size)
        new_alpha = _sum_by(parent, w * alpha * a, size)
        big_v = _sum_by(parent, w**2 * (big_v + alpha**2 * own), size)
        alpha, n = new_alpha, n_parent
        means.append(mean)
        variances.append(alpha**2 * smoothed.var[lev - 1] + big_v)
    return GroupMeans(mean=tuple(reversed(means)), var=tuple(reversed(variances)))
