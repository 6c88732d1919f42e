"""Estimates at θ̂ from the profiled solver's factor: no second factorisation.

:mod:`pooljob.model.profiled` factorises the extended Schur complement
``S = L_S L_Sᵀ`` of order ``m + p + 1`` (the dense random effects ``u_r``,
``X`` and ``y``, with the largest grouping's ``u₀`` eliminated per level) and,
for the gradient, inverts its leading ``m + p`` block, ``Σ = S_w⁻¹``.  Its
best gradient evaluation is kept (``Workspace.cache``); at θ̂ it is reused
here, else ``S`` is factorised and inverted once.  With
``N_l = (T₀'Z₀'Z₀ₗT₀ + I)⁻¹`` and ``Ḡ = Z₀'[Z₂ X y]``:

* ``[u_r; β]``: ``L_Sᵀ z = r e_last`` gives ``z = [−u_r; −β; 1]``;
  ``u₀ₗ = N_l T₀' Ḡ_l D z`` (:mod:`pooljob.model.profiled`'s notation);
* ``σ̂² = r²/ν``, ``Var β̂ = σ̂² R_X⁻¹R_X⁻ᵀ`` from the trailing block of ``L_S``;
* conditional variances given β̂ (lme4's ``condVar``):
  ``Var(u_r | y) = σ̂² Σ₂₂`` with ``Σ₂₂ = Σ_rr − Σ_rX Σ_XX⁻¹ Σ_Xr`` (the
  inverse of the leading ``m × m`` block), and per level of the largest
  grouping ``Var(u₀ₗ | y) = σ̂² (N_l + N_l T₀' Ḡ_l D Σ₂₂ D Ḡ_lᵀ T₀ N_l)``,
  gathered on the precomputed pairs of that level;
* prediction error variances of ``aᵀ(b, β)`` (Henderson's ``M⁻¹``, β's
  uncertainty included): with ``c₀ = T₀'a₀`` per level and
  ``r = [T_r'a_r; a_X] − D'Ḡ_wᵀ T₀ N c₀`` (``Ḡ_w`` without y),
  ``σ̂² (c₀ᵀ N c₀ + rᵀ Σ r)``.  ``rᵀΣr`` is gathered from Σ on the pattern
  of ``r`` where ``r`` is sparse (a level of the largest grouping meets a
  few columns), and is ``‖L_w⁻¹ r‖²`` by a triangular solve where it is
  dense (a level of a smaller grouping, whose rows meet most of the
  largest one's levels).

All of it is exact linear algebra, with no iteration: the BLUPs and β̂ are
the solutions of Henderson's equations at θ̂ to rounding.  Pure numerics.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from numpy.typing import NDArray

from pooljob.model import blas
from pooljob.model.blocks import Blocks
from pooljob.model.lmm import (
    Factor,
    Solution,
    fixed_effects,
    mean_prediction_variance,
    quadratic_forms,
)
from pooljob.model.profiled import (
    Workspace,
    _factor,
    _State,
    halve_diagonal,
    leading_inverse,
)

Array = NDArray[np.float64]
#: A column of ``r`` with more non-zeros than this share of its length goes to the
#: triangular solve (gathering c² entries of Σ costs about as much as c ≈ 0.08 m).
DENSE_SHARE = 0.08
#: Pairs per chunk when gathering Σ₂₂ on the pairs of block 0.
CHUNK = 4_000_000


def _symmetrize(a: Array, step: int = 512) -> None:
    """Copy the lower triangle of the square ``a`` onto its upper one, in place, by blocks."""
    n = a.shape[0]
    for j in range(0, n, step):
        stop = min(n, j + step)
        a[j:stop, stop:] = a[stop:, j:stop].T
        blk = a[j:stop, j:stop]
        blk[:] = np.tril(blk) + np.tril(blk, -1).T


def _inverse(blocks: Blocks, ws: Workspace, theta: Array) -> tuple[_State, Array, Array]:
    """The state at θ, ``Σ = S_w⁻¹`` (symmetric) and block 0's pair sums of ``DΣD``.

    Σ is returned in the leading ``k × k`` block of a column-major
    ``size × size`` array (the rest 0 or unused), so that a pair's
    column-major position ``j·size + i`` (``Workspace.flat``) finds it.  The
    cache holds ``DΣD`` (the last gradient evaluation's, when it was at θ):
    it is gathered on the pairs (:func:`_pair_sums`) before ``D`` is divided
    out in place; otherwise ``S`` is factorised and inverted once.
    """
    k, size = ws.m + ws.p, ws.size
    c = ws.cache
    st = c.get("state")
    d = st.scale if isinstance(st, _State) else None
    if (
        c.get("theta") == theta.tobytes()
        and c.get("s_dim") == k
        and isinstance(st, _State)
        and isinstance(d, np.ndarray)
        and np.all(d[:k] != 0.0)
    ):
        full = np.asarray(c["sig_t"], dtype=np.float64)
        invertible = True
    else:
        found = _factor(blocks, ws, theta)
        if found is None:
            raise np.linalg.LinAlgError("the Schur complement is not positive definite at θ̂")
        st, d = found, found.scale
        inverse = leading_inverse(st.chol, k)
        if inverse is None:
            raise np.linalg.LinAlgError("potri failed on the Schur complement at θ̂")
        full = inverse
        invertible = isinstance(d, np.ndarray) and bool(np.all(d[:k] != 0.0))
        if invertible:
            full[:k, :k] *= d[:k, None]
            full[:k, :k] *= d[None, :k]
    c.clear()
    if not full.flags.f_contiguous:
        full = np.asfortranarray(full)
    if invertible:  # full holds DΣD: gathered, then D divided out in place
        sums = _pair_sums(blocks, ws, full)
        full[:k, :k] /= d[:k, None]
        full[:k, :k] /= d[None, :k]
        _symmetrize(full[:k, :k])
    else:  # D singular (a θ at 0) or not diagonal (slopes): DΣDᵀ in a second buffer
        _symmetrize(full[:k, :k])
        scaled = np.zeros((size, size), order="F")
        if isinstance(d, np.ndarray):
            scaled[:k, :k] = full[:k, :k] * d[:k, None] * d[None, :k]
        else:
            scaled[:k, :k] = d[:k, :k] @ (d[:k, :k] @ full[:k, :k]).T
        sums = _pair_sums(blocks, ws, scaled)
        del scaled
    return st, full, sums


def solve_profiled(blocks: Blocks, ws: Workspace, theta: Array, reml: bool) -> Solution:
    """β̂, σ̂², conditional modes, conditional and prediction variances at θ̂ (module docstring)."""
    theta = np.asarray(theta, dtype=np.float64)
    st, full, sums = _inverse(blocks, ws, theta)
    m, p, size = ws.m, ws.p, ws.size
    k = m + p
    sigma = full[:k, :k]
    chol = st.chol
    sigma2, beta, vcov = fixed_effects(np.tril(chol[m:, m:]), blocks.n, reml)
    rhs = np.zeros(size)
    rhs[-1] = chol[-1, -1]
    with blas.threads(size):
        ext = sla.solve_triangular(chol, rhs, lower=True, trans="T", check_finite=False)
    ur = -ext[:m]
    dz = st.scale * ext if isinstance(st.scale, np.ndarray) else st.scale @ ext
    q0, p0 = blocks.levels[0], blocks.widths[0]
    t0, n_inv = st.t[0], st.n_inv
    resid = np.asarray(ws.g_bar @ dz).reshape(q0, p0)
    u0 = np.einsum("lab,cb,lc->la", n_inv, t0, resid)
    # Σ₂₂ = Σ_rr − Σ_rX Σ_XX⁻¹ Σ_Xr, on the pairs and on the diagonal blocks
    e = sigma[:m, m:k]
    ef = np.asarray(
        np.linalg.solve(sigma[m:k, m:k], e.T).T if p else np.zeros((m, 0)), dtype=np.float64
    )
    # per level of block 0: Ḡ_l D Σ D Ḡ_lᵀ over the random and X columns (q_full),
    # and over Σ₂₂ (q_cond: less the rank-p terms, :func:`_rank_p_terms`)
    q_full = sums + sums.transpose(0, 2, 1)
    q_cond = q_full - _rank_p_terms(blocks, ws, st, sigma, e, ef)
    tn = np.einsum("ac,lci->lai", t0, n_inv)  # T₀ N_l
    var_u0 = n_inv + np.einsum("lai,lab,lbj->lij", tn, q_cond, tn)
    # each level's block of Ω⁻¹ with β's uncertainty (for mean_pev), per block
    levels = [n_inv + np.einsum("lai,lab,lbj->lij", tn, q_full, tn)]
    b = [u0 @ t0.T]
    cond_var = [sigma2 * np.einsum("ij,ljk,mk->lim", t0, var_u0, t0)]
    for kk in range(1, blocks.n_blocks):
        qk, pk = blocks.levels[kk], blocks.widths[kk]
        idx = blocks.offsets[kk] + np.arange(qk * pk).reshape(qk, pk)
        own = np.asarray(sigma[idx[:, :, None], idx[:, None, :]])  # Σ's level blocks
        levels.append(own)
        vk = own - np.einsum("lat,lbt->lab", ef[idx], e[idx])
        uk = ur[idx]
        b.append(uk @ st.t[kk].T)
        cond_var.append(sigma2 * np.einsum("ij,ljk,mk->lim", st.t[kk], vk, st.t[kk]))
    factor = _as_factor(blocks, ws, st)

    def mean_pev(k: int, n: Array) -> tuple[Array, NDArray[np.bool_]]:
        t = st.t[k]
        if not np.all(np.diag(t) != 0.0):
            return np.full(len(n), np.nan), np.zeros(len(n), dtype=np.bool_)
        return mean_prediction_variance(sigma2, t, levels[k], n)

    # the closure keeps Ḡ_w, not the workspace: its pair products (the bulk of
    # its memory) can go before the tables are built
    g_w = sp.csr_matrix(ws.g_bar[:, :k])

    def pev(a_fixed: Array, a_random: list[sp.csr_matrix]) -> Array:
        return _pev(blocks, g_w, st, full, sigma2, a_fixed, a_random)

    return Solution(beta, vcov, sigma2, b, cond_var, factor, pev, mean_pev)


def _pair_sums(blocks: Blocks, ws: Workspace, scaled: Array) -> Array:
    """Per level l of block 0: ``Σ_{pairs of l} ½ᵢⱼ (DΣD)_{ij} prod_{ij}``, (q₀, p₀, p₀).

    ``scaled`` holds ``DΣD`` (lower triangle; 0 in the ``y`` row and column)
    in a column-major ``size × size`` array, gathered on the pairs in chunks
    of ``CHUNK`` (in the workspace's column order, so the gathers stay in
    cache).  The pairs cover the random and ``X`` columns; ``r + rᵀ`` is the
    level's ``Ḡ_l D Σ D Ḡ_lᵀ``.
    """
    q0, p0 = blocks.levels[0], blocks.widths[0]
    values = scaled.reshape(-1, order="F")
    out = np.zeros((q0, p0 * p0))
    for start in range(0, len(ws.flat), CHUNK):
        part = slice(start, start + CHUNK)
        vals = values[ws.flat[part]]
        halve_diagonal(vals, ws.first, start)
        level = ws.level[part]
        prod = ws.prod[part].reshape(-1, p0 * p0)
        for a in range(p0 * p0):
            out[:, a] += np.bincount(level, weights=vals * prod[:, a], minlength=q0)
    return out.reshape(q0, p0, p0)


def _rank_p_terms(
    blocks: Blocks, ws: Workspace, st: _State, sigma: Array, e: Array, ef: Array
) -> Array:
    """Per level of block 0, ``Ḡ_l D (Σ − Σ₂₂) D Ḡ_lᵀ`` over the random and X columns.

    ``Σ₂₂ = Σ_rr − ef eᵀ`` (``e = Σ_rX``, ``ef = e Σ_XX⁻¹``) on the random
    columns, 0 on X's: with ``E = Ḡ_r D_r e``, ``F = Ḡ_r D_r ef`` and ``X_l``
    the level's X columns of ``Ḡ``, it is ``F_l E_lᵀ + E_l X_lᵀ + X_l E_lᵀ +
    X_l Σ_XX X_lᵀ``.
    """
    m, p = ws.m, ws.p
    k = m + p
    q0, p0 = blocks.levels[0], blocks.widths[0]
    g_r = ws.g_bar[:, :m]
    scaled = (
        sp.csr_matrix(g_r.multiply(st.scale[None, :m]))
        if isinstance(st.scale, np.ndarray)
        else sp.csr_matrix(g_r @ st.scale[:m, :m])
    )
    big_e = np.asarray(scaled @ e).reshape(q0, p0, p)
    big_f = np.asarray(scaled @ ef).reshape(q0, p0, p)
    big_x = np.asarray(ws.g_bar[:, m:k].toarray()).reshape(q0, p0, p)
    cross = np.einsum("lap,lbp->lab", big_e, big_x)
    return np.asarray(
        np.einsum("lap,lbp->lab", big_f, big_e)
        + cross
        + cross.transpose(0, 2, 1)
        + np.einsum("lap,pq,lbq->lab", big_x, sigma[m:k, m:k], big_x),
        dtype=np.float64,
    )


def _as_factor(blocks: Blocks, ws: Workspace, st: _State) -> Factor:
    """The parts of lme4's blocked factor that are cheap to read off ``L_S``.

    ``t``, ``l11``, ``lx1``, ``lxy`` and the log-determinant; the dense
    blocks (``l21``, ``l22``, ``lx2``) are left out (None): they would copy
    ``L_S``, and every use of them here goes through the solution's ``pev``.
    """
    m, p = ws.m, ws.p
    q0, p0 = blocks.levels[0], blocks.widths[0]
    l11 = np.linalg.cholesky(np.linalg.inv(st.n_inv))
    inv11 = np.linalg.inv(l11)
    g_xy = np.asarray(ws.g_bar[:, m:].toarray()).reshape(q0, p0, p + 1)  # Z₀'[X y]
    lx1 = np.einsum("lab,cb,lcd->lad", inv11, st.t[0].T, g_xy)
    return Factor(
        st.t,
        l11,
        None,
        None,
        lx1.reshape(q0 * p0, p + 1),
        None,
        np.tril(st.chol[m:, m:]),
        st.logdet_l,
    )


def _pev(
    blocks: Blocks,
    g_w: sp.csr_matrix,
    st: _State,
    full: Array,
    sigma2: float,
    a_fixed: Array,
    a_random: list[sp.csr_matrix],
) -> Array:
    """``σ̂² (c₀ᵀ N c₀ + rᵀ Σ r)`` for each column of the coefficients (module docstring)."""
    k = g_w.shape[1]
    q0 = blocks.levels[0]
    eye = sp.identity(q0, format="csr")
    c0 = sp.csr_matrix(sp.kron(eye, sp.csr_matrix(st.t[0].T)) @ a_random[0])
    nmat = sp.block_diag(list(st.n_inv), format="csr")
    v0 = sp.csr_matrix(nmat @ c0)
    total = np.asarray(c0.multiply(v0).sum(axis=0)).ravel()
    tv = sp.csr_matrix(sp.kron(eye, sp.csr_matrix(st.t[0])) @ v0)
    parts = [
        sp.kron(sp.identity(blocks.levels[j], format="csr"), sp.csr_matrix(st.t[j].T)) @ a_random[j]
        for j in range(1, blocks.n_blocks)
    ]
    direct = sp.vstack([*parts, sp.csr_matrix(a_fixed)], format="csr")
    # rᵀ row by row (one row per column of the coefficients): the rows of a CSR
    # matrix are what both the gathers and the dense blocks read
    through = sp.csr_matrix(sp.csr_matrix(tv.T) @ g_w)  # (Ḡ_wᵀ T₀ N c₀)ᵀ
    if isinstance(st.scale, np.ndarray):
        through.data *= st.scale[through.indices]
    else:
        through = sp.csr_matrix(through @ st.scale[:k, :k])
    rt = sp.csr_matrix(sp.csr_matrix(direct.T) - through)
    nnz = np.diff(rt.indptr)
    wide = np.flatnonzero(nnz > DENSE_SHARE * k)
    narrow = np.flatnonzero(nnz <= DENSE_SHARE * k)
    if len(narrow):
        total[narrow] += quadratic_forms(sp.csr_matrix(rt[narrow]), full)
    if len(wide):
        lw = st.chol[:k, :k]
        step = 2048  # columns per triangular solve: larger blocks run BLAS faster
        with blas.threads(k):
            for start in range(0, len(wide), step):
                sel = wide[start : start + step]
                dense = rt[sel].toarray().T  # column-major, as LAPACK reads it
                v = sla.solve_triangular(lw, dense, lower=True, check_finite=False)
                total[sel] += (v**2).sum(axis=0)
    return np.asarray(sigma2 * total, dtype=np.float64)
