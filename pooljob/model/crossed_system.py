"""Henderson's mixed-model equations of crossed random intercepts, solved by block PCG.

The model is ``y = Xβ + Σ_k Z_k u_k + e`` with ``u_k ~ N(0, σ_k² I)`` and
``e ~ N(0, σ² I)``; every ``Z_k`` is the indicator of grouping k's levels.
With ``W = [Z_0 X Z_1 … Z_{K−1}]`` and ``λ_k = σ²/σ_k²``, Henderson's
equations are ``C s = W'y`` with::

    C = W'W + diag(λ_0 I, 0, λ_1 I, …)

Every block of ``W'W`` is a sum over the cells (one cell per distinct
combination of the groupings' levels): ``Z_k'Z_k`` is the diagonal of the
levels' row counts, ``Z_a'Z_b`` the sparse matrix of the rows each pair of
levels shares, ``Z_k'X`` and ``X'X`` sums of the cells' sums of ``x``.  So a
product ``C v`` costs O(cells), never O(rows).

The grouping with the most levels (block 0) is eliminated exactly (its
block ``D_0 = diag(n_0 + λ_0)`` is diagonal); what is left is the Schur
complement ``S = E − B'D_0⁻¹B`` on ``(X, Z_1, …)``, solved by conjugate
gradients preconditioned by its block diagonal (the dense ``p × p`` block
of ``X``, the diagonal elsewhere), many right-hand sides at once (a sparse
matrix times a dense block).  Pure numerics (numpy, scipy): no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

Array = NDArray[np.float64]
Codes = NDArray[np.int64]


@dataclass(frozen=True)
class CrossedCells:
    """The statistics of a crossed random-intercept model, per cell.

    Attributes
    ----------
    codes : list of ndarray of int64, (C,)
        Each cell's level in each grouping (groupings in the order the solver
        uses: most levels first).
    levels : list of int
        ``q_k``, the number of levels of each grouping.
    n : ndarray, (C,)
        Rows per cell.
    sx : ndarray, (C, p)
        ``Σ_rows x`` per cell, for the columns of ``X``.
    sy : ndarray, (C,)
        ``Σ_rows y`` per cell.
    xtx : ndarray, (p, p)
        ``X'X`` over all rows.
    xty : ndarray, (p,)
        ``X'y``.
    yty : float
        ``y'y``.
    """

    codes: list[Codes]
    levels: list[int]
    n: Array
    sx: Array
    sy: Array
    xtx: Array
    xty: Array
    yty: float

    @property
    def nobs(self) -> float:
        """Number of rows."""
        return float(self.n.sum())


#: A vector (or block of R vectors) of the equations: one array per grouping
#: (q_k, R), and β's (p, R).
Blocked = tuple[list[Array], Array]


def _sums(codes: Codes, values: Array, size: int) -> Array:
    """Row sums of ``values`` (C, k) per code: (size, k)."""
    if values.shape[1] == 0:
        return np.zeros((size, 0))
    return np.stack(
        [np.bincount(codes, values[:, j], minlength=size) for j in range(values.shape[1])],
        axis=1,
    )


class Equations:
    """``W'W`` and ``W'y`` of one data set, as operators on blocked vectors.

    Built once; :meth:`at` sets the ratios ``λ_k``.  Memory: one CSR matrix
    per ordered pair of groupings (12 bytes per cell each) and per-level sums.
    """

    def __init__(self, cells: CrossedCells) -> None:
        self.cells = cells
        self.levels = cells.levels
        self.k = len(cells.levels)
        self.p = cells.sx.shape[1]
        self.counts = [
            np.bincount(c, cells.n, minlength=q).astype(np.float64)
            for c, q in zip(cells.codes, cells.levels, strict=True)
        ]
        self.zx = [_sums(c, cells.sx, q) for c, q in zip(cells.codes, cells.levels, strict=True)]
        self.zy = [
            np.bincount(c, cells.sy, minlength=q).astype(np.float64)
            for c, q in zip(cells.codes, cells.levels, strict=True)
        ]
        self.pairs: dict[tuple[int, int], sp.csr_matrix] = {}
        for a in range(self.k):
            for b in range(self.k):
                if a != b:
                    index = np.int32 if max(cells.levels) < 2**31 - 1 else np.int64
                    m = sp.csr_matrix(
                        (cells.n, (cells.codes[a].astype(index), cells.codes[b].astype(index))),
                        shape=(cells.levels[a], cells.levels[b]),
                    )
                    m.sum_duplicates()
                    self.pairs[(a, b)] = m
        # the response's mean moves onto the intercept, when X has one: solving
        # for y − c·1 keeps the tolerance relative to the deviations, not to c
        xt1 = cells.sx.sum(axis=0)
        self.centre, self.unit = 0.0, np.zeros(self.p)
        if self.p:
            e = np.linalg.solve(cells.xtx, xt1)
            n = cells.nobs
            if abs(n - float(e @ xt1)) <= 1e-9 * n:  # ‖1 − Xe‖² = n − e'X'1 ≈ 0
                self.centre, self.unit = float(cells.sy.sum()) / n, e
        c = self.centre
        self.xty_c = cells.xty - c * xt1
        self.zy_c = [z - c * n_k for z, n_k in zip(self.zy, self.counts, strict=True)]
        self.yty_c = cells.yty - 2.0 * c * float(cells.sy.sum()) + c * c * cells.nobs

    def rhs(self) -> Blocked:
        """``W'(y − c·1)``: ``c`` the response's mean when ``X`` spans 1, else 0.

        Its solution is ``(β̂ − c e, û)`` with ``Xe = 1`` (``unit``).
        """
        return [z[:, None].copy() for z in self.zy_c], self.xty_c[:, None].copy()

    def gram(self, v: Blocked) -> Blocked:
        """``W'W v`` for a block of vectors."""
        u, bx = v
        out_u = []
        for a in range(self.k):
            acc = self.counts[a][:, None] * u[a] + self.zx[a] @ bx
            for b in range(self.k):
                if b != a:
                    acc += self.pairs[(a, b)] @ u[b]
            out_u.append(acc)
        out_x = self.cells.xtx @ bx
        for a in range(self.k):
            out_x += self.zx[a].T @ u[a]
        return out_u, out_x

    def at(self, lam: Array) -> Schur:
        """The equations at ``λ`` (one ratio ``σ²/σ_k²`` per grouping)."""
        return Schur(self, np.asarray(lam, dtype=np.float64))


def dot(a: Blocked, b: Blocked) -> Array:
    """Column-wise inner products of two blocked vectors: (R,)."""
    out = np.einsum("ij,ij->j", a[1], b[1])
    for x, y in zip(a[0], b[0], strict=True):
        out = out + np.einsum("ij,ij->j", x, y)
    return np.asarray(out, dtype=np.float64)


def combine(a: Blocked, b: Blocked, alpha: float = 1.0) -> Blocked:
    """``a + alpha b``."""
    return [x + alpha * y for x, y in zip(a[0], b[0], strict=True)], a[1] + alpha * b[1]


class Schur:
    """Henderson's equations at fixed ``λ``: block 0 eliminated, the rest by PCG.

    ``S = E − B'D_0⁻¹B`` acts on ``(β, u_1, …, u_{K−1})``: ``E`` is the
    corresponding block of ``C``, ``B = Z_0'[X Z_1 …]`` and
    ``D_0 = diag(n_0 + λ_0)``.  Its preconditioner is block diagonal: the
    exact ``p × p`` block of ``β`` (inverted) and the diagonal of ``S`` on
    the rest, ``n_k + λ_k − Σ_i N_{0k}[i, l]²/D_0[i]``.
    """

    def __init__(self, eq: Equations, lam: Array) -> None:
        self.eq = eq
        self.lam = lam
        self.d0 = eq.counts[0] + lam[0]
        zx0 = eq.zx[0]
        sxx = eq.cells.xtx - zx0.T @ (zx0 / self.d0[:, None])
        self.pre_x = np.linalg.inv(sxx) if eq.p else np.zeros((0, 0))
        self.pre_u = []
        for k in range(1, eq.k):
            m = eq.pairs[(0, k)]
            rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
            sq = np.bincount(m.indices, m.data**2 / self.d0[rows], minlength=eq.levels[k])
            self.pre_u.append(1.0 / (eq.counts[k] + lam[k] - sq))

    def _b(self, ux: list[Array], bx: Array) -> Array:
        """``B v`` for the non-eliminated part ``v = (β, u_1, …)``: (q_0, R)."""
        eq = self.eq
        acc = eq.zx[0] @ bx
        for k in range(1, eq.k):
            acc += eq.pairs[(0, k)] @ ux[k - 1]
        return np.asarray(acc)

    def _bt(self, t: Array) -> tuple[list[Array], Array]:
        """``B' t`` for a block on grouping 0's levels."""
        eq = self.eq
        return [eq.pairs[(k, 0)] @ t for k in range(1, eq.k)], eq.zx[0].T @ t

    def matvec(self, v: tuple[list[Array], Array]) -> tuple[list[Array], Array]:
        """``S v``."""
        eq = self.eq
        ux, bx = v
        t = self._b(ux, bx) / self.d0[:, None]
        btu, btx = self._bt(t)
        out_x = eq.cells.xtx @ bx - btx
        out_u = []
        for k in range(1, eq.k):
            acc = (eq.counts[k] + self.lam[k])[:, None] * ux[k - 1] + eq.zx[k] @ bx - btu[k - 1]
            for j in range(1, eq.k):
                if j != k:
                    acc += eq.pairs[(k, j)] @ ux[j - 1]
            out_u.append(acc)
        for k in range(1, eq.k):
            out_x += eq.zx[k].T @ ux[k - 1]
        return out_u, out_x

    def precondition(self, r: tuple[list[Array], Array]) -> tuple[list[Array], Array]:
        """The block-diagonal preconditioner applied to ``r``."""
        return [d[:, None] * x for d, x in zip(self.pre_u, r[0], strict=True)], self.pre_x @ r[1]

    def solve(
        self, rhs: Blocked, tol: Array, guess: Blocked | None = None, max_iter: int = 2000
    ) -> tuple[Blocked, Array, int]:
        """Solve ``C s = rhs`` for every column: block 0 exactly, the rest by PCG.

        ``tol`` is per column: PCG stops a column when the residual of the
        Schur system is below ``tol`` times its right-hand side, both in the
        preconditioner's norm (:func:`pcg`).
        Returns the solution, each column's final relative residual of the
        full system ``‖C s − rhs‖/‖rhs‖``, and the PCG iterations.
        """
        u, bx = rhs
        inv0 = 1.0 / self.d0[:, None]
        btu, btx = self._bt(u[0] * inv0)
        b_s: tuple[list[Array], Array] = (
            [u[k] - btu[k - 1] for k in range(1, self.eq.k)],
            bx - btx,
        )
        if guess is None:
            x0: tuple[list[Array], Array] = (
                [np.zeros_like(a) for a in b_s[0]],
                np.zeros_like(b_s[1]),
            )
        else:
            x0 = (list(guess[0][1:]), guess[1])
        x, iterations = pcg(self.matvec, self.precondition, b_s, x0, tol, max_iter)
        s0 = (u[0] - self._b(x[0], x[1])) * inv0
        sol: Blocked = ([s0, *x[0]], x[1])
        residual = combine(self.full(sol), rhs, -1.0)
        rel = np.sqrt(dot(residual, residual)) / np.maximum(np.sqrt(dot(rhs, rhs)), 1e-300)
        return sol, rel, iterations

    def full(self, v: Blocked) -> Blocked:
        """``C v`` (all blocks)."""
        u, bx = self.eq.gram(v)
        return [a + lam * x for a, lam, x in zip(u, self.lam, v[0], strict=True)], bx


SchurVector = tuple[list[Array], Array]


def _sdot(a: SchurVector, b: SchurVector) -> Array:
    return dot(a, b)


def pcg(
    matvec: Callable[[SchurVector], SchurVector],
    precondition: Callable[[SchurVector], SchurVector],
    b: SchurVector,
    x0: SchurVector,
    tol: Array,
    max_iter: int,
) -> tuple[SchurVector, int]:
    """Preconditioned conjugate gradients, one independent recurrence per column.

    Column j stops once ``‖r_j‖_M ≤ tol_j ‖b_j‖_M`` in the norm
    ``‖r‖_M = √(r'M⁻¹r)`` of the preconditioner ``M`` (its updates are then
    zero): the block of β is scaled by its exact inverse, so a small
    coefficient is solved as precisely as a large one.  All columns share
    each product ``A P`` (a sparse matrix times a dense block).
    """
    bnorm = np.sqrt(np.maximum(_sdot(b, precondition(b)), 0.0))
    x = x0
    r = combine(b, matvec(x0), -1.0)
    z = precondition(r)
    d = z
    rz = _sdot(r, z)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        rnorm = np.sqrt(np.maximum(rz, 0.0))
        active = rnorm > tol * bnorm
        if not active.any():
            return x, iterations - 1
        mask = active.astype(np.float64)
        ad = matvec(d)
        dad = _sdot(d, ad)
        alpha = np.where(active, rz / np.where(dad > 0, dad, 1.0), 0.0) * mask
        x = ([a + alpha * p for a, p in zip(x[0], d[0], strict=True)], x[1] + alpha * d[1])
        r = ([a - alpha * p for a, p in zip(r[0], ad[0], strict=True)], r[1] - alpha * ad[1])
        z = precondition(r)
        rz_new = _sdot(r, z)
        beta = np.where(active, rz_new / np.where(rz != 0, rz, 1.0), 0.0)
        d = ([a + beta * p for a, p in zip(z[0], d[0], strict=True)], z[1] + beta * d[1])
        rz = rz_new
    return x, iterations
