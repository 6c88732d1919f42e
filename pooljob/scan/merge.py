"""Pool the moments of disjoint parts into the moments of their union.

The statistics store of an incremental refresh (:mod:`pooljob.scan.store`) keeps,
for every source file ``f`` and cell, the cell's count ``n_f``, the means
``m_f`` of its numeric variables and their co-moment matrix
``M_f = Σ_rows (v − m_f)(v − m_f)ᵀ``.  A cell of the whole source is the
union of its parts in the files, and its moments follow exactly from theirs
(Chan, Golub & LeVeque's parallel update, applied to all parts at once)::

    n = Σ_f n_f
    m = Σ_f n_f m_f / n
    M = Σ_f M_f + Σ_f n_f (m_f − m)(m_f − m)ᵀ

The second term of ``M`` is the between-parts scatter about the merged mean:
every product is of two deviations, never ``Σ v vᵀ − n m mᵀ``, so no large
terms cancel.  Pure numpy; no I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


def merge_moments(
    codes: NDArray[np.int64], size: int, n: Array, mean: Array, comoment: Array
) -> tuple[Array, Array, Array]:
    """Counts, means and co-moments of the cells, from those of their parts.

    Parameters
    ----------
    codes : ndarray of int, shape (K,)
        The merged cell (``0 … size−1``) each part belongs to; every cell
        has at least one part, with ``n_f > 0``.
    size : int
        Number of merged cells.
    n : ndarray, shape (K,)
        Rows of each part.
    mean : ndarray, shape (K, m)
        Means of the ``m`` variables in each part.
    comoment : ndarray, shape (K, m, m)
        ``M_f = Σ (v − m_f)(v − m_f)ᵀ`` over the rows of each part.

    Returns
    -------
    n : ndarray, shape (size,)
        ``Σ_f n_f`` per cell.
    mean : ndarray, shape (size, m)
        ``Σ_f n_f m_f / n``.
    comoment : ndarray, shape (size, m, m)
        ``Σ_f M_f + Σ_f n_f (m_f − m)(m_f − m)ᵀ``, symmetric.

    Notes
    -----
    Sums run over the parts in the order given (``numpy.bincount``), so the
    same parts in the same order give the same bits.
    """
    k, m = mean.shape
    total = np.bincount(codes, weights=n, minlength=size).astype(np.float64)
    merged_mean = np.empty((size, m))
    for i in range(m):
        merged_mean[:, i] = np.bincount(codes, weights=n * mean[:, i], minlength=size) / total
    deviation = mean - merged_mean[codes] if k else np.zeros((0, m))
    merged = np.empty((size, m, m))
    for i in range(m):
        for j in range(i, m):
            terms = comoment[:, i, j] + n * deviation[:, i] * deviation[:, j]
            merged[:, i, j] = merged[:, j, i] = np.bincount(codes, weights=terms, minlength=size)
    return total, merged_mean, merged
