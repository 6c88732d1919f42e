"""θ's layout: which entries of the templates ``T_k`` are bounded, interior, sign-free.

θ holds the free lower-triangle entries of each template ``T_k`` (lme4's
order); ``Λ_k = I ⊗ T_k``.  Diagonal entries are bounded below by 0, and
every criterion is even in each column of ``T_k`` (``b = T u`` with
``u ~ N(0, I)``: negating a column negates a ``u_j``).  Coordinates after
θ (β for count models) are unbounded.  Pure numerics.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
#: Per template ``T_k``, its free lower-triangle entries (i, j), in θ's order.
Layout = list[list[tuple[int, int]]]

#: lme4's ``isSingular`` tolerance on θ.
SINGULAR_TOL = 1e-4


def diagonal_positions(free: Layout) -> list[int]:
    """Indices in θ of the diagonal entries of the templates ``T_k`` (bounded by 0)."""
    pos, out = 0, []
    for entries in free:
        for i, j in entries:
            if i == j:
                out.append(pos)
            pos += 1
    return out


def interior(layout: Layout, x: Array) -> list[int]:
    """The coordinates away from the boundary: Newton steps and the Hessian use these.

    An entry of ``T_k`` whose column's diagonal is below ``10 × SINGULAR_TOL``
    is left out (with the diagonal at 0 the criterion depends on the column
    only through its norm); coordinates after θ are always in.
    """
    out, pos = [], 0
    for entries in layout:
        diagonal = {j: pos + a for a, (i, j) in enumerate(entries) if i == j}
        for a, (_, j) in enumerate(entries):
            if j in diagonal and x[diagonal[j]] >= 10 * SINGULAR_TOL:
                out.append(pos + a)
        pos += len(entries)
    return out + list(range(pos, len(x)))


def positive_diagonal(layout: Layout, x: Array) -> Array:
    """``x`` with each column of ``T_k`` whose diagonal is negative negated (same criterion)."""
    out, pos = np.array(x, dtype=np.float64), 0
    for entries in layout:
        for a, (i, j) in enumerate(entries):
            if i == j and x[pos + a] < 0:
                for b, (_, jj) in enumerate(entries):
                    if jj == j:
                        out[pos + b] = -x[pos + b]
        pos += len(entries)
    return out
