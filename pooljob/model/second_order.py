"""Second-order MSE of unit-level EBLUPs: the Prasad–Rao ``g3`` term, for random intercepts.

The model is ``y = Xβ + Σ_k Z_k b_k + ε`` with ``b_k ~ N(0, τ²_k I)`` (one
random intercept per grouping, nested or crossed) and ``ε ~ N(0, σ² I)``;
``ψ = (σ², τ²_1, …, τ²_K)``.  A published group estimate is the EBLUP
``t̂ = āᵀβ̂ + aᵀb̂`` with ``a = Zᵀ1_g / n_g`` (the mean over the group's rows
of the fitted values: ``a_v`` is the share of the group's rows in level
``v``).  Its second-order mean squared error (Prasad & Rao 1990; Datta &
Lahiri 2000, REML)::

    MSE = g1 + g2 + 2 g3
    g1 + g2 = std_error²        (Henderson's prediction error variance at ψ̂)
    g3      = tr[ Cov(∂t̃/∂ψ) · I(ψ)⁻¹ ]

where ``t̃ = āᵀβ + aᵀ b̃(ψ)`` is the BLUP with β known and ``I(ψ)`` the
Fisher information ``½ tr(V⁻¹V_iV⁻¹V_j)``, whose inverse is the asymptotic
covariance of the REML (and ML) estimates — as Prasad & Rao (1990), Rao &
Molina (2015, §7.2), ``sae::mseFH`` (``Var(Â) = 2/Σ w_i²``) and
:mod:`pooljob.model.area` take them; the parts they leave out (β̂'s share of
the derivative, REML's correction of the information) are of lower order.
So ``g3`` depends on the fixed effects only through ``ψ̂``.  With
``Λ = diag(σ²/τ²_k)``, ``M_z = ZᵀZ + Λ``, ``h = M_z⁻¹ a`` and ``r = Λh``::

    b̃ = M_z⁻¹ Zᵀ(y − Xβ),         Cov(b̃) = Γ S_z Γ / σ²,  Γ = diag(τ²_k)
    S_z = ZᵀZ − ZᵀZ M_z⁻¹ ZᵀZ      (= σ² ZᵀV⁻¹Z)
    ∂t̃/∂ψ_i = −hᵀ (∂M_z/∂ψ_i) b̃,  so  Γ (∂M_z/∂ψ_i) h = y_i  with
    y_σ² = h,   y_τ²_k = −r restricted to grouping k
    Cov(∂t̃/∂ψ_i, ∂t̃/∂ψ_j) = y_iᵀ S_z y_j / σ²

and, with ``σ²V⁻¹ = I − Z M_z⁻¹ Zᵀ``, ``F = M_z⁻¹ ZᵀZ`` and ``R = ZᵀZ``
(so ``S_z = R − RF``), the information (``V_σ² = I``, ``V_τ²_k = Z_kZ_kᵀ``)::

    I_σ²σ²     = ½ σ⁻⁴ [N − 2 tr F + tr(F F)]
    I_σ²τ²_k   = ½ σ⁻⁴ Σ_{i∈k} (R − 2RF + FᵀRF)_ii
    I_τ²_kτ²_l = ½ σ⁻⁴ Σ_{i∈k, j∈l} (S_z)_ij²

Every system is solved in the form ``(ZᵀZ Θ² + I) r = a`` with
``Θ² = diag(τ²_k/σ²)``, ``h = Θ² r``, which stays regular at a boundary
``τ²_k = 0``.  For the nested-error (Battese–Harter–Fuller) model with one
grouping ``g3`` is Prasad & Rao's closed form
``n⁻²(τ² + σ²/n)⁻³ [σ⁴ V_ττ + τ⁴ V_σσ − 2σ²τ² V_στ]``, ``V = I⁻¹``, computed
so (:func:`one_grouping_g3`), linear in the groups.

Several groupings are computed densely within each connected block of
``ZᵀZ`` (a top-level group's subtree for nested groupings; all the levels
of crossed ones), ``O(Σ q_c³)``, refused where a block has more than
:data:`MAX_LEVELS` levels: with that many groups ``g3`` is ``O(1/groups)``,
negligible next to ``g1``.
Pure numerics: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pooljob.errors import InputError

Array = NDArray[np.float64]
Codes = NDArray[np.int64]

#: The most random-effect levels in one connected block the dense g3 handles.
MAX_LEVELS = 3000


@dataclass(frozen=True)
class Henderson:
    """The random effects' cross-products of a random-intercept model, its variances.

    Attributes
    ----------
    rzz : ndarray, (q, q)
        ``ZᵀZ``: rows shared by each pair of levels (all groupings' levels).
    nobs : float
        ``N``, the rows.
    grouping : ndarray of int, (q,)
        The grouping (0 … K−1) each level belongs to.
    tau2 : ndarray, (K,)
        ``τ²_k`` at the estimates.
    sigma2 : float
        ``σ²`` at the estimates.
    """

    rzz: Array
    nobs: float
    grouping: Codes
    tau2: Array
    sigma2: float


def check_size(levels: int) -> None:
    """Refuse a block of levels too large for the dense g3 (module docstring), in one line."""
    if levels > MAX_LEVELS:
        raise InputError(
            f'interval_method = "prasad-rao" is computed densely for at most {MAX_LEVELS:,} '
            f"connected random-effect levels (of all groupings), and this model has {levels:,} "
            "(levels are connected when they share rows: crossed groupings, or one top-level "
            'group\'s subtree); its correction is O(1/groups) there: use interval_method = "plugin"'
        )


def _inverse(info: Array) -> Array:
    """``I⁻¹``; a one-line error where the variance components are not identified apart."""
    if not np.all(np.isfinite(info)) or np.linalg.cond(info) > 1e12:
        raise InputError(
            'interval_method = "prasad-rao" needs variance components the data tell apart, '
            "and their information matrix is singular here (a grouping whose levels each hold "
            "one level of the next, or one row per group): simplify the model or use "
            'interval_method = "plugin"'
        )
    return np.asarray(np.linalg.inv(info), dtype=np.float64)


def information(h: Henderson) -> Array:
    """The Fisher information of ``ψ = (σ², τ²_1, …, τ²_K)`` (module docstring), dense."""
    return _terms(h.rzz[None], np.array([h.nobs]), h.grouping[None], h.tau2, h.sigma2)[0]


def level_g3(h: Henderson) -> Array:
    """``g3`` of the estimate of every level (the mean of its rows' fitted values), shape (q,).

    Dense in all the levels of ``h``: at most :data:`MAX_LEVELS`.
    """
    check_size(h.rzz.shape[0])
    info, phi = _terms(h.rzz[None], np.array([h.nobs]), h.grouping[None], h.tau2, h.sigma2)
    return np.asarray(np.einsum("ij,ijg->g", _inverse(info), phi[0]), dtype=np.float64)


def _terms(
    rzz: Array, nobs: Array, grouping: Codes, tau2: Array, sigma2: float
) -> tuple[Array, Array]:
    """The information and ``Φ_ij = Cov(∂t̃/∂ψ_i, ∂t̃/∂ψ_j)`` of a stack of blocks of ``ZᵀZ``.

    ``rzz`` (B, q, q) holds B blocks of ``q`` levels each, ``nobs`` (B,)
    their rows, ``grouping`` (B, q) their levels' groupings.  Returns the
    information summed over the blocks, (K+1, K+1), and ``Φ`` of every
    level, (B, K+1, K+1, q).  ``a`` of level ``u`` is ``ZᵀZ[:, u] / n_u``
    (module docstring), so one solve ``(ZᵀZ Θ² + I)⁻¹ ZᵀZ`` gives ``r`` (its
    columns over ``n_u``), ``F`` and ``S_z``.
    """
    b, q, _ = rzz.shape
    k = len(tau2)
    s = tau2[grouping] / sigma2  # Θ², (B, q)
    solved = np.linalg.solve(rzz * s[:, None, :] + np.eye(q), rzz)
    f = s[:, :, None] * solved
    rf = rzz @ f
    s_z = rzz - rf
    r = solved / np.einsum("bii->bi", rzz)[:, None, :]
    # y_τ²_j = −E_j r, y_σ² = Θ² r = −Σ_j (τ²_j/σ²) y_τ²_j
    masks = [(grouping == j).astype(np.float64) for j in range(k)]
    ys = [-m[:, :, None] * r for m in masks]
    sy = [s_z @ y for y in ys]
    ratio = tau2 / sigma2
    ys.insert(0, -sum((ratio[j] * ys[j] for j in range(k)), np.zeros_like(r)))
    sy.insert(0, -sum((ratio[j] * sy[j] for j in range(k)), np.zeros_like(r)))
    phi = np.zeros((b, k + 1, k + 1, q))
    for i in range(k + 1):
        for j in range(i, k + 1):
            phi[:, i, j] = phi[:, j, i] = np.einsum("big,big->bg", ys[i], sy[j]) / sigma2
    info = np.zeros((k + 1, k + 1))
    trace_f = np.einsum("bii->", f)
    info[0, 0] = float(nobs.sum()) - 2.0 * trace_f + float(np.einsum("bij,bji->", f, f))
    diag = np.einsum("bii->bi", s_z) - np.einsum("bii->bi", rf) + np.einsum("bji,bji->bi", f, rf)
    squares = s_z**2
    for a in range(k):
        info[0, a + 1] = info[a + 1, 0] = float(np.sum(diag * masks[a]))
        for c in range(a, k):
            total = float(np.einsum("bi,bij,bj->", masks[a], squares, masks[c]))
            info[a + 1, c + 1] = info[c + 1, a + 1] = total
    return np.asarray(0.5 * info / sigma2**2, dtype=np.float64), phi


def one_grouping_g3(n: Array, tau2: float, sigma2: float) -> Array:
    """``g3`` of each group of the one-grouping (nested-error) model, linear in the groups.

    With ``s = τ²/σ²``, ``S_j = n_j/(1 + n_j s)`` and ``α_j = σ² + n_j τ²``
    the information is ``I_ττ = ½ Σ n_j²/α_j²``, ``I_στ = ½ Σ n_j/α_j²``,
    ``I_σσ = ½ Σ [(n_j − 1)/σ⁴ + 1/α_j²]``, and with ``V = I⁻¹``::

        g3_j = n_j⁻² (τ² + σ²/n_j)⁻³ [σ⁴ V_ττ + τ⁴ V_σσ − 2σ²τ² V_στ]

    (Prasad & Rao 1990; Rao & Molina 2015, §7.2), the general formula of
    the module docstring with ``ZᵀZ = diag(n_j)``.
    """
    alpha = sigma2 + n * tau2
    info = 0.5 * np.array(
        [
            [float(np.sum((n - 1.0) / sigma2**2 + 1.0 / alpha**2)), float(np.sum(n / alpha**2))],
            [float(np.sum(n / alpha**2)), float(np.sum(n**2 / alpha**2))],
        ]
    )
    v = _inverse(info)
    bracket = sigma2**2 * v[1, 1] + tau2**2 * v[0, 0] - 2.0 * sigma2 * tau2 * v[0, 1]
    return np.asarray(bracket / (n**2 * (tau2 + sigma2 / n) ** 3), dtype=np.float64)


def tree_g3(n: Array, parents: tuple[Codes, ...], tau2: Array, sigma2: float) -> Array:
    """``g3`` of every group of a nested tree (leaf counts ``n``, ``parents`` top first).

    Top level first, as the tree's levels: :func:`cells_g3` with the leaves
    as cells (one level: :func:`one_grouping_g3`; several: dense within each
    top-level group's subtree).
    """
    depth = len(parents)
    anc = [np.arange(len(parents[-1]), dtype=np.int64)]  # each leaf's node at every level
    for lev in range(depth - 1, 0, -1):
        anc.append(parents[lev][anc[-1]])
    return cells_g3(n, anc[::-1], tau2, sigma2, [len(pa) for pa in parents])


def cells_g3(
    rows: Array,
    codes: list[Codes],
    tau2: Array,
    sigma2: float,
    sizes: list[int] | None = None,
) -> Array:
    """``g3`` of every level of every grouping, from units (cells, or a tree's leaves).

    ``rows`` per unit, ``codes[k]`` each unit's level of grouping ``k``
    (``sizes[k]`` levels, default the largest code + 1); groupings in the
    order of ``codes``, levels in code order.  One grouping:
    :func:`one_grouping_g3`.  Several: ``ZᵀZ`` is block-diagonal over the
    connected components of the levels (two levels are connected when they
    share a unit: a top-level group's subtree for nested groupings, all
    levels for well-crossed ones); the information adds up over the
    components and ``Φ`` is local, so each component is dense on its own
    (:data:`MAX_LEVELS` applies to the largest): ``O(Σ_c q_c³)``.
    """
    if sizes is None:
        sizes = [int(c.max()) + 1 if len(c) else 0 for c in codes]
    if len(codes) == 1:
        n = np.asarray(np.bincount(codes[0], rows, sizes[0]), dtype=np.float64)
        return one_grouping_g3(n, float(tau2[0]), sigma2)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    q = int(offsets[-1])
    columns = [offsets[k] + c for k, c in enumerate(codes)]
    edges_a = np.concatenate([columns[0]] * (len(codes) - 1))
    graph = coo_matrix(
        (np.ones(len(edges_a)), (edges_a, np.concatenate(columns[1:]))), shape=(q, q)
    )
    n_blocks, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")  # the levels block by block
    start = np.searchsorted(label[order], np.arange(n_blocks))
    size = np.diff(np.append(start, q))
    check_size(int(size.max()))
    rank = np.empty(q, dtype=np.int64)
    rank[order] = np.arange(q) - np.repeat(start, size)  # a level's place in its block
    unit_block = label[columns[0]]
    grouping = np.repeat(np.arange(len(codes), dtype=np.int64), sizes)
    k = len(codes)
    info = np.zeros((k + 1, k + 1))
    phi = np.zeros((k + 1, k + 1, q))
    # blocks of the same size are stacked, at most ~4M entries of ZᵀZ at a time
    for width in np.unique(size):
        blocks = np.flatnonzero(size == width)
        step = max(1, 4_000_000 // int(width) ** 2)
        for first in range(0, len(blocks), step):
            part = blocks[first : first + step]
            slot = np.full(n_blocks, -1, dtype=np.int64)
            slot[part] = np.arange(len(part))
            units = np.flatnonzero(slot[unit_block] >= 0)
            where = slot[unit_block[units]]
            rzz = np.zeros((len(part), int(width), int(width)))
            for ca in columns:
                for cb in columns:
                    np.add.at(rzz, (where, rank[ca[units]], rank[cb[units]]), rows[units])
            levels = order[start[part][:, None] + np.arange(width)]  # (B, width) global ids
            nobs = np.asarray(np.bincount(where, rows[units], len(part)), dtype=np.float64)
            part_info, part_phi = _terms(rzz, nobs, grouping[levels], tau2, sigma2)
            info += part_info
            phi[:, :, levels.ravel()] = part_phi.transpose(1, 2, 0, 3).reshape(k + 1, k + 1, -1)
    return np.asarray(np.einsum("ij,ijg->g", _inverse(info), phi), dtype=np.float64)


def split_levels(values: Array, sizes: list[int]) -> list[Array]:
    """``values`` over all levels, split per grouping (in the Henderson's order)."""
    bounds = np.cumsum([0, *sizes])
    return [values[bounds[k] : bounds[k + 1]] for k in range(len(sizes))]
