"""The profiled criterion and its exact gradient, from one dense Cholesky per θ.

:mod:`pooljob.model.lmm` factorises ``[ΛZ X y]'[ΛZ X y] + diag(I, 0)`` block by
block.  Here the largest grouping (block 0, block-diagonal) is eliminated
algebraically and everything else — the other groupings, ``X`` and ``y`` —
forms one extended Schur complement of order ``m + p + 1``::

    S(θ) = D'(Ā − Ḡ' W(θ₀) Ḡ) D + diag(I_m, 0)
    Ā = [Z₂ X y]'[Z₂ X y]        dense, fixed
    Ḡ = Z₀'[Z₂ X y]              sparse, fixed
    W = blockdiag_l T₀ N_l T₀',  N_l = (T₀'Z₀'Z₀ₗT₀ + I)⁻¹
    D = blockdiag(I ⊗ T_k for k ≥ 1, I_{p+1})

``Ā`` and the products ``Ḡ[la, i] Ḡ[lb, j]`` of every pair of columns
``i ≥ j`` met by one level ``l`` are computed once (:class:`Workspace`), so
each θ costs one weighted ``bincount``, an elementwise scaling and one LAPACK
``potrf``.  The Cholesky factor ``L_S`` of ``S`` holds ``L22``, ``L_X`` and
``r`` (its last diagonal entry), so::

    log|L|²    = Σ_l log|N_l⁻¹| + 2 Σ_{i<m} log L_S[i, i]
    log|R_X|²  = 2 Σ_{m≤i<m+p} log L_S[i, i]
    r²         = L_S[m+p, m+p]²

The gradient (:func:`objective_and_gradient`) is, for the template ``T_k``
of block k with ``q_k`` levels,

    ∂f/∂T_k = 2 T_k⁻ᵀ (q_k I − P̄_k − S_k / σ̂²)

where ``P̄_k = Σ_l Σ_ll`` sums the diagonal ``p_k × p_k`` blocks of
``Ω⁻¹`` over the levels (``Ω = Λ'Z'ZΛ + I`` for ML; for REML ``Ω`` also
holds the ``X`` rows and columns), ``S_k = Σ_l u_l u_lᵀ`` sums the
conditional modes' outer products in the spherical scale (``b = T u``) and
``σ̂² = r²/ν`` (``ν = n − p`` for REML, ``n`` for ML).  The first term is
``∂ log|Ω|`` written as ``tr(Ω⁻¹ ∂Ω)`` with ``Λ'Z'ZΛ = Ω − I``; the second is
``ν ∂r²/r²`` with ``∂r² = −2 uᵀ Λ⁻¹ (∂Λ) u`` (the envelope theorem on the
penalised least squares ``r² = min ‖y − Xβ − ZΛu‖² + ‖u‖²``).  It needs
``T_k`` invertible: the criterion is even in each column of ``T_k``, so for a
random intercept at ``θ = 0`` the derivative is 0; for a singular template
with slopes the block's entries fall back to central differences.

This module is pure numerics (numpy, scipy): no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.linalg import lapack

from pooljob.model import blas
from pooljob.model.blocks import Blocks, pair_positions, set_symmetric
from pooljob.model.lmm import templates

Array = NDArray[np.float64]

#: Largest memory (bytes) the pair products may take; above it the optimizer
#: falls back to :func:`pooljob.model.lmm.objective` without a gradient.
MAX_PAIR_BYTES = 1_500_000_000
#: Pairs per chunk where the gradient gathers Σ on them.
CHUNK = 4_000_000
#: Pairs per chunk where :func:`workspace` builds them (temporaries stay in cache).
_BUILD = 1 << 19
#: The criterion's rounding, relative (:data:`pooljob.model.optimize.RISE`).
ROUNDING = 1e-11


@dataclass(frozen=True)
class Workspace:
    """Everything about the blocks that does not depend on θ.

    Attributes
    ----------
    size : int
        Order ``m + p + 1`` of the extended Schur complement.
    m, p : int
        Columns of the dense random-effect part and of ``X``.
    a_bar : ndarray, (size * size,)
        ``Ā`` in column-major order (only its lower triangle is used).
    g_bar : sparse, (q₀ p₀, size)
        ``Ḡ = Z₀'[Z₂ X y]``.
    flat : ndarray of int32 (int64 for orders above 46,340)
        Column-major position ``j·size + i`` of each pair ``i ≥ j``, in
        increasing ``j`` (column by column).
    level : ndarray of int32
        The level of block 0 that meets the pair.
    prod : ndarray, (pairs, p₀, p₀)
        ``Ḡ[(l, a), i] Ḡ[(l, b), j]``.
    first : ndarray of int64
        The pairs with ``i = j`` (each column's first pair of a level), in
        increasing order: a symmetric sum counts the other pairs twice, these
        once (:func:`halve_diagonal`).
    """

    size: int
    m: int
    p: int
    a_bar: Array
    g_bar: sp.csr_matrix
    flat: NDArray[np.signedinteger[Any]]
    level: NDArray[np.int32]
    prod: Array
    first: NDArray[np.int64]
    #: The last gradient evaluation's θ, factor and scaled inverse (:func:`last_inverse`).
    cache: dict[str, Any] = field(default_factory=dict, compare=False)


def halve_diagonal(vals: Array, first: NDArray[np.int64], start: int) -> None:
    """Halve, in place, the entries of ``vals`` (pairs ``start …``) that are pairs ``i = j``."""
    lo, hi = np.searchsorted(first, [start, start + len(vals)])
    vals[first[lo:hi] - start] *= 0.5


def pair_count(blocks: Blocks) -> int:
    """Number of column pairs ``i ≥ j`` met by one level of block 0."""
    cols = np.full(blocks.levels[0], blocks.xtx.shape[0], dtype=np.int64)
    for (k, j), pair in blocks.pairs.items():
        if k == 0:
            cols += blocks.widths[j] * np.bincount(pair.codes_a, minlength=blocks.levels[0])
    return int((cols * (cols + 1) // 2).sum())


def _dense_part(blocks: Blocks, m: int, p: int) -> Array:
    """``Ā = [Z₂ X y]'[Z₂ X y]``, built in column-major order (its ravel is free)."""
    size, off = m + p + 1, blocks.offsets
    a_bar = np.zeros((size, size), order="F")
    for k in range(1, blocks.n_blocks):
        pk, qk = blocks.widths[k], blocks.levels[k]
        idx = off[k] + np.arange(qk * pk).reshape(qk, pk)
        a_bar[idx[:, :, None], idx[:, None, :]] = blocks.ztz[k]
        a_bar[idx[:, :, None], m + np.arange(p + 1)] = blocks.ztxy[k]
        a_bar[m + np.arange(p + 1)[:, None], idx.reshape(-1)] = blocks.ztxy[k].reshape(-1, p + 1).T
    for (k, j), pair in blocks.pairs.items():
        if k != 0:
            set_symmetric(a_bar, *pair_positions(blocks, k, j), pair.values)
    a_bar[m:, m:] = blocks.xtx
    return a_bar


def _entries(blocks: Blocks, m: int, p: int) -> tuple[NDArray[np.int64], NDArray[np.int64], Array]:
    """The nonzeros of ``Ḡ`` as (level, column, values over the p₀ rows), by level then column."""
    q1, p1, off = blocks.levels[0], blocks.widths[0], blocks.offsets
    lev = [np.repeat(np.arange(q1, dtype=np.int64), p + 1)]
    col = [np.tile(m + np.arange(p + 1, dtype=np.int64), q1)]
    val = [blocks.ztxy[0].transpose(0, 2, 1).reshape(-1, p1)]
    for (k, j), pair in blocks.pairs.items():
        if k == 0:
            pj = blocks.widths[j]
            lev.append(np.repeat(pair.codes_a.astype(np.int64, copy=False), pj))
            col.append((off[j] + pair.codes_b[:, None] * pj + np.arange(pj)).reshape(-1))
            val.append(pair.values.transpose(0, 2, 1).reshape(-1, p1))
    levels, cols = np.concatenate(lev), np.concatenate(col).astype(np.int64, copy=False)
    # the order of np.lexsort((cols, levels)), by one stable sort of one key
    order = np.argsort(levels * (m + p + 1) + cols, kind="stable")
    return levels[order], cols[order], np.concatenate(val)[order]


def _g_bar(
    levels: NDArray[np.int64], cols: NDArray[np.int64], vals: Array, q1: int, size: int
) -> sp.csr_matrix:
    """``Ḡ``: row ``l p₀ + a`` holds the entries of level l (sorted, distinct columns)."""
    p1 = vals.shape[1]
    counts = np.bincount(levels, minlength=q1)
    if np.any(np.diff(levels * size + cols) == 0):  # repeated entries: summed by COO
        rows = (levels[:, None] * p1 + np.arange(p1)).reshape(-1)
        return sp.csr_matrix((vals.reshape(-1), (rows, np.repeat(cols, p1))), shape=(q1 * p1, size))
    starts = np.cumsum(counts) - counts
    indptr = np.append(
        (p1 * starts[:, None] + np.arange(p1) * counts[:, None]).reshape(-1), vals.size
    )
    pos = (
        (p1 * starts + np.arange(p1)[:, None] * counts)[:, levels]
        + np.arange(len(levels))
        - starts[levels]
    )
    indices = np.empty(vals.size, dtype=np.int64)
    data = np.empty(vals.size)
    indices[pos.reshape(-1)] = np.tile(cols, p1)
    data[pos.reshape(-1)] = vals.T.reshape(-1)
    return sp.csr_matrix((data, indices, indptr), shape=(q1 * p1, size))


def workspace(blocks: Blocks) -> Workspace | None:
    """Precompute ``Ā``, ``Ḡ`` and the pair products (None if too large).

    Each entry ``e`` of ``Ḡ`` (level l, column j; entries sorted by level then
    column) pairs with the entries ``i ≥ e`` of its level: positions
    ``[e, end_l)``.  Taken column by column (then level), the pairs fill S column
    by column, so the bincount into S and the gathers from Σ stay in cache
    (several times faster than level by level, which scatters over all of S).
    The pairs are written in place in chunks of about ``_BUILD`` pairs; within a
    run the positions ``i`` are consecutive, so they are a cumulative sum of ones
    restarted at each run, and the run's constants (column j, level, values) are
    repeated over it.
    """
    if not blocks.n_blocks:
        return None
    p1 = blocks.widths[0]
    pairs = pair_count(blocks)
    if pairs * (20 + 8 * p1 * p1) > MAX_PAIR_BYTES:
        return None
    m = blocks.dense_size
    p = blocks.xtx.shape[0] - 1
    size = m + p + 1
    q1 = blocks.levels[0]
    a_bar = _dense_part(blocks, m, p)
    levels_all, cols_all, vals = _entries(blocks, m, p)
    g_bar = _g_bar(levels_all, cols_all, vals, q1, size)
    ends = np.cumsum(np.bincount(levels_all, minlength=q1))[levels_all]  # one past e's level
    keys = cols_all.astype(np.uint16) if size <= 1 << 16 else cols_all  # radix sort
    by_col = np.argsort(keys, kind="stable")  # = np.lexsort((levels_all, cols_all))
    run_end = ends[by_col]
    span = run_end - by_col
    bounds = np.concatenate([[0], np.cumsum(span)])
    total = int(bounds[-1])
    # the step into each run's first position from the previous run's last
    jump = by_col - np.concatenate([[1], run_end[:-1]]) + 1
    # positions in S as int32 where they fit (every order up to MAX_DENSE): half the memory
    index: type[np.signedinteger[Any]] = np.int32 if size * size < 2**31 else np.int64
    cols_i: NDArray[np.signedinteger[Any]] = cols_all.astype(index)
    col_j: NDArray[np.signedinteger[Any]] = cols_i[by_col] * size
    lev_j = levels_all[by_col].astype(np.int32)
    val_j = vals[by_col]
    flat: NDArray[np.signedinteger[Any]] = np.empty(total, dtype=index)
    level = np.empty(total, dtype=np.int32)
    prod = np.empty((total, p1, p1))
    first = np.asarray(bounds[:-1], dtype=np.int64)  # i == j: each run's first pair
    cuts = np.unique(np.searchsorted(bounds, np.arange(0, total, _BUILD), side="right") - 1)
    for a, b in zip(cuts, [*cuts[1:], len(by_col)], strict=True):
        lo, hi = int(bounds[a]), int(bounds[b])
        n_e = span[a:b]
        pi = np.ones(hi - lo, dtype=np.int64)
        pi[bounds[a:b] - lo] = jump[a:b]
        pi[0] = by_col[a]
        np.cumsum(pi, out=pi)  # position of i (the larger column)
        np.take(cols_i, pi, out=flat[lo:hi], mode="clip")
        flat[lo:hi] += np.repeat(col_j[a:b], n_e)
        level[lo:hi] = np.repeat(lev_j[a:b], n_e)
        if p1 == 1:
            out = prod[lo:hi, 0, 0]
            np.take(vals[:, 0], pi, out=out, mode="clip")
            out *= np.repeat(val_j[a:b, 0], n_e)
        else:
            rep = np.repeat(val_j[a:b], n_e, axis=0)
            np.multiply(vals[pi][:, :, None], rep[:, None, :], out=prod[lo:hi])
    return Workspace(size, m, p, a_bar.reshape(-1, order="F"), g_bar, flat, level, prod, first)


@dataclass
class _State:
    """The factor at one θ and the pieces the gradient reuses."""

    t: list[Array]
    scale: Array | sp.csr_matrix  # D: a vector when every dense block is an intercept
    n_inv: Array  # (q₀, p₀, p₀) N_l
    chol: Array  # L_S, column-major, lower
    logdet_l: float


@dataclass
class Gradient:
    """What the last gradient evaluation computed, kept for the Hessian.

    ``sig_t`` is ``D Σ D`` (lower triangle) in a ``size × size`` column-major
    array, ``x = [u_r; β]`` the dense conditional modes (spherical) and β,
    ``u0`` block 0's modes, ``pbars`` the gradient's ``P̄_k``.
    """

    theta: bytes
    state: _State
    sig_t: Array
    x: Array
    u0: Array
    s_dim: int
    pbars: list[Array] = field(default_factory=list)
    #: ``tr(Σ K₃)``, ``K₃ = Bᵀ N³ B`` (random intercepts only, else 0).
    tr_k3: float = 0.0


def _scaling(blocks: Blocks, ws: Workspace, t: list[Array]) -> Array | sp.csr_matrix:
    """``D``: the vector of its diagonal if it is diagonal, else a sparse matrix."""
    if all(w == 1 for w in blocks.widths[1:]):
        parts = [np.full(blocks.levels[k], t[k][0, 0]) for k in range(1, blocks.n_blocks)]
        return np.concatenate([*parts, np.ones(ws.p + 1)])
    mats = [sp.kron(sp.identity(blocks.levels[k]), t[k]) for k in range(1, blocks.n_blocks)]
    return sp.block_diag([*mats, sp.identity(ws.p + 1)], format="csr")


def _scale(mat: Array, d: Array | sp.csr_matrix, lower_only: bool, outer: bool = False) -> Array:
    """``D' mat D`` (``D mat D'`` if ``outer``) for a symmetric ``mat``, in place if D is diagonal.

    With ``lower_only`` only the lower triangle of ``mat`` is read.
    """
    if isinstance(d, np.ndarray):
        mat *= d[:, None]
        mat *= d[None, :]
        return mat
    if lower_only:
        mat = np.tril(mat) + np.tril(mat, -1).T
    e = d if outer else d.T.tocsr()
    half = np.asarray(e @ mat)
    return np.asfortranarray(np.asarray(e @ half.T))


def _factor(blocks: Blocks, ws: Workspace, theta: Array) -> _State | None:
    t = templates(blocks, theta)
    t0 = t[0]
    p1 = blocks.widths[0]
    a11 = np.einsum("ji,ljk,km->lim", t0, blocks.ztz[0], t0) + np.eye(p1)
    if p1 == 1:
        n_inv = 1.0 / a11
        logdet = float(np.log(a11).sum())
        w = (t0[0, 0] ** 2) * n_inv[:, 0, 0]
    else:
        l11 = np.linalg.cholesky(a11)
        logdet = 2.0 * float(np.log(np.einsum("lii->li", l11)).sum())
        n_inv = np.linalg.inv(a11)
        w_all = np.einsum("ij,ljk,mk->lim", t0, n_inv, t0)
    # Ḡ'WḠ summed in chunks into one buffer (no array of all the pairs' weights),
    # then subtracted from Ā at once: subtracting pair by pair from Ā's large
    # entries (Σy² of an uncentred response) would round at each pair
    h = np.zeros(ws.size * ws.size)
    for start in range(0, len(ws.flat), CHUNK):
        part = slice(start, start + CHUNK)
        if p1 == 1:
            weights = np.take(w, ws.level[part])
            weights *= ws.prod[part, 0, 0]
        else:
            weights = np.einsum("tab,tab->t", w_all[ws.level[part]], ws.prod[part])
        np.add.at(h, ws.flat[part], weights)
    np.subtract(ws.a_bar, h, out=h)
    s: Array = h.reshape(ws.size, ws.size, order="F")
    d = _scaling(blocks, ws, t)
    s = _scale(s, d, lower_only=True)
    s[np.arange(ws.m), np.arange(ws.m)] += 1.0
    with blas.threads(ws.size):
        chol, info = lapack.dpotrf(s, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        return None
    diag = np.diag(chol)
    logdet += 2.0 * float(np.log(diag[: ws.m]).sum())
    return _State(t, d, n_inv, chol, logdet)


def leading_inverse(chol: Array, s_dim: int) -> Array | None:
    """The inverse of the leading ``s_dim × s_dim`` block of ``chol chol'``, padded with zeros.

    A new column-major array of ``chol``'s shape (lower triangle only):
    ``potri`` on ``[[L_s, 0], [0, I]]``, then the ``I`` cleared; None if
    ``potri`` fails.
    """
    size = chol.shape[0]
    buf = np.array(chol, order="F")
    buf[s_dim:, :] = 0.0
    buf[np.arange(s_dim, size), np.arange(s_dim, size)] = 1.0
    with blas.threads(size):
        inv, info = lapack.dpotri(buf, lower=1, overwrite_c=1)
    if info != 0:
        return None
    inv[np.arange(s_dim, size), np.arange(s_dim, size)] = 0.0
    return np.asarray(inv)


def intercepts_only(blocks: Blocks) -> bool:
    """Whether every grouping has one random intercept and nothing else."""
    return blocks.n_blocks > 0 and all(w == 1 for w in blocks.widths)


def _criterion(st: _State, ws: Workspace, n: float, reml: bool) -> float:
    diag = np.diag(st.chol)
    r2 = diag[-1] ** 2
    if reml:
        nu = n - ws.p
        logdet_x = 2.0 * float(np.log(diag[ws.m : ws.m + ws.p]).sum())
        return float(st.logdet_l + logdet_x + nu * (1.0 + np.log(2.0 * np.pi * r2 / nu)))
    return float(st.logdet_l + n * (1.0 + np.log(2.0 * np.pi * r2 / n)))


def objective(blocks: Blocks, ws: Workspace, theta: Array, reml: bool) -> float:
    """The profiled criterion at θ (equal to :func:`pooljob.model.lmm.objective`)."""
    st = _factor(blocks, ws, np.asarray(theta, dtype=np.float64))
    return float("inf") if st is None else _criterion(st, ws, blocks.n, reml)


def objective_and_gradient(
    blocks: Blocks, ws: Workspace, theta: Array, reml: bool
) -> tuple[float, Array]:
    """The criterion and its exact gradient in θ (module docstring)."""
    theta = np.asarray(theta, dtype=np.float64)
    st = _factor(blocks, ws, theta)
    if st is None:
        return float("inf"), np.zeros_like(theta)
    f = _criterion(st, ws, blocks.n, reml)
    # the best point's factor and inverse are kept for the final solution; of points
    # equal to the criterion's rounding the later one (Newton's last steps are
    # judged by the gradient, and the optimum is the last of them).  What this
    # point replaces goes before its inverse is allocated: one dense block less
    best = f <= ws.cache.get("f", float("inf")) + ROUNDING * max(1.0, abs(f))
    if best:
        ws.cache.clear()
    else:
        ws.cache.pop("last", None)
    m, p, size = ws.m, ws.p, ws.size
    s_dim = m + p if reml else m
    nu = blocks.n - p if reml else blocks.n
    sigma2 = st.chol[-1, -1] ** 2 / nu
    # the solution [u₂; β] of the scaled system, then u₀ per level
    # L_Sᵀ z = r e_last gives z = [−x; 1] (the last row of L_S is [L_low⁻¹ c; r])
    rhs = np.zeros(size)
    rhs[-1] = st.chol[-1, -1]
    ext = sla.solve_triangular(st.chol, rhs, lower=True, trans="T", check_finite=False)
    x = -ext[:-1]
    dx = st.scale * ext if isinstance(st.scale, np.ndarray) else st.scale @ ext
    q1, p1 = blocks.levels[0], blocks.widths[0]
    resid = np.asarray(ws.g_bar @ dx).reshape(q1, p1)
    u0 = np.einsum("lab,cb,lc->la", st.n_inv, st.t[0], resid)  # N_l T₀' (Ḡ_l D [−x; 1])
    sigma = leading_inverse(st.chol, s_dim)
    if sigma is None:
        return f, np.full_like(theta, np.nan)
    pbars = [np.zeros((p1, p1))]
    us = [u0]
    for k in range(1, blocks.n_blocks):
        qk, pk = blocks.levels[k], blocks.widths[k]
        idx = blocks.offsets[k] + np.arange(qk * pk).reshape(qk, pk)
        low = np.tril(sigma[idx[:, :, None], idx[:, None, :]].sum(axis=0))
        pbars.append(low + np.tril(low, -1).T)
        us.append(x[idx])
    sig_t = _scale(sigma, st.scale, lower_only=True, outer=True)
    if best:
        ws.cache.update(f=f, theta=theta.tobytes(), state=st, sig_t=sig_t, s_dim=s_dim)
    # for the Hessian (:mod:`pooljob.model.profiled_hessian`), which reuses all of it
    ws.cache["last"] = Gradient(theta.tobytes(), st, sig_t, x, u0, s_dim)
    flat_sig = sig_t.reshape(-1, order="F")
    if p1 == 1:
        coef = (st.t[0][0, 0] * st.n_inv[:, 0, 0]) ** 2
        # with random intercepts only, also tr(Σ K₃) for the Hessian (weights θ₀² N³)
        third = st.n_inv[:, 0, 0] if intercepts_only(blocks) else None
        total, total3 = 0.0, 0.0
        for start in range(0, len(ws.flat), CHUNK):  # bounded temporaries
            part = slice(start, start + CHUNK)
            vals = flat_sig[ws.flat[part]]
            halve_diagonal(vals, ws.first, start)
            vals *= ws.prod[part, 0, 0]
            lev = ws.level[part]
            vals *= coef[lev]
            total += float(vals.sum())
            if third is not None:
                total3 += float(third[lev] @ vals)
        pbar0 = np.array([[st.n_inv[:, 0, 0].sum() + 2.0 * total]])
        ws.cache["last"].tr_k3 = 2.0 * total3
    else:
        vals = flat_sig[ws.flat]
        halve_diagonal(vals, ws.first, 0)
        r = np.stack(
            [
                np.bincount(ws.level, weights=vals * ws.prod[:, a, b], minlength=q1)
                for a in range(p1)
                for b in range(p1)
            ],
            axis=1,
        ).reshape(q1, p1, p1)
        qmat = r + r.transpose(0, 2, 1)
        tn = np.einsum("ac,lci->lai", st.t[0], st.n_inv)  # T₀ N_l
        pbar0 = st.n_inv.sum(axis=0) + np.einsum("lai,lab,lbj->ij", tn, qmat, tn)
    pbars[0] = pbar0
    ws.cache["last"].pbars = pbars
    grad = np.zeros_like(theta)
    pos = 0
    fallback: list[int] = []
    for k, entries in enumerate(blocks.free):
        tk = st.t[k]
        sk = us[k].T @ us[k]
        inner = blocks.levels[k] * np.eye(blocks.widths[k]) - pbars[k] - sk / sigma2
        dg = np.abs(np.diag(tk))
        if np.all(dg > 0):
            gk = 2.0 * sla.solve_triangular(tk, inner, lower=True, trans="T", check_finite=False)
            for a, (i, j) in enumerate(entries):
                grad[pos + a] = gk[i, j]
        elif blocks.widths[k] > 1:
            fallback.extend(range(pos, pos + len(entries)))
        pos += len(entries)
    for i in fallback:
        h = 1e-6 * max(1.0, abs(theta[i]))
        e = np.zeros_like(theta)
        e[i] = h
        grad[i] = (
            objective(blocks, ws, theta + e, reml) - objective(blocks, ws, theta - e, reml)
        ) / (2 * h)
    return f, grad
