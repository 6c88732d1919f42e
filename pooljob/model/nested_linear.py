"""Exact posterior variances of linear combinations of a nested model's effects.

For poststratification of a Gaussian nested random-intercept model
(:mod:`pooljob.model.nested`): given variance ratios ``r`` and ``σ²``, the
posterior of ``(μ, b)`` is normal, and along the tree it is Markov.  With
``T_node = μ + b₁ + … + b_ℓ`` (the node value) and, from the downward pass,
``a = v/(v + r)``, ``ω = r v/(r + v)``::

    T_root = μ ~ N(μ̂, σ²/W_root),   T_c | T_parent, y ~ N(a T_p + (1 − a) m, ω σ²)

A combination ``L = c_μ μ + Σ_nodes c_node b_node`` is first written on the
node values (``b_node = T_node − T_parent``): ``L = Σ β_node T_node`` with
``β_node = c_node − Σ_children c_child`` (and ``c_μ − Σ c_top`` at the root).
Then, from the leaves (``A = β``, ``V = 0``), given its parent each subtree's
sum ``S`` has ``E[S | T_p] = A_p T_p + const`` and ``Var(S | T_p) = V_p``::

    A_p = β_p + Σ_c a_c A_c,      V_p = Σ_c (V_c + A_c² ω_c)

and ``Var(L | y) = σ² (V_root + A_root² / W_root)``: Henderson's prediction
error variance ``σ² cᵀ M⁻¹ c``, exactly, in one pass of ``bincount`` per level.

This module is pure numerics: no I/O.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from pooljob.model.nested import NestedStats, Upward

Array = NDArray[np.float64]

#: Node values × combinations held at a time.
CHUNK_ENTRIES = 4_000_000


def _sum_rows(codes: NDArray[np.int64], values: Array, size: int) -> Array:
    """Per code, the sum of the rows of ``values`` (shape (n, G)) with that code."""
    n = len(codes)
    parent = sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(size, n))
    return np.asarray(parent @ values, dtype=np.float64)


def linear_variance(
    stats: NestedStats,
    up: Upward,
    r: Array,
    sigma2: float,
    c_root: Array,
    c_levels: list[sp.csr_matrix],
) -> Array:
    """``Var(c_μ μ + Σ c_node b_node | y)`` for G combinations.

    Parameters
    ----------
    c_root : ndarray, shape (G,)
        Coefficients of ``μ``.
    c_levels : list of sparse, shape (groups at level ℓ, G)
        Coefficients of each level's effects, top level first.
    """
    g_total = c_root.shape[0]
    nodes = sum(stats.sizes) + 1
    step = max(1, CHUNK_ENTRIES // nodes)
    out = np.zeros(g_total)
    n_levels = len(stats.parents)
    for start in range(0, g_total, step):
        cols = slice(start, min(g_total, start + step))
        c = [np.asarray(m[:, cols].toarray(), dtype=np.float64) for m in c_levels]
        root = np.asarray(c_root[cols], dtype=np.float64)[None, :]
        # coefficients on the node values: own minus the children's
        beta = [ck.copy() for ck in c]
        for lev in range(n_levels):
            size = len(stats.parents[lev - 1]) if lev > 0 else 1
            below = _sum_rows(stats.parents[lev], c[lev], size)
            if lev > 0:
                beta[lev - 1] -= below
            else:
                root = root - below
        big_a = beta[-1]
        big_v = np.zeros_like(big_a)
        for lev in range(n_levels - 1, -1, -1):
            parent = stats.parents[lev]
            size = len(stats.parents[lev - 1]) if lev > 0 else 1
            level = up.levels[lev]
            a = (level.v / (level.v + r[lev]))[:, None]
            own = r[lev] * a
            new_v = _sum_rows(parent, big_v + big_a**2 * own, size)
            new_a = _sum_rows(parent, a * big_a, size)
            big_a = new_a + (beta[lev - 1] if lev > 0 else root)
            big_v = new_v
        out[cols] = sigma2 * (big_v[0] + big_a[0] ** 2 / up.root_weight)
    return out
