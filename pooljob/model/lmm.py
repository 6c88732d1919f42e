"""General linear mixed models from cross-product blocks: lme4's criterion, blocked.

The model is ``y = Xβ + Σ_k Z_k b_k + ε`` with ``b_k = Λ_k u_k``,
``u ~ N(0, σ² I)``, and ``Λ_k = I_{q_k} ⊗ T_k`` for a lower-triangular
``p_k × p_k`` template ``T_k`` set by θ.  lme4 and MixedModels.jl evaluate
the profiled criterion from ``A = [Z X y]'[Z X y]`` only::

    L Lᵀ = Λ'Z'ZΛ + I
    −2ℓ_ML   = log|L|² + n (1 + log(2π r²/n))
    −2ℓ_REML = log|L|² + log|R_X|² + (n − p)(1 + log(2π r²/(n − p)))

with ``R_X`` the Cholesky factor of ``X'X`` after the random effects are
swept out and ``r²`` the penalised residual sum of squares.  The blocks of
``A`` are sums over cells (``blocks.py``).  The grouping with the most
columns comes first: its block of ``L`` is block-diagonal (one
``p₁ × p₁`` factor per level); the others form one dense block, the Schur
complement ``Λ₂'Z₂'Z₂Λ₂ + I − L₂₁L₂₁ᵀ`` (MixedModels.jl's blocked Cholesky).

This module is pure numerics (numpy, scipy): no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.linalg import lapack

from pooljob.model.blocks import Blocks, pair_positions, set_symmetric

Array = NDArray[np.float64]

#: Largest dense block (levels × columns of all but the biggest grouping).
MAX_DENSE = 25_000


def templates(blocks: Blocks, theta: Array) -> list[Array]:
    """``T_k`` for every block from θ (free entries in lme4's order)."""
    out = []
    pos = 0
    for entries, p in zip(blocks.free, blocks.widths, strict=True):
        t = np.zeros((p, p))
        for i, j in entries:
            t[i, j] = theta[pos]
            pos += 1
        out.append(t)
    return out


@dataclass
class Factor:
    """The blocked Cholesky factor at one θ and what the solutions need."""

    t: list[Array]
    l11: Array  # (q1, p1, p1)
    l21: sp.csr_matrix | None  # (m, q1 p1)
    l22: Array | None  # (m, m)
    lx1: Array  # (q1 p1, p + 1)
    lx2: Array | None  # (m, p + 1)
    lxy: Array  # (p + 1, p + 1)
    logdet_l: float


def factorize(blocks: Blocks, theta: Array) -> Factor:
    """Blocked Cholesky of ``[ΛZ X y]'[ΛZ X y] + diag(I, 0)`` at θ."""
    t = templates(blocks, theta)
    p = blocks.xtx.shape[0] - 1
    if not blocks.n_blocks:
        lxy = np.asarray(np.linalg.cholesky(blocks.xtx), dtype=np.float64)
        return Factor(t, np.zeros((0, 0, 0)), None, None, np.zeros((0, p + 1)), None, lxy, 0.0)
    t1 = t[0]
    q1, p1 = blocks.levels[0], blocks.widths[0]
    a11 = np.einsum("ji,ljk,km->lim", t1, blocks.ztz[0], t1) + np.eye(p1)
    l11 = np.linalg.cholesky(a11)
    logdet = 2.0 * float(np.log(np.einsum("lii->li", l11)).sum())
    rhs1 = np.einsum("ji,ljk->lik", t1, blocks.ztxy[0])
    lx1 = np.linalg.solve(l11, rhs1).reshape(q1 * p1, p + 1)
    if blocks.n_blocks == 1:
        xyxy = blocks.xtx - lx1.T @ lx1
        lxy = np.asarray(np.linalg.cholesky(xyxy), dtype=np.float64)
        return Factor(t, l11, None, None, lx1, None, lxy, logdet)
    m = blocks.dense_size
    a22 = np.eye(m)
    off = blocks.offsets
    for k in range(1, blocks.n_blocks):
        tk, pk = t[k], blocks.widths[k]
        d = np.einsum("ji,ljk,km->lim", tk, blocks.ztz[k], tk)
        idx = off[k] + np.arange(blocks.levels[k] * pk).reshape(blocks.levels[k], pk)
        a22[idx[:, :, None], idx[:, None, :]] += d
    for (k, j), pair in blocks.pairs.items():
        if k == 0:
            continue
        v = np.einsum("ji,pjk,km->pim", t[k], pair.values, t[j])
        # off the diagonal blocks: a22 is 0 there, and each position is set once
        set_symmetric(a22, *pair_positions(blocks, k, j), v)
    inv11 = np.linalg.inv(l11)
    data, rr, cc = [], [], []
    for (k, j), pair in blocks.pairs.items():
        if k != 0:
            continue
        # pair of block 0 (a-side) and block j (b-side): A_j0 = T_j' Z_j'Z_0 T_0
        v = np.einsum("ji,pkj,km->pim", t[j], pair.values, t1)
        w = np.einsum("pim,pkm->pik", v, inv11[pair.codes_a])
        rows = off[j] + pair.codes_b[:, None] * blocks.widths[j] + np.arange(blocks.widths[j])
        cols = pair.codes_a[:, None] * p1 + np.arange(p1)
        rr.append(np.broadcast_to(rows[:, :, None], w.shape).ravel())
        cc.append(np.broadcast_to(cols[:, None, :], w.shape).ravel())
        data.append(w.ravel())
    l21 = sp.csr_matrix(
        (np.concatenate(data), (np.concatenate(rr), np.concatenate(cc))), shape=(m, q1 * p1)
    )
    schur = a22 - (l21 @ l21.T).toarray()
    l22 = np.linalg.cholesky(schur)
    logdet += 2.0 * float(np.log(np.diag(l22)).sum())
    rhs2 = np.concatenate(
        [
            np.einsum("ji,ljk->lik", t[k], blocks.ztxy[k]).reshape(-1, p + 1)
            for k in range(1, blocks.n_blocks)
        ]
    )
    lx2 = sla.solve_triangular(l22, rhs2 - l21 @ lx1, lower=True, check_finite=False)
    xyxy = blocks.xtx - lx1.T @ lx1 - lx2.T @ lx2
    lxy = np.asarray(np.linalg.cholesky(xyxy), dtype=np.float64)
    return Factor(t, l11, l21, l22, lx1, lx2, lxy, logdet)


def objective_from(f: Factor, n: float, reml: bool) -> float:
    """lme4's REML criterion or −2 log-likelihood from the factor."""
    p = f.lxy.shape[0] - 1
    r2 = f.lxy[p, p] ** 2
    if reml:
        nu = n - p
        logdet_x = 2.0 * float(np.log(np.diag(f.lxy)[:p]).sum())
        return float(f.logdet_l + logdet_x + nu * (1.0 + np.log(2.0 * np.pi * r2 / nu)))
    return float(f.logdet_l + n * (1.0 + np.log(2.0 * np.pi * r2 / n)))


def objective(blocks: Blocks, theta: Array, reml: bool) -> float:
    """The profiled criterion at θ (pure: blocks and θ in, a number out)."""
    try:
        f = factorize(blocks, np.asarray(theta, dtype=np.float64))
    except np.linalg.LinAlgError:
        return float("inf")
    return objective_from(f, blocks.n, reml)


@dataclass(frozen=True)
class Solution:
    """Estimates at θ̂, in the (possibly centred) parametrisation of the blocks.

    Attributes
    ----------
    beta, vcov : fixed effects and their covariance.
    sigma2 : residual variance.
    b : per block, the conditional modes, shape (q_k, p_k).
    cond_var : per block, ``Var(b | y)``, shape (q_k, p_k, p_k).
    factor : the blocked factor at θ.
    pev : optional, the prediction error variances of :func:`prediction_variance`
        computed another way (:mod:`pooljob.model.profiled_solve`, whose
        ``factor`` then leaves out its dense blocks).
    mean_pev : optional, ``mean_pev(k, n)``: the prediction error variances of
        the means of the fitted values over each level's rows of block k
        (``n`` their weights), by :func:`mean_prediction_variance`, and which
        of them are well conditioned (the others need :func:`prediction_variance`).
    """

    beta: Array
    vcov: Array
    sigma2: float
    b: list[Array]
    cond_var: list[Array]
    factor: Factor
    pev: Callable[[Array, list[sp.csr_matrix]], Array] | None = None
    mean_pev: Callable[[int, Array], tuple[Array, NDArray[np.bool_]]] | None = None


def solve(blocks: Blocks, theta: Array, reml: bool) -> Solution:
    """β̂, σ̂², conditional modes and conditional variances at θ."""
    f = factorize(blocks, theta)
    p = f.lxy.shape[0] - 1
    sigma2, beta, vcov = fixed_effects(f.lxy, blocks.n, reml)
    if not blocks.n_blocks:
        return Solution(beta, vcov, sigma2, [], [], f)
    q1, p1 = blocks.levels[0], blocks.widths[0]
    c1 = f.lx1[:, p] - f.lx1[:, :p] @ beta
    inv11 = np.linalg.inv(f.l11)
    if f.l22 is not None and f.lx2 is not None and f.l21 is not None:
        c2 = f.lx2[:, p] - f.lx2[:, :p] @ beta
        u2 = sla.solve_triangular(f.l22.T, c2, lower=False, check_finite=False)
        c1 = c1 - f.l21.T @ u2
        sigma22 = _inverse_from_cholesky(f.l22)
    u1 = np.einsum("lji,lj->li", inv11, c1.reshape(q1, p1))
    # Var(u1 | y) per level: L11⁻ᵀ (I + L21ᵀ Σ22 L21) L11⁻¹
    inner = np.broadcast_to(np.eye(p1), (q1, p1, p1)).copy()
    if f.l21 is not None:
        inner += _diag_blocks(f.l21, sigma22, q1, p1)
    var_u1 = np.einsum("lji,ljk,lkm->lim", inv11, inner, inv11)
    b = [u1 @ f.t[0].T]
    cond_var = [sigma2 * np.einsum("ij,ljk,mk->lim", f.t[0], var_u1, f.t[0])]
    for k in range(1, blocks.n_blocks):
        qk, pk = blocks.levels[k], blocks.widths[k]
        sl = slice(blocks.offsets[k], blocks.offsets[k] + qk * pk)
        uk = u2[sl].reshape(qk, pk)
        b.append(uk @ f.t[k].T)
        idx = np.arange(qk * pk).reshape(qk, pk) + blocks.offsets[k]
        vk = sigma22[idx[:, :, None], idx[:, None, :]]
        cond_var.append(sigma2 * np.einsum("ij,ljk,mk->lim", f.t[k], vk, f.t[k]))
    return Solution(beta, vcov, sigma2, b, cond_var, f)


def fixed_effects(lxy: Array, n: float, reml: bool) -> tuple[float, Array, Array]:
    """``σ̂²``, ``β̂`` and ``Var(β̂)`` from the ``[X y]`` corner of the factor.

    With ``lxy = [[R_X, 0], [c_xᵀ, r]]`` (lower triangular, ``p + 1`` square):
    ``σ̂² = r² / (n − p)`` (REML) or ``r² / n`` (ML), ``β̂ = R_X⁻ᵀ c_x`` and
    ``Var(β̂) = σ̂² R_X⁻ᵀ R_X⁻¹``.
    """
    p = lxy.shape[0] - 1
    rl, cx, r2 = lxy[:p, :p], lxy[p, :p], lxy[p, p] ** 2
    sigma2 = float(r2 / (n - p if reml else n))
    beta = sla.solve_triangular(rl.T, cx, lower=False, check_finite=False) if p else np.zeros(0)
    rinv = (
        sla.solve_triangular(rl, np.eye(p), lower=True, check_finite=False)
        if p
        else np.zeros((0, 0))
    )
    return sigma2, beta, sigma2 * (rinv.T @ rinv)


def _inverse_from_cholesky(factor: Array) -> Array:
    """``(L Lᵀ)⁻¹`` from the lower Cholesky factor ``L`` (LAPACK ``potri``), symmetric."""
    inv, info = lapack.dpotri(np.asfortranarray(factor), lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"potri failed (info {info})")
    return np.asarray(np.tril(inv) + np.tril(inv, -1).T, dtype=np.float64)


def quadratic_forms(rows: sp.csr_matrix, sigma: Array) -> Array:
    """``r Σ rᵀ`` for every row ``r`` of a sparse matrix, gathering Σ on each row's pattern.

    ``sigma`` is square and holds a **symmetric** Σ in its leading block (the
    rest unused), in either memory order: entry ``(i, j)`` is read at
    ``i + j·ld`` of the flat buffer (``ld`` its order), which is ``Σ_ij`` in
    column-major order and ``Σ_ji = Σ_ij`` in row-major order.  One gather
    per group of rows with as many non-zeros (cheaper than 2-D fancy indexing).
    """
    flat, ld = sigma.ravel(order="A"), sigma.shape[0]
    out = np.zeros(rows.shape[0])
    counts = np.diff(rows.indptr)
    for c in np.unique(counts[counts > 0]):
        sel = np.flatnonzero(counts == c)
        step = max(1, 5_000_000 // int(c * c))  # rows per gather of c × c entries
        for start in range(0, len(sel), step):
            part = sel[start : start + step]
            pos = rows.indptr[part][:, None] + np.arange(c)
            idx, val = rows.indices[pos], rows.data[pos]
            block = flat[idx[:, :, None] + ld * idx[:, None, :]]
            out[part] = np.einsum("ki,kij,kj->k", val, block, val)
    return out


def _diag_blocks(l21: sp.csr_matrix, sigma22: Array, q1: int, p1: int) -> Array:
    """Diagonal ``p1 × p1`` blocks of ``L21ᵀ Σ22 L21``, in column chunks."""
    if p1 == 1:
        return quadratic_forms(l21.T.tocsr(), sigma22).reshape(q1, 1, 1)
    out = np.zeros((q1, p1, p1))
    csc = l21.tocsc()
    step = max(p1, (20_000_000 // max(1, sigma22.shape[0])) // p1 * p1)
    for start in range(0, q1 * p1, step):
        stop = min(q1 * p1, start + step)
        part = csc[:, start:stop]
        g = (part.T @ sigma22).T  # (m, cols)
        lv = (stop - start) // p1
        for i in range(p1):
            for j in range(p1):
                prod = part[:, i::p1].multiply(g[:, j::p1])
                out[start // p1 : start // p1 + lv, i, j] = np.asarray(prod.sum(axis=0)).ravel()
    return out


#: :func:`mean_prediction_variance` trusts a level whose numerator is at least this
#: share of its largest term (below, the subtraction loses too many digits).
MEAN_PEV_CANCELLATION = 1e-4


def mean_prediction_variance(
    sigma2: float, t: Array, full: Array, n: Array
) -> tuple[Array, NDArray[np.bool_]]:
    """Prediction error variances of each level's mean of the fitted values, from its own block.

    For a block whose first column is the level's intercept (the indicator of
    its rows), the mean of the fitted values over level g's rows is
    ``aᵀ(b, β)`` with ``a = G e_g / n_g`` (``G = [Z X]'W[Z X]``, ``e_g`` the
    intercept column of level g, ``n_g = G_gg`` its rows' weight).  With
    Henderson's matrix in lme4's scale ``Ω = Λ̃ᵀGΛ̃ + J`` (``J`` the identity
    on the random effects) ``Λ̃ᵀ a = (Ω − J) v / n_g``, ``v = Λ̃⁻¹ e_g``,
    so, with ``Σ_g`` the level's block of ``Ω⁻¹`` (β's uncertainty included)
    and ``v_g = T⁻¹ e₀`` its part of ``v``,

        PEV_g = σ² aᵀΛ̃ Ω⁻¹ Λ̃ᵀa = σ² (n_g − ‖v_g‖² + v_gᵀ Σ_g v_g) / n_g².

    Parameters
    ----------
    sigma2 : σ̂².
    t : (p_k, p_k) the block's template ``T`` (lower triangular, invertible).
    full : (q_k, p_k, p_k) the blocks ``Σ_g`` of ``Ω⁻¹``.
    n : (q_k,) the weights ``n_g``.

    Returns
    -------
    pev : (q_k,) the variances.
    ok : (q_k,) whether the numerator keeps at least ``MEAN_PEV_CANCELLATION``
        of ``n_g + ‖v_g‖²`` (else the subtraction is ill conditioned, e.g. a
        template near 0, and the level needs :func:`prediction_variance`).
    """
    v = sla.solve_triangular(t, np.eye(t.shape[0])[:, 0], lower=True, check_finite=False)
    vv = float(v @ v)
    quad = np.einsum("a,lab,b->l", v, full, v)
    num = n - vv + quad
    ok = np.asarray(num >= MEAN_PEV_CANCELLATION * (n + vv), dtype=np.bool_)
    return np.asarray(sigma2 * num / n**2, dtype=np.float64), ok


def prediction_variance(
    blocks: Blocks, sol: Solution, a_fixed: Array, a_random: list[sp.csr_matrix]
) -> Array:
    """Prediction error variances ``σ² aᵀ M⁻¹ a`` of linear combinations of (b, β).

    ``M`` is Henderson's coefficient matrix in lme4's scale (``L_f L_fᵀ``
    with ``L_f`` the full blocked factor including ``X``), so the variance
    includes the uncertainty of β̂ (the g1 + g2 terms of an EBLUP's MSE).

    Parameters
    ----------
    a_fixed : ndarray, shape (p, G)
        Coefficients of β for each of G combinations.
    a_random : list of sparse, shape (q_k p_k, G)
        Coefficients of each block's ``b`` (not ``u``).
    """
    if sol.pev is not None:
        return sol.pev(a_fixed, a_random)
    f = sol.factor
    p = f.lxy.shape[0] - 1
    g_total = a_fixed.shape[1]
    out = np.zeros(g_total)
    rl = f.lxy[:p, :p]
    v1_all: sp.csr_matrix | None = None
    if blocks.n_blocks:
        # block 1 stays sparse: v1 = blockdiag(L11⁻¹ T1ᵀ) a1, one small block per level
        q1, p1 = blocks.levels[0], blocks.widths[0]
        per_level = np.linalg.solve(f.l11, np.broadcast_to(f.t[0].T, (q1, p1, p1)))
        rows = np.repeat(np.arange(q1 * p1), p1)
        cols = (
            (np.arange(q1)[:, None, None] * p1 + np.arange(p1)[None, None, :])
            .repeat(p1, axis=1)
            .ravel()
        )
        bdiag = sp.csr_matrix((per_level.ravel(), (rows, cols)), shape=(q1 * p1, q1 * p1))
        v1_all = (bdiag @ a_random[0]).tocsc()
    chunk = 1024
    for start in range(0, g_total, chunk):
        stop = min(g_total, start + chunk)
        ax = a_fixed[:, start:stop]
        total = np.zeros(stop - start)
        rhs_x = ax
        if v1_all is not None:
            v1 = v1_all[:, start:stop]
            total += np.asarray(v1.multiply(v1).sum(axis=0)).ravel()
            rhs_x = ax - np.asarray((v1.T @ f.lx1[:, :p]).T)
            if f.l22 is not None and f.l21 is not None and f.lx2 is not None:
                parts = []
                for k in range(1, blocks.n_blocks):
                    qk, pk = blocks.levels[k], blocks.widths[k]
                    ak = a_random[k][:, start:stop].toarray().reshape(qk, pk, -1)
                    parts.append(np.einsum("ji,ljg->lig", f.t[k], ak).reshape(qk * pk, -1))
                rhs2 = np.concatenate(parts) - np.asarray((f.l21 @ v1).toarray())
                v2 = sla.solve_triangular(f.l22, rhs2, lower=True, check_finite=False)
                total += (v2**2).sum(axis=0)
                rhs_x = rhs_x - f.lx2[:, :p].T @ v2
        if p:
            vx = sla.solve_triangular(rl, rhs_x, lower=True, check_finite=False)
            total += (vx**2).sum(axis=0)
        out[start:stop] = sol.sigma2 * total
    return out
