"""Cross-product blocks ``[Z X y]'[Z X y]`` as sums over cells.

Given per-cell moments ``S[c] = Σ_rows w wᵀ`` of the variables
``w = (1, v_1, …)`` and the columns as ``indicator × variable``, every block
is a weighted ``bincount``: ``Z_k'Z_k`` per level of grouping k, ``Z_k'Z_j``
per pair of levels that share a cell, ``Z_k'[X y]`` per level, and
``[X y]'[X y]``.  Pure numerics: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Codes = NDArray[np.int64]


@dataclass(frozen=True)
class ColumnWeights:
    """Columns as per-cell indicator weights and variable indices."""

    weights: Array  # (C, ncol)
    variables: NDArray[np.int64]  # (ncol,)


@dataclass(frozen=True)
class Pair:
    """``Z_a'Z_b`` on the pairs of levels (of blocks a < b) that share a cell."""

    codes_a: Codes
    codes_b: Codes
    values: Array  # (npairs, p_a, p_b)


@dataclass(frozen=True)
class Blocks:
    """Everything the criterion needs; block 0 is the grouping with most columns.

    Attributes
    ----------
    n : float
        Number of rows.
    xtx : ndarray, (p + 1, p + 1)
        ``[X y]'[X y]``, the response last.
    ztz : list of ndarray, (q_k, p_k, p_k)
    ztxy : list of ndarray, (q_k, p_k, p + 1)
    pairs : dict
        ``(a, b) → Pair`` for blocks ``a < b``.
    levels, widths : list of int
        ``q_k`` and ``p_k``.
    free : list of list of (int, int)
        Lower-triangle entries of ``T_k`` that θ sets.
    order : list of int
        ``order[k]`` is the design's index of block k.
    """

    n: float
    xtx: Array
    ztz: list[Array]
    ztxy: list[Array]
    pairs: dict[tuple[int, int], Pair]
    levels: list[int]
    widths: list[int]
    free: list[list[tuple[int, int]]]
    order: list[int]
    offsets: list[int] = field(default_factory=list)

    @property
    def n_blocks(self) -> int:
        """Number of random-effect blocks."""
        return len(self.levels)

    @property
    def dense_size(self) -> int:
        """Order of the dense Schur block: all blocks but the first."""
        return sum(q * p for q, p in zip(self.levels[1:], self.widths[1:], strict=True))

    @property
    def n_theta(self) -> int:
        """Length of θ."""
        return sum(len(f) for f in self.free)


def cross(s: Array, a: ColumnWeights, b: ColumnWeights) -> Array:
    """Per cell ``Σ_rows x_a x_b`` for every pair of columns: (C, na, nb)."""
    sv = s[:, a.variables[:, None], b.variables[None, :]]
    return np.asarray(a.weights[:, :, None] * b.weights[:, None, :] * sv)


def response_column(s: Array, response: Array) -> Array:
    """Per cell ``Σ_rows w y`` with ``y = Σ_i response_i v_i``: shape (C, m + 1)."""
    return np.asarray(np.einsum("cvi,i->cv", s[:, :, 1:], response))


def build_blocks(
    s: Array,
    response: Array,
    fixed: ColumnWeights,
    random: list[tuple[Codes, int, ColumnWeights, list[tuple[int, int]]]],
) -> Blocks:
    """Assemble the blocks from cell moments.

    Parameters
    ----------
    s : ndarray, (C, m + 1, m + 1)
        Per-cell moments, index 0 the constant.
    response : ndarray, (m,)
        The fitted response as a combination of the variables.
    fixed : ColumnWeights
    random : list of (codes, levels, columns, free entries)
        One per grouping, in the design's order.
    """
    sy = response_column(s, response)  # (C, m+1)
    syy = np.einsum("cij,i,j->c", s[:, 1:, 1:], response, response)
    xx = cross(s, fixed, fixed).sum(axis=0)
    xy = (fixed.weights * sy[:, fixed.variables]).sum(axis=0)
    p = len(fixed.variables)
    xtx = np.empty((p + 1, p + 1))
    xtx[:p, :p] = xx
    xtx[:p, p] = xtx[p, :p] = xy
    xtx[p, p] = syy.sum()
    order = sorted(range(len(random)), key=lambda k: -random[k][1] * len(random[k][2].variables))
    ztz, ztxy, levels, widths, free = [], [], [], [], []
    for k in order:
        codes, q, cols, entries = random[k]
        pk = len(cols.variables)
        zz = cross(s, cols, cols).reshape(len(codes), -1)
        ztz.append(sum_by(codes, zz, q).reshape(q, pk, pk))
        zx = cross(s, cols, fixed)  # (C, pk, p)
        zy = cols.weights * sy[:, cols.variables]  # (C, pk)
        zxy = np.concatenate([zx, zy[:, :, None]], axis=2).reshape(len(codes), -1)
        ztxy.append(sum_by(codes, zxy, q).reshape(q, pk, p + 1))
        levels.append(q)
        widths.append(pk)
        free.append(entries)
    pairs: dict[tuple[int, int], Pair] = {}
    for a in range(len(order)):
        for b in range(a + 1, len(order)):
            ca, _, cols_a, _ = random[order[a]]
            cb, qb, cols_b, _ = random[order[b]]
            key = ca * qb + cb
            uniq, inv = np.unique(key, return_inverse=True)
            zz = cross(s, cols_a, cols_b)
            pa, pb = (int(x) for x in zz.shape[1:3])
            vals = sum_by(inv.astype(np.int64), zz.reshape(len(ca), -1), len(uniq))
            pairs[(a, b)] = Pair(uniq // qb, uniq % qb, vals.reshape(len(uniq), pa, pb))
    offsets = [0, 0]
    for q, w in zip(levels[1:], widths[1:], strict=True):
        offsets.append(offsets[-1] + q * w)
    return Blocks(
        n=float(s[:, 0, 0].sum()),
        xtx=xtx,
        ztz=ztz,
        ztxy=ztxy,
        pairs=pairs,
        levels=levels,
        widths=widths,
        free=free,
        order=order,
        offsets=offsets[: len(levels)] if levels else [],
    )


def pair_positions(blocks: Blocks, k: int, j: int) -> tuple[Codes, Codes]:
    """Rows and columns of ``Z_k'Z_j`` (blocks ``0 < k < j``) in the dense block.

    Returns
    -------
    rows : ndarray of int64, (npairs, p_k)
        Dense positions of block k's columns at each pair's level ``codes_a``.
    cols : ndarray of int64, (npairs, p_j)
        Dense positions of block j's columns at each pair's level ``codes_b``.
    """
    pair, off = blocks.pairs[(k, j)], blocks.offsets
    pk, pj = blocks.widths[k], blocks.widths[j]
    rows = off[k] + pair.codes_a[:, None] * pk + np.arange(pk)
    cols = off[j] + pair.codes_b[:, None] * pj + np.arange(pj)
    return rows, cols


def set_symmetric(mat: Array, rows: Codes, cols: Codes, values: Array) -> None:
    """Write ``values[c]`` at ``(rows[c], cols[c])`` of ``mat`` and its transpose at the mirror.

    ``values`` is (npairs, len(rows[c]), len(cols[c])).  The mirrored block is
    indexed ``(cols, rows)``, so its values are ``values[c]ᵀ``: shape
    (npairs, len(cols[c]), len(rows[c])).  The two index sets must not overlap
    (blocks ``k < j`` are disjoint) and each pair is set once.
    """
    mat[rows[:, :, None], cols[:, None, :]] = values
    mat[cols[:, :, None], rows[:, None, :]] = values.transpose(0, 2, 1)


def sum_by(codes: Codes, values: Array, size: int) -> Array:
    """Row sums of ``values`` (C, k) per code: (size, k)."""
    return np.stack(
        [np.bincount(codes, values[:, j], minlength=size) for j in range(values.shape[1])],
        axis=1,
    ).astype(np.float64, copy=False)
