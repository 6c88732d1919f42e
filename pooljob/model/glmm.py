"""Binomial and Poisson mixed models by Laplace's approximation, from per-cell counts.

The model for cell ``c`` (every row of a cell shares its linear predictor)::

    η_c = x_cᵀβ + z_cᵀ Λ_θ u + o_c,        u ~ N(0, I)
    binomial (logit):  y_c ~ Binomial(t_c, expit η_c)
    Poisson (log):     y_c ~ Poisson(t_c e^{η_c})     (t_c = Σ_rows e^{offset})

with ``y_c``, ``t_c`` per-cell sums (:mod:`pooljob.scan.cell_counts`).  As in glmer
(nAGQ = 1), the criterion is the Laplace approximation of −2 log-likelihood::

    d(θ, β) = −2 Σ_c ℓ_c(η̂_c) + ‖û‖² + log|L|²,     L Lᵀ = Λ'Z'WZΛ + I

where ``û`` minimises the penalised deviance ``−2 Σ ℓ_c + ‖u‖²`` at
(θ, β) — found by penalised iteratively reweighted least squares (PIRLS;
for canonical links, Newton's method), with the blocked Cholesky of
:mod:`pooljob.model.lmm` — and ``W = diag(∂μ/∂η)`` is evaluated at ``û``.
``ℓ_c`` includes the per-row constants, so ``−d/2`` is glmer's ``logLik``.
glmer minimises ``d`` over (θ, β) jointly after a first pass over θ with β
and u found together (nAGQ = 0); so does
:func:`pooljob.model.glmm_fit.fit_counts`.  This module holds the model's
layout, PIRLS, the fitted model (:class:`CountFit`) and draws from its
posterior (:func:`sample_effects`, for poststratification).

Pure numerics (numpy, scipy): no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from numpy.typing import NDArray

from pooljob.model.blocks import Blocks, Pair, sum_by
from pooljob.model.families import mean_link
from pooljob.model.lmm import Factor, Solution, factorize, templates
from pooljob.model.optimize import OptSummary

Array = NDArray[np.float64]
Codes = NDArray[np.int64]

#: PIRLS stops once a Newton step moves no coordinate of (β, u) by more than
#: this (relative to 1 + |value|); the step is then taken and the criterion
#: evaluated there, ~1e-14 from the mode (Newton converges quadratically).
PIRLS_TOL = 1e-7
#: A Newton step this small means the current point is the mode to rounding.
PIRLS_EXACT = 1e-12
PIRLS_MAX = 60


@dataclass(frozen=True)
class CountModel:
    """The data and layout of a count model, fixed for a fit.

    Attributes
    ----------
    family : {"binomial", "poisson"}
    y, t, offset : ndarray, shape (C,)
        Per cell: successes or events; trials or exposure; offset (binomial).
    constant : float
        Σ over rows of the log-likelihood constants.
    x : ndarray, shape (C, p)
        Fixed-effect design per cell.
    z : list of ndarray, shape (C, p_k)
        Random-effect design per cell, one per block, in block order
        (``order[k]`` is the design's index of block k).
    codes : list of ndarray, shape (C,)
        Level of each cell in each block (block order).
    levels : list of int
    free : list of list of (int, int)
        Lower-triangle entries of each template ``T_k`` that θ sets.
    order : list of int
    pairs : dict
        ``(a, b) → (codes_a, codes_b, inverse)``: the pairs of levels that
        share a cell, and each cell's pair.
    zmat : scipy.sparse.csr_matrix, shape (C, Σ q_k p_k)
        ``Z`` itself, columns in block order (level-major within a block).
    unit : tuple of bool
        Per block, whether it is an intercept alone (one column of ones).
    """

    family: str
    y: Array
    t: Array
    offset: Array
    constant: float
    x: Array
    z: list[Array]
    codes: list[Codes]
    levels: list[int]
    free: list[list[tuple[int, int]]]
    order: list[int]
    pairs: dict[tuple[int, int], tuple[Codes, Codes, Codes]]
    zmat: sp.csr_matrix
    unit: tuple[bool, ...]

    @property
    def n_theta(self) -> int:
        """Length of θ."""
        return sum(len(f) for f in self.free)

    @property
    def widths(self) -> list[int]:
        """Columns per block."""
        return [int(z.shape[1]) for z in self.z]


def count_model(
    family: str,
    y: Array,
    t: Array,
    offset: Array,
    constant: float,
    x: Array,
    random: list[tuple[Codes, int, Array, list[tuple[int, int]]]],
) -> CountModel:
    """Lay out a count model; ``random`` is (codes, levels, z, free entries) in design order.

    The block with the most columns (levels × width) comes first, as in
    :func:`pooljob.model.blocks.build_blocks`.
    """
    order = sorted(range(len(random)), key=lambda k: -random[k][1] * random[k][2].shape[1])
    codes = [random[k][0] for k in order]
    levels = [random[k][1] for k in order]
    pairs: dict[tuple[int, int], tuple[Codes, Codes, Codes]] = {}
    for a in range(len(order)):
        for b in range(a + 1, len(order)):
            key = codes[a] * levels[b] + codes[b]
            uniq, inv = np.unique(key, return_inverse=True)
            pairs[(a, b)] = (uniq // levels[b], uniq % levels[b], inv.astype(np.int64).ravel())
    zs = [random[k][2] for k in order]
    rows, cols, vals, start = [], [], [], 0
    cells = np.arange(len(y))
    for z, code, q in zip(zs, codes, levels, strict=True):
        pk = z.shape[1]
        for a in range(pk):
            rows.append(cells)
            cols.append(start + code * pk + a)
            vals.append(z[:, a])
        start += q * pk
    zmat = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(y), start),
    )
    return CountModel(
        family=family,
        y=y,
        t=t,
        offset=offset,
        constant=constant,
        x=x,
        z=zs,
        codes=codes,
        levels=levels,
        free=[random[k][3] for k in order],
        order=order,
        pairs=pairs,
        zmat=zmat,
        unit=tuple(z.shape[1] == 1 and bool(np.all(z == 1.0)) for z in zs),
    )


def deviance_terms(model: CountModel, eta: Array) -> float:
    """``−2 Σ_c ℓ_c(η_c)`` without the constant."""
    if model.family == "binomial":
        ll = model.y * eta - model.t * np.logaddexp(0.0, eta)
    else:
        ll = model.y * eta - model.t * np.exp(eta)
    return float(-2.0 * ll.sum())


def weighted_blocks(model: CountModel, w: Array, x: Array, r: Array) -> Blocks:
    """``[Z X r]' W [Z X r]`` as :class:`pooljob.model.blocks.Blocks` (the cells weighted by w).

    Each block is a weighted ``bincount`` over the cells: ``Z_k'WZ_k`` and
    ``Z_k'W[X r]`` per level of block k, ``Z_a'WZ_b`` per pair of levels
    that share a cell.  Intercept-only blocks skip the products with ones.
    """
    xr = np.column_stack([x, r])
    p = x.shape[1]
    c = len(w)
    wxr = w[:, None] * xr
    ztz: list[Array] = []
    ztxy: list[Array] = []
    unit = model.unit
    for z, codes, q, one in zip(model.z, model.codes, model.levels, unit, strict=True):
        pk = z.shape[1]
        if one:
            ztz.append(np.bincount(codes, w, minlength=q).astype(np.float64).reshape(q, 1, 1))
            ztxy.append(sum_by(codes, wxr, q).reshape(q, 1, p + 1))
            continue
        wz = w[:, None] * z
        zz = (wz[:, :, None] * z[:, None, :]).reshape(c, -1)
        ztz.append(sum_by(codes, zz, q).reshape(q, pk, pk))
        zxy = (z[:, :, None] * wxr[:, None, :]).reshape(c, -1)
        ztxy.append(sum_by(codes, zxy, q).reshape(q, pk, p + 1))
    pairs = {}
    for (a, b), (ca, cb, inv) in model.pairs.items():
        za, zb = model.z[a], model.z[b]
        if unit[a] and unit[b]:
            vals = np.bincount(inv, w, minlength=len(ca)).astype(np.float64).reshape(-1, 1, 1)
        else:
            zz = (w[:, None, None] * za[:, :, None] * zb[:, None, :]).reshape(c, -1)
            vals = sum_by(inv, zz, len(ca)).reshape(len(ca), za.shape[1], zb.shape[1])
        pairs[(a, b)] = Pair(ca, cb, vals)
    offsets = [0, 0]
    for q, wd in zip(model.levels[1:], model.widths[1:], strict=True):
        offsets.append(offsets[-1] + q * wd)
    return Blocks(
        n=float(w.sum()),
        # einsum: OpenBLAS takes ~10 ms for a (1 × C)(C × 1) product on these machines
        xtx=np.einsum("ci,cj->ij", xr, wxr) if p == 0 else xr.T @ wxr,
        ztz=ztz,
        ztxy=ztxy,
        pairs=pairs,
        levels=list(model.levels),
        widths=model.widths,
        free=model.free,
        order=model.order,
        offsets=offsets[: len(model.levels)],
    )


def spherical_solution(blocks: Blocks, f: Factor, beta: Array | None) -> tuple[Array, Array]:
    """Penalised least squares from the factor: (β, u), u stacked in block order.

    With ``beta`` given (the blocks then carry no fixed columns) only ``u``
    is solved for; otherwise β and u jointly.
    """
    p = f.lxy.shape[0] - 1
    if beta is None:
        rl, cx = f.lxy[:p, :p], f.lxy[p, :p]
        beta = sla.solve_triangular(rl.T, cx, lower=False, check_finite=False) if p else cx[:0]
        coef = beta
    else:
        coef = np.zeros(0)
    q1, p1 = blocks.levels[0], blocks.widths[0]
    c1 = f.lx1[:, p] - f.lx1[:, :p] @ coef
    parts = []
    if f.l22 is not None and f.lx2 is not None and f.l21 is not None:
        c2 = f.lx2[:, p] - f.lx2[:, :p] @ coef
        u2 = sla.solve_triangular(f.l22.T, c2, lower=False, check_finite=False)
        c1 = c1 - f.l21.T @ u2
        parts.append(u2)
    u1 = np.linalg.solve(f.l11.transpose(0, 2, 1), c1.reshape(q1, p1, 1)).ravel()
    return np.asarray(beta, dtype=np.float64), np.concatenate([u1, *parts])


def random_part(model: CountModel, t: list[Array], u: Array) -> tuple[Array, list[Array]]:
    """``ZΛu`` per cell and ``b_k = u_k T_kᵀ`` per block (block order).

    ``u`` may also be a matrix (Q, P): then ``ZΛu`` is (C, P) and the ``b_k``
    are (q_k, p_k, P).
    """
    bs, pos = [], 0
    for z, q, tk in zip(model.z, model.levels, t, strict=True):
        pk = z.shape[1]
        uk = u[pos : pos + q * pk].reshape(q, pk, *u.shape[1:])
        bs.append(np.einsum("ij,qj...->qi...", tk, uk))
        pos += q * pk
    stacked = np.concatenate([b.reshape(-1, *u.shape[1:]) for b in bs])
    zb = np.asarray(model.zmat @ stacked)
    if u.ndim == 1:
        return zb, [b.reshape(b.shape[0], b.shape[1]) for b in bs]
    return zb, bs


def solve_m(blocks: Blocks, f: Factor, rhs: Array) -> Array:
    """``M⁻¹ rhs`` with ``M = L Lᵀ = Λ'Z'WZΛ + I`` from the blocked factor (u in block order).

    ``rhs`` is (Q,) or (Q, P).
    """
    q1, p1 = blocks.levels[0], blocks.widths[0]
    n1 = q1 * p1
    tail = rhs.shape[1:]
    cols = int(np.prod(tail)) if tail else 1
    r1 = rhs[:n1].reshape(q1, p1, cols)
    y1 = np.linalg.solve(f.l11, r1)
    if f.l22 is None or f.l21 is None:
        x1 = np.linalg.solve(f.l11.transpose(0, 2, 1), y1)
        return np.asarray(x1.reshape(n1, *tail))
    y1f = y1.reshape(n1, cols)
    r2 = rhs[n1:].reshape(-1, cols)
    y2 = sla.solve_triangular(f.l22, r2 - f.l21 @ y1f, lower=True, check_finite=False)
    x2 = sla.solve_triangular(f.l22.T, y2, lower=False, check_finite=False)
    back = (y1f - f.l21.T @ x2).reshape(q1, p1, cols)
    x1 = np.linalg.solve(f.l11.transpose(0, 2, 1), back)
    return np.concatenate([x1.reshape(n1, *tail), x2.reshape(-1, *tail)])


def lambda_zt(model: CountModel, t: list[Array], values: Array) -> Array:
    """``Λ'Z'v`` for per-cell values v (C,) or (C, P): per block and level ``T_kᵀ Σ_c z_c v_c``."""
    sums = np.asarray(model.zmat.T @ values)
    parts, pos = [], 0
    for z, q, tk in zip(model.z, model.levels, t, strict=True):
        pk = z.shape[1]
        block = sums[pos : pos + q * pk].reshape(q, pk, *values.shape[1:])
        parts.append(np.einsum("ji,qj...->qi...", tk, block).reshape(q * pk, *values.shape[1:]))
        pos += q * pk
    return np.concatenate(parts)


def predict_mode(
    model: CountModel, old: Mode, theta_old: Array, theta: Array, beta: Array
) -> Array:
    """First-order prediction of the mode u at (θ, β) from the mode at (θ_old, β_old).

    The mode solves ``g(u) = ∂/∂u [−2 Σ ℓ_c + ‖u‖²] = 0``; by the implicit
    function theorem, with ``ΔΛ = Λ(θ) − Λ(θ_old)`` (Λ is linear in θ)::

        Δu = −M⁻¹ [Λ'Z'W (X Δβ + Z ΔΛ u) − ΔΛ'Z'(y − μ)]

    at the old mode, ``M`` its factor.  The prediction is O(Δ²) from the new
    mode, so PIRLS needs one or two steps fewer.
    """
    layout = shape(model)
    t_old = templates(layout, theta_old)
    dt = [a - b for a, b in zip(templates(layout, theta), t_old, strict=True)]
    mean, deriv = mean_link(model.family, old.eta)
    w = model.t * deriv
    zdu, _ = random_part(model, dt, old.u)
    v = model.x @ (beta - old.beta) + zdu
    rhs = lambda_zt(model, t_old, w * v) - lambda_zt(model, dt, model.y - model.t * mean)
    return np.asarray(old.u - solve_m(old.blocks, old.factor, rhs))


@dataclass
class Mode:
    """The conditional mode at (θ, β) and the Laplace criterion there."""

    beta: Array
    u: Array
    eta: Array
    blocks: Blocks
    factor: Factor
    deviance: float  # Laplace: −2 log-likelihood, constants included
    iterations: int


def pirls(model: CountModel, theta: Array, beta: Array | None, u0: Array | None = None) -> Mode:
    """The conditional mode of u (and β when ``beta`` is None) at θ, by PIRLS.

    Newton steps on the penalised deviance ``−2 Σ ℓ_c(η) + ‖u‖²`` with
    step halving; the weights ``W = t m'(η)`` and the working response are
    those of Fisher scoring, exact Newton for the canonical links.  The
    returned factor is evaluated at the returned mode.
    """
    t = templates(shape(model), theta)
    q_total = sum(q * w for q, w in zip(model.levels, model.widths, strict=True))
    u = np.zeros(q_total) if u0 is None else u0.copy()
    joint = beta is None
    b = np.zeros(model.x.shape[1]) if beta is None else beta
    fixed = model.offset if joint else model.offset + model.x @ b

    def predictor(bb: Array, uu: Array) -> Array:
        zb, _ = random_part(model, t, uu)
        return zb + fixed + (model.x @ bb if joint else 0.0)

    def pdev(eta: Array, uu: Array) -> float:
        return deviance_terms(model, eta) + float(uu @ uu)

    eta = predictor(b, u)
    current = pdev(eta, u)
    final = False
    for it in range(1, PIRLS_MAX + 1):
        mean, deriv = mean_link(model.family, eta)
        w = np.maximum(model.t * deriv, 1e-300)
        resid = (model.y - model.t * mean) / w
        x = model.x if joint else model.x[:, :0]
        r = eta - fixed + resid
        blocks = weighted_blocks(model, w, x, r)
        f = factorize(blocks, theta)
        if final:
            return Mode(b, u, eta, blocks, f, current + f.logdet_l - 2 * model.constant, it)
        new_b, new_u = spherical_solution(blocks, f, None if joint else b)
        step_b, step_u = new_b - b, new_u - u
        for _ in range(30):
            cand_b, cand_u = b + step_b, u + step_u
            cand_eta = predictor(cand_b, cand_u)
            value = pdev(cand_eta, cand_u)
            if value <= current + 1e-12 * abs(current):
                break
            step_b, step_u = step_b / 2.0, step_u / 2.0
        else:
            # no decrease along the Newton direction: at the mode to rounding
            final = True
            continue
        size = max(
            float(np.max(np.abs(step_u) / (1.0 + np.abs(u)), initial=0.0)),
            float(np.max(np.abs(step_b) / (1.0 + np.abs(b)), initial=0.0)),
        )
        if size <= PIRLS_EXACT:
            # the factor at hand is at the mode to ~1e-12: no further factorization
            return Mode(b, u, eta, blocks, f, current + f.logdet_l - 2 * model.constant, it)
        small = size <= PIRLS_TOL
        b, u, eta, current = cand_b, cand_u, cand_eta, value
        final = bool(small)
    raise np.linalg.LinAlgError("PIRLS did not converge")


def shape(model: CountModel) -> Blocks:
    """A Blocks shell with the layout only (for :func:`pooljob.model.lmm.templates`)."""
    return Blocks(
        n=0.0,
        xtx=np.zeros((1, 1)),
        ztz=[],
        ztxy=[],
        pairs={},
        levels=list(model.levels),
        widths=model.widths,
        free=model.free,
        order=model.order,
    )


@dataclass(frozen=True)
class CountFit:
    """A fitted count model, in block order.

    Attributes
    ----------
    theta, beta : the estimates.
    vcov : covariance of β̂: the β block of ``2 H⁻¹``, ``H`` the Hessian of
        the Laplace criterion in (θ, β) without θ on the boundary (glmer's
        default), or, if ``H`` is not positive definite, the conditional one
        from PIRLS (``optimizer.vcov`` says which).
    mode : the conditional mode at the estimates.
    henderson : the blocks weighted at the mode, fixed columns included.
    solution : β, conditional modes ``b`` and ``Var(b | y)`` (σ = 1).
    deviance : the Laplace criterion, −2 log-likelihood.
    """

    theta: Array
    beta: Array
    vcov: Array
    mode: Mode
    henderson: Blocks
    solution: Solution
    covariance: list[Array]
    deviance: float
    optimizer: OptSummary


def sample_effects(
    fit: CountFit, model: CountModel, draws: int, rng: np.random.Generator
) -> tuple[Array, list[Array]]:
    """Draws of (β, b) from the Laplace approximation of their posterior.

    At the mode, (β, u) given θ̂ is approximately normal with precision
    Henderson's matrix ``M = L Lᵀ`` (σ = 1), ``L`` the blocked factor with
    rows ``[u₁, u₂, β]``::

        L = [[L₁₁, 0, 0], [L₂₁, L₂₂, 0], [L_X1, L_X2, R_X]]

    A draw is the mode plus ``L⁻ᵀ ε`` with ``ε ~ N(0, I)``, by back
    substitution: β first, then the dense block, then block 1 level by level.

    Returns
    -------
    beta : ndarray, shape (draws, p)
    b : list of ndarray, shape (draws, q_k, p_k), one per block (block order)
    """
    blocks = fit.henderson
    f = factorize(blocks, fit.theta)
    p = f.lxy.shape[0] - 1
    q1, p1 = blocks.levels[0], blocks.widths[0]
    m = blocks.dense_size
    eps = rng.standard_normal((q1 * p1 + m + p, draws))
    e1, e2, ex = eps[: q1 * p1], eps[q1 * p1 : q1 * p1 + m], eps[q1 * p1 + m :]
    xb = sla.solve_triangular(f.lxy[:p, :p].T, ex, lower=False, check_finite=False) if p else ex
    rhs1 = e1 - f.lx1[:, :p] @ xb
    parts: list[Array] = []
    if f.l22 is not None and f.lx2 is not None and f.l21 is not None:
        x2 = sla.solve_triangular(f.l22.T, e2 - f.lx2[:, :p] @ xb, lower=False, check_finite=False)
        rhs1 = rhs1 - f.l21.T @ x2
        parts.append(x2)
    x1 = np.linalg.solve(f.l11.transpose(0, 2, 1), rhs1.reshape(q1, p1, draws))
    u = np.concatenate([x1.reshape(q1 * p1, draws), *parts]) + fit.mode.u[:, None]
    beta = (fit.beta[:, None] + xb).T
    t = templates(blocks, fit.theta)
    out, pos = [], 0
    for q, w, tk in zip(blocks.levels, blocks.widths, t, strict=True):
        uk = u[pos : pos + q * w].reshape(q, w, draws)
        out.append(np.einsum("ij,ljs->sli", tk, uk))
        pos += q * w
    return np.asarray(beta), out
