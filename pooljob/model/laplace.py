"""The exact gradient of the Laplace criterion for random-intercept count models.

For ``d(θ, β) = D(η̂) + ‖û‖² + log|M|`` with ``M = Λ'Z'WZΛ + I`` at the
conditional mode ``û`` (:mod:`pooljob.model.glmm`), write ``ζ_c`` for cell c's row
of ``ZΛ`` and, for a parameter φ, ``a_c = ∂η_c/∂φ`` at fixed u (``x_cj`` for
``β_j``; ``u_k[level_k(c)]`` for the intercept scale ``θ_k``).  The mode
satisfies ``Λ'Z'(y − μ) = u``, so ``D + ‖u‖²`` contributes only its partial
derivative, and by the implicit function theorem::

    dû/dφ   = −M⁻¹ g_φ,   g_φ = Λ'Z'(w ∘ a) − (∂ζ/∂φ)'(y − μ)
    dη̂_c/dφ = a_c + ζ_cᵀ dû/dφ
    dd/dφ   = −2 Σ_c (y_c − μ_c) a_c
              + Σ_c w'_c h_c dη̂_c/dφ                       (W moves with η̂)
              + 2 Σ_c w_c ζ_cᵀ M⁻¹ ∂ζ_c/∂φ                  (θ only)

with ``w_c = t_c m'(η_c)``, ``w'_c = t_c m''(η_c)`` and the leverages
``h_c = ζ_cᵀ M⁻¹ ζ_c``.  Every needed entry of ``M⁻¹`` comes from the
blocked factor: ``Σ₂₂ = (L₂₂L₂₂ᵀ)⁻¹`` (one LAPACK ``potri``), ``S₁₂ =
−L₁₁⁻ᵀL₂₁ᵀΣ₂₂`` and the diagonal of ``S₁₁ = L₁₁⁻ᵀ(I + L₂₁ᵀΣ₂₂L₂₁)L₁₁⁻¹``.
Random intercepts only (``CountModel.unit`` true for every block); pure numerics.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.lapack as lapack
from numpy.typing import NDArray

from pooljob.model.families import mean_link
from pooljob.model.glmm import CountModel, Mode, lambda_zt, random_part, solve_m
from pooljob.model.lmm import templates

Array = NDArray[np.float64]


def _second_derivative(family: str, eta: Array) -> Array:
    """``m''(η)``: ``p(1 − p)(1 − 2p)`` (logit) or ``e^η`` (log)."""
    if family == "binomial":
        p, d = mean_link(family, eta)
        return np.asarray(d * (1.0 - 2.0 * p))
    return np.asarray(np.exp(eta))


def _cell_inverse(model: CountModel, mode: Mode) -> Array:
    """Per cell, the entries of ``M⁻¹`` between the cell's levels: shape (C, K, K)."""
    f = mode.factor
    blocks = mode.blocks
    codes = model.codes
    k_blocks = len(codes)
    d1 = f.l11[:, 0, 0]
    out = np.empty((len(model.y), k_blocks, k_blocks))
    if f.l22 is None or f.l21 is None:
        out[:, 0, 0] = 1.0 / d1[codes[0]] ** 2
        return out
    inv, info = lapack.dpotri(f.l22, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError("potri failed")
    sigma22 = np.tril(inv) + np.tril(inv, -1).T
    l21t = f.l21.T.tocsr()  # (q1, m)
    g = np.asarray(l21t @ sigma22)  # L21ᵀ Σ22, (q1, m)
    s11 = (1.0 + np.asarray(l21t.multiply(g).sum(axis=1)).ravel()) / d1**2
    s12 = -g / d1[:, None]
    # each pair of blocks: the entries on the level pairs that share a cell, then per cell
    out[:, 0, 0] = s11[codes[0]]
    for k in range(1, k_blocks):
        level = blocks.offsets[k] + np.arange(model.levels[k])
        out[:, k, k] = np.diagonal(sigma22)[level][codes[k]]
    for (a, b), (ca, cb, inv) in model.pairs.items():
        pb = blocks.offsets[b] + cb
        vals = s12[ca, pb] if a == 0 else sigma22[blocks.offsets[a] + ca, pb]
        out[:, a, b] = out[:, b, a] = vals[inv]
    return out


def laplace_gradient(model: CountModel, theta: Array, beta: Array, mode: Mode) -> Array:
    """``∂d/∂(θ, β)`` at the mode (module docstring); θ first, in block order."""
    t = templates(mode.blocks, theta)
    eta = mode.eta
    m, dm = mean_link(model.family, eta)
    resid = model.y - model.t * m
    w = model.t * dm
    w2 = model.t * _second_derivative(model.family, eta)
    e = _cell_inverse(model, mode)
    s_zeta = np.einsum("ckl,l->ck", e, theta)  # (M⁻¹ ζ_c) at the cell's levels
    h = s_zeta @ theta
    k_blocks = len(model.codes)
    q = [int(v) for v in model.levels]
    starts = np.concatenate([[0], np.cumsum(q)]).astype(int)
    p = model.x.shape[1]
    # per parameter φ (θ_k, then β_j): a = ∂η/∂φ at fixed u, and g_φ
    a = np.empty((len(model.y), k_blocks + p))
    for k in range(k_blocks):
        a[:, k] = mode.u[starts[k] : starts[k + 1]][model.codes[k]]
    a[:, k_blocks:] = model.x
    g = lambda_zt(model, t, w[:, None] * a)
    resid_sums = np.asarray(model.zmat.T @ resid)
    for k in range(k_blocks):
        g[starts[k] : starts[k + 1], k] -= resid_sums[starts[k] : starts[k + 1]]
    du = -solve_m(mode.blocks, mode.factor, g)
    zdu, _ = random_part(model, t, du)
    deta = a + zdu
    grad = -2.0 * (resid @ a) + (w2 * h) @ deta
    grad[:k_blocks] += 2.0 * (w @ s_zeta)
    return np.asarray(grad, dtype=np.float64)
