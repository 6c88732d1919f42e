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

where ``t̃ = āᵀβ + aᵀ b̃(ψ)`` is the BLUP with β known (as Prasad & Rao,
``sae::mseFH`` and :mod:`pooljob.model.area` take it; the β̂ part of the
derivative is of lower order) and ``I(ψ)`` the expected REML information.
With ``R = WᵀW`` (``W = [X Z]``), ``Λ = diag(σ²/τ²_k)`` on the random part,
``M_z = ZᵀZ + Λ``, ``h = M_z⁻¹ a`` and ``r = Λh``::

    b̃ = M_z⁻¹ Zᵀ(y − Xβ),         Cov(b̃) = Γ S_z Γ / σ²,  Γ = diag(τ²_k)
    S_z = ZᵀZ − ZᵀZ M_z⁻¹ ZᵀZ      (= σ² ZᵀV⁻¹Z)
    ∂t̃/∂ψ_i = −hᵀ (∂M_z/∂ψ_i) b̃,  so  Γ (∂M_z/∂ψ_i) h = y_i  with
    y_σ² = h,   y_τ²_k = −r restricted to grouping k
    Cov(∂t̃/∂ψ_i, ∂t̃/∂ψ_j) = y_iᵀ S_z y_j / σ²

and, with ``P = σ⁻²(I − W M⁻¹ Wᵀ)``, ``M = R + diag(0, Λ)``, ``F = M⁻¹R``,
``T = R − RF`` (``= σ² WᵀPW``), the information ``I_ij = ½ tr(P V_i P V_j)``::

    I_σ²σ²   = ½ σ⁻⁴ [N − 2 tr F + tr(F F)]
    I_σ²τ²_k = ½ σ⁻⁴ Σ_{i∈k} (R − 2RF + FᵀRF)_ii
    I_τ²_kτ²_l = ½ σ⁻⁴ Σ_{i∈k, j∈l} T_ij²

Every system is solved in the form ``(ZᵀZ Θ² + I) r = a`` with
``Θ² = diag(τ²_k/σ²)``, ``h = Θ² r``, which stays regular at a boundary
``τ²_k = 0``.  For the nested-error (Battese–Harter–Fuller) model with one
grouping ``g3`` is Prasad & Rao's closed form
``n⁻²(τ² + σ²/n)⁻³ [σ⁴ V_ττ + τ⁴ V_σσ − 2σ²τ² V_στ]``, ``V = I⁻¹``.

The computation is dense in the random-effect levels (``O(q³)``, all
groupings' levels together), so it is refused above :data:`MAX_LEVELS`: with
that many groups ``g3`` is ``O(1/groups)``, negligible next to ``g1``.
Pure numerics: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pooljob.errors import InputError

Array = NDArray[np.float64]
Codes = NDArray[np.int64]

#: The most random-effect levels (all groupings together) the dense g3 handles.
MAX_LEVELS = 3000


@dataclass(frozen=True)
class Henderson:
    """The cross-products of a random-intercept model and its variance components.

    Attributes
    ----------
    rzz : ndarray, (q, q)
        ``ZᵀZ``: rows shared by each pair of levels (all groupings' levels).
    rzx : ndarray, (q, p)
        ``ZᵀX``.
    rxx : ndarray, (p, p)
        ``XᵀX``.
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
    rzx: Array
    rxx: Array
    nobs: float
    grouping: Codes
    tau2: Array
    sigma2: float


def check_size(levels: int) -> None:
    """Refuse a model too large for the dense g3 (module docstring), in one line."""
    if levels > MAX_LEVELS:
        raise InputError(
            f'interval_method = "prasad-rao" is computed densely for at most {MAX_LEVELS:,} '
            f"random-effect levels (all groupings together), and this model has {levels:,}; "
            'with that many groups its correction is O(1/groups): use interval_method = "plugin"'
        )


def _ratio(h: Henderson) -> Array:
    """``Θ²``: ``τ²_k/σ²`` for each level."""
    return np.asarray(h.tau2[h.grouping] / h.sigma2, dtype=np.float64)


def information(h: Henderson) -> Array:
    """The expected REML information of ``ψ = (σ², τ²_1, …, τ²_K)`` (module docstring)."""
    q, p = h.rzx.shape
    s = _ratio(h)
    r = np.zeros((p + q, p + q))
    r[:p, :p] = h.rxx
    r[:p, p:] = h.rzx.T
    r[p:, :p] = h.rzx
    r[p:, p:] = h.rzz
    # (R + diag(0, Λ)) F = R, solved as [[Rxx, Rxz Θ²], [Rzx, Rzz Θ² + I]] [Fx; G] = R
    system = r.copy()
    system[:, p:] *= s[None, :]
    system[p:, p:] += np.eye(q)
    f = np.linalg.solve(system, r)
    f[p:] *= s[:, None]
    rf = r @ f
    t = r - rf
    k = len(h.tau2)
    info = np.zeros((k + 1, k + 1))
    info[0, 0] = h.nobs - 2.0 * np.trace(f) + float(np.sum(f * f.T))
    diag = np.diag(r) - 2.0 * np.diag(rf) + np.einsum("ji,ji->i", f, rf)
    tz = t[p:, p:]
    for a in range(k):
        in_a = h.grouping == a
        info[0, a + 1] = info[a + 1, 0] = float(diag[p:][in_a].sum())
        for b in range(a, k):
            in_b = h.grouping == b
            info[a + 1, b + 1] = info[b + 1, a + 1] = float(np.sum(tz[np.ix_(in_a, in_b)] ** 2))
    return np.asarray(0.5 * info / h.sigma2**2, dtype=np.float64)


def level_g3(h: Henderson) -> Array:
    """``g3`` of the estimate of every level (the mean of its rows' fitted values), shape (q,).

    ``a`` of level ``u`` is ``ZᵀZ[:, u] / n_u`` (module docstring).
    """
    q = h.rzz.shape[0]
    check_size(q)
    if q == 0:
        return np.zeros(0)
    s = _ratio(h)
    n = np.diag(h.rzz)
    system = h.rzz * s[None, :] + np.eye(q)
    a = h.rzz / n[None, :]
    r = np.linalg.solve(system, a)
    hv = s[:, None] * r
    s_z = h.rzz - h.rzz @ (s[:, None] * np.linalg.solve(system, h.rzz))
    k = len(h.tau2)
    ys = [hv] + [np.where((h.grouping == j)[:, None], -r, 0.0) for j in range(k)]
    sy = [s_z @ y for y in ys]
    v = np.linalg.inv(information(h))
    g3 = np.zeros(q)
    for i in range(k + 1):
        for j in range(k + 1):
            g3 += v[i, j] * np.einsum("ig,ig->g", ys[i], sy[j])
    return np.asarray(g3 / h.sigma2, dtype=np.float64)


def nested_henderson(n: Array, parents: tuple[Codes, ...], tau2: Array, sigma2: float) -> Henderson:
    """The cross-products of a nested tree (leaf counts ``n``, ``parents`` top first).

    Levels are numbered top level first, as the tree's; the only fixed
    effect is the intercept (``X = 1``).
    """
    sizes = [len(pa) for pa in parents]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    q = int(offsets[-1])
    check_size(q)
    depth = len(parents)
    # each leaf's node at every level, bottom up
    anc = [np.arange(sizes[-1], dtype=np.int64)]
    for lev in range(depth - 1, 0, -1):
        anc.append(parents[lev][anc[-1]])
    anc = anc[::-1]
    rzz = np.zeros((q, q))
    for a in range(depth):
        for b in range(depth):
            np.add.at(rzz, (offsets[a] + anc[a], offsets[b] + anc[b]), n)
    grouping = np.repeat(np.arange(depth, dtype=np.int64), sizes)
    return Henderson(
        rzz=rzz,
        rzx=np.diag(rzz).reshape(q, 1).copy(),
        rxx=np.array([[float(n.sum())]]),
        nobs=float(n.sum()),
        grouping=grouping,
        tau2=np.asarray(tau2, dtype=np.float64),
        sigma2=float(sigma2),
    )


def cell_henderson(
    rows: Array,
    codes: list[Codes],
    fixed_sums: Array,
    xtx: Array,
    tau2: Array,
    sigma2: float,
) -> Henderson:
    """The cross-products of a random-intercept model from its cells.

    ``rows`` per cell, ``codes[k]`` each cell's level of grouping ``k``,
    ``fixed_sums`` (C, p) each cell's ``Σ x`` over its rows, ``xtx`` ``XᵀX``
    (in the same parametrisation).
    """
    sizes = [int(c.max()) + 1 if len(c) else 0 for c in codes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    q = int(offsets[-1])
    check_size(q)
    rzz = np.zeros((q, q))
    rzx = np.zeros((q, fixed_sums.shape[1]))
    for a, ca in enumerate(codes):
        np.add.at(rzx, offsets[a] + ca, fixed_sums)
        for b, cb in enumerate(codes):
            np.add.at(rzz, (offsets[a] + ca, offsets[b] + cb), rows)
    return Henderson(
        rzz=rzz,
        rzx=rzx,
        rxx=np.asarray(xtx, dtype=np.float64),
        nobs=float(rows.sum()),
        grouping=np.repeat(np.arange(len(codes), dtype=np.int64), sizes),
        tau2=np.asarray(tau2, dtype=np.float64),
        sigma2=float(sigma2),
    )


def split_levels(values: Array, sizes: list[int]) -> list[Array]:
    """``values`` over all levels, split per grouping (in the Henderson's order)."""
    bounds = np.cumsum([0, *sizes])
    return [values[bounds[k] : bounds[k + 1]] for k in range(len(sizes))]
