"""The Hessian of the profiled criterion for random intercepts, from one gradient evaluation.

Newton's method needs ``∂²f/∂θ_k∂θ_l``; by differences it costs
``n_θ(n_θ + 1)/2`` more factorisations.  For random intercepts (every
``T_k = θ_k``, all ``θ_k > 0``) it follows from what the gradient evaluation
of :mod:`pooljob.model.profiled` already holds: the factor ``L_S``, the
inverse ``Σ`` of the extended Schur complement and the conditional modes.

With ``Ω = Λ̃ G Λ̃ + J`` (``G = [Z X]'[Z X]``, ``Λ̃ = diag(Λ, I_p)``, ``J``
the identity on the random effects; for ML without the ``X`` rows),
``P_k`` the projection on block k's effects, ``q_k`` its levels,
``Σ = Ω⁻¹`` and ``t_k = tr(P_k Σ)``, the relation ``Λ̃GΛ̃ = Ω − J`` gives
``Ω_k = (P_k(Ω − J) + (Ω − J)P_k)/θ_k`` and ``Ω_kl = (P_k(Ω − J)P_l +
P_l(Ω − J)P_k)/(θ_kθ_l)``; in ``∂² log|Ω| = tr(ΣΩ_kl) − tr(ΣΩ_kΣΩ_l)`` the
terms ``tr(Σ P_k Ω P_l)`` cancel and what is left is

    θ_kθ_l ∂² log|Ω| / ∂θ_k∂θ_l = 6δ_kl t_k − 2δ_kl q_k − 4‖Σ_kl‖²_F

with ``Σ_kl`` the block of ``Σ`` of block k's rows and block l's columns.
With ``x = [u; β]`` the
solution, ``v_k = P_k x`` and ``Σ_f`` the inverse with the ``X`` rows
(either method), the penalised residual sum of squares ``r²`` has
``r²_k = −2‖u_k‖²/θ_k`` and ``r²_kl = (6δ_kl‖u_k‖² − 8 v_kᵀ Σ_f v_l)/(θ_kθ_l)``
(``∂x/∂θ_l = (2Σ_f v_l − v_l)/θ_l``), so

    ∂²f/∂θ_k∂θ_l = ∂² log|Ω| + ν (r²_kl/r² − r²_k r²_l/r⁴).

Every term is exact and costs ``O(m²)`` from ``Σ``, except the
blocks of ``Σ`` that involve the largest grouping (block 0, eliminated per
level): ``Σ₀ₛ = −N B Σ_S``, ``Σ₀₀ = N + N B Σ_S Bᵀ N`` with ``B = θ₀Ḡ_w D``
give ``‖Σ₀ₗ‖² = tr(P_l Σ_S K₂ Σ_S)`` and ``‖Σ₀₀‖² = Σ N_l² + 2 tr(Σ_S K₃)
+ tr(Σ_S K₂ Σ_S K₂)`` with ``K_j = Bᵀ N^j B``.  ``tr(Σ_S K₃)`` is gathered
on the pairs of block 0; the two traces with ``K₂`` twice would cost dense
products of order ``m`` (``2m³`` flops, more than the factorisation), so
they are summed exactly over the columns of groupings with at most
``PROBES`` levels and of ``X`` (unit vectors) and estimated over the others
by Hutchinson's estimator with ``PROBES`` Rademacher vectors of a fixed
seed.  Only these terms are estimated, and only Newton's step depends
on them: the optimum is where the exact gradient vanishes.

Pure numerics: no I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import lapack

from pooljob.model import blas
from pooljob.model.blocks import Blocks
from pooljob.model.profiled import (
    Gradient,
    Workspace,
    intercepts_only,
    objective_and_gradient,
)

Array = NDArray[np.float64]

#: Rademacher vectors of Hutchinson's estimator for the traces with K₂ twice.
PROBES = 48
#: Their seed: the same θ gives the same Hessian.
SEED = 20261130


def applies(blocks: Blocks) -> bool:
    """Whether :func:`hessian` applies: random intercepts only."""
    return intercepts_only(blocks)


#: Columns per chunk of :func:`_squared_block_sums`.
STEP = 256


def _squared_block_sums(low: Array, starts: list[int], s: int) -> Array:
    """``Σ M_ij²`` over each pair of column blocks of the symmetric ``M`` (lower triangle given).

    ``low`` is read only on and below its diagonal (the first ``s`` rows and
    columns), column chunk by column chunk: no ``s × s`` temporary.
    """
    bounds = [*starts, s]
    nb = len(starts)
    lower = np.zeros((nb, nb))  # blocks on and below the diagonal, each entry once
    diag = np.zeros(nb)
    for col in range(nb):
        for c0 in range(bounds[col], bounds[col + 1], STEP):
            c1 = min(c0 + STEP, bounds[col + 1])
            sq = low[c0:s, c0:c1] ** 2
            sq[: c1 - c0][np.triu_indices(c1 - c0, 1)] = 0.0
            diag[col] += float(np.trace(sq[: c1 - c0]))
            rows = sq.sum(axis=1)
            for row in range(col, nb):
                lo, hi = max(bounds[row], c0), bounds[row + 1]
                lower[row, col] += float(rows[lo - c0 : hi - c0].sum())
    full = lower + lower.T
    full[np.diag_indices(nb)] -= diag
    return full


def _solve(chol: Array, rhs: Array) -> Array:
    """``(L_s L_sᵀ)⁻¹ rhs`` for the leading ``s × s`` block of the lower-triangular ``chol``.

    Solved with the whole ``chol`` and ``rhs`` padded with zeros (the leading
    block of a triangular solve does not depend on the rest, and the trailing
    part of the transposed solve is 0): no copy of ``chol``.
    """
    size, s = chol.shape[0], rhs.shape[0]
    padded = np.zeros((size, rhs.shape[1]), order="F")
    padded[:s] = rhs
    with blas.threads(size):
        half = lapack.dtrtrs(chol, padded, lower=1, overwrite_b=1)[0]
        half[s:] = 0.0
        out = lapack.dtrtrs(chol, half, lower=1, trans=1, overwrite_b=1)[0]
    return np.asarray(out[:s])


def _probes(blocks: Blocks, s: int) -> tuple[Array, Array]:
    """Probe vectors for ``tr(P_l M)`` over the ``s`` columns, and each vector's weight.

    Unit vectors (weight 1: exact) for the columns of the dense groupings
    with at most ``PROBES`` levels and for ``X``'s (when ``p ≤ PROBES``);
    ``PROBES`` Rademacher vectors on the other columns (weight 1/PROBES:
    Hutchinson's estimator of the rest of the diagonal).
    """
    m = blocks.dense_size
    exact = np.zeros(s, dtype=bool)
    for k in range(1, blocks.n_blocks):
        if blocks.levels[k] <= PROBES:
            start = int(blocks.offsets[k])
            exact[start : start + int(blocks.levels[k])] = True
    if s - m <= PROBES:
        exact[m:s] = True
    where = np.flatnonzero(exact)
    unit = np.zeros((s, len(where)))
    unit[where, np.arange(len(where))] = 1.0
    if exact.all():
        return unit, np.ones(len(where))
    rng = np.random.default_rng(SEED)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(s, PROBES))
    signs[exact] = 0.0
    z = np.hstack([unit, signs])
    weight = np.concatenate([np.ones(len(where)), np.full(PROBES, 1.0 / PROBES)])
    return z, weight


def hessian(blocks: Blocks, ws: Workspace, theta: Array, reml: bool) -> Array | None:
    """``∂²f/∂θ²`` at θ for random intercepts (module docstring); None if it does not apply.

    Reuses the last gradient evaluation when it was at θ, else evaluates the
    gradient first.  None at the boundary (some ``θ_k = 0``) or for slopes.
    """
    theta = np.asarray(theta, dtype=np.float64)
    if not applies(blocks) or not np.all(theta > 0.0):
        return None
    last = ws.cache.get("last")
    if not isinstance(last, Gradient) or last.theta != theta.tobytes():
        objective_and_gradient(blocks, ws, theta, reml)
        last = ws.cache.get("last")
    if not isinstance(last, Gradient) or not last.pbars:
        return None
    return _hessian(blocks, ws, theta, reml, last)


def _hessian(blocks: Blocks, ws: Workspace, theta: Array, reml: bool, g: Gradient) -> Array:
    """The module docstring's formulas, from the gradient evaluation ``g`` at θ."""
    st, s = g.state, g.s_dim
    m, p = ws.m, ws.p
    k_all = blocks.n_blocks
    d = np.asarray(st.scale, dtype=np.float64)
    q = np.array(blocks.levels, dtype=np.float64)
    nu = blocks.n - p if reml else blocks.n
    r2 = float(st.chol[-1, -1] ** 2)
    n_inv = st.n_inv[:, 0, 0]
    t = np.array([float(np.asarray(pb).ravel()[0]) for pb in g.pbars])
    # blocks of the s columns: 1..K−1 (dense groupings), then X (REML) as one more
    starts = [int(blocks.offsets[k]) for k in range(1, k_all)]
    if s > m:
        starts.append(m)
    frob = np.zeros((k_all, k_all))  # ‖Σ_kl‖²
    if k_all > 1:
        # Σ_kl² = (DΣD)_kl² / (θ_k θ_l)² for the dense groupings
        th = theta[1:]
        bs_q = _squared_block_sums(g.sig_t, starts, s)
        frob[1:, 1:] = bs_q[: k_all - 1, : k_all - 1] / np.outer(th**2, th**2)
    # the K₂ and K₃ terms of block 0 (module docstring)
    theta0 = theta[0]
    chol = st.chol
    g_w = ws.g_bar[:, :s]
    ds = d[:s]

    def k2(v: Array) -> Array:
        bv = theta0 * np.asarray(g_w @ (ds[:, None] * v))
        return np.asarray(theta0 * ds[:, None] * np.asarray(g_w.T @ (n_inv[:, None] ** 2 * bv)))

    tr_k2k2 = 0.0
    if s:
        z, weight = _probes(blocks, s)
        v = _solve(chol, k2(_solve(chol, z)))  # Σ K₂ Σ z
        tr_k2k2 = float(((k2(z) * v).sum(axis=0)) @ weight)
        if k_all > 1:
            frob_0l = np.add.reduceat((z * v) @ weight, starts)
            frob[0, 1:] = frob[1:, 0] = frob_0l[: k_all - 1]
    frob[0, 0] = float((n_inv**2).sum()) + 2.0 * g.tr_k3 + tr_k2k2
    eye = np.eye(k_all)
    outer = np.outer(theta, theta)
    logdet = (6.0 * eye * t - 2.0 * eye * q - 4.0 * frob) / outer
    # r²'s derivatives: v_k = P_k x in the full space (block 0 first), w_l = Σ_f v_l
    x = g.x
    full = m + p
    gf = ws.g_bar[:, :full]
    df = d[:full]
    v0 = np.zeros((len(n_inv), k_all))
    vr = np.zeros((full, k_all))
    v0[:, 0] = g.u0[:, 0]
    for k in range(1, k_all):
        idx = slice(int(blocks.offsets[k]), int(blocks.offsets[k]) + int(blocks.levels[k]))
        vr[idx, k] = x[idx]
    # Ω_f w = v by elimination of block 0: S w_S = v_S − Bᵀ N v₀, w₀ = N (v₀ − B w_S)
    bt = theta0 * df[:, None] * np.asarray(gf.T @ (n_inv[:, None] * v0))
    wr = _solve(chol, vr - bt)
    w0 = n_inv[:, None] * (v0 - theta0 * np.asarray(gf @ (df[:, None] * wr)))
    cross = v0.T @ w0 + vr.T @ wr
    usq = (v0**2).sum(axis=0) + (vr**2).sum(axis=0)
    r2_k = -2.0 * usq / theta
    r2_kl = (6.0 * eye * usq - 8.0 * cross) / outer
    resid = nu * (r2_kl / r2 - np.outer(r2_k, r2_k) / r2**2)
    hess = logdet + resid
    return np.asarray(0.5 * (hess + hess.T), dtype=np.float64)
