"""A start for θ from moment estimates of the variance components (random intercepts).

For a model whose every grouping is a random intercept,
``y = Xβ + Σ_k a_k[level] + e``, the within-level sums of squares of the
OLS residuals ``r = y − Xβ̂_OLS`` have expectations linear in the variance
components (Gao & Owen 2017, "Efficient moment calculations for variance
components in large unbalanced crossed random effects models", EJS; their
within-row/within-column form).  With ``n_kl`` the rows of level l of
grouping k, ``n^{kj}_{lm}`` the rows shared by level l of k and level m of
j, ``N`` the rows and ``q_k`` the levels::

    W_k = Σ r² − Σ_l (Σ_{rows of l} r)² / n_kl
    E W_k = σ_E² (N − q_k) + Σ_{j≠k} σ_j² (N − Σ_l Σ_m (n^{kj}_{lm})² / n_kl)
    T   = Σ r² − (Σ r)² / N
    E T = σ_E² (N − 1) + Σ_j σ_j² (N − Σ_l n_jl² / N)

(the fitted ``Xβ̂`` is ignored in the expectations: it changes them by
O(p) rows, which is immaterial for a start).  Every term is in the blocks
already (:mod:`pooljob.model.blocks`: ``Z_k'Z_k``, ``Z_k'[X y]``, the
pairs ``Z_k'Z_j``, ``[X y]'[X y]``), so the start costs O(levels + pairs).
The K + 1 equations give ``σ_k²`` and ``σ_E²``; the start is
``θ_k = sqrt(σ_k² / σ_E²)``, with a component estimated below ``SMALLEST``
(at or below 0 included) started at ``FLOOR``.  It is only a start: the
optimizer then minimises the exact criterion from it.  Pure numerics: no I/O.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pooljob.model.blocks import Blocks

Array = NDArray[np.float64]

#: Start of a θ_k whose moment estimate is not positive (or below SMALLEST).
FLOOR = 0.1
#: The smallest θ_k a moment estimate starts at: nearer 0 the criterion is flat
#: in θ_k (even in it), and Newton's steps from there are slow.
SMALLEST = 0.02


def moment_start(blocks: Blocks) -> Array | None:
    """θ from moment estimates, or None when they do not apply (slopes) or fail."""
    k_all = blocks.n_blocks
    if not k_all or any(w != 1 for w in blocks.widths):
        return None
    p = blocks.xtx.shape[0] - 1
    n = blocks.n
    c = np.ones(p + 1)
    if p:
        try:
            c[:p] = -np.linalg.solve(blocks.xtx[:p, :p], blocks.xtx[:p, p])
        except np.linalg.LinAlgError:
            return None
    ss = float(c @ blocks.xtx @ c)
    counts = [z[:, 0, 0] for z in blocks.ztz]
    sums = [zxy[:, 0, :] @ c for zxy in blocks.ztxy]
    total = float(sums[0].sum())
    # squared shared counts per level: cross[k][j] = Σ_l Σ_m n_lm² / n_kl
    share = np.zeros((k_all, k_all))
    for (a, b), pair in blocks.pairs.items():
        sq = pair.values[:, 0, 0] ** 2
        na, nb = counts[a][pair.codes_a], counts[b][pair.codes_b]
        share[a, b] = float((sq / np.where(na > 0, na, 1.0)).sum())
        share[b, a] = float((sq / np.where(nb > 0, nb, 1.0)).sum())
    mat = np.zeros((k_all + 1, k_all + 1))
    rhs = np.zeros(k_all + 1)
    for k in range(k_all):
        nk = counts[k]
        used = nk > 0
        rhs[k] = ss - float((sums[k][used] ** 2 / nk[used]).sum())
        mat[k, k_all] = n - float(used.sum())
        for j in range(k_all):
            if j != k:
                mat[k, j] = n - share[k, j]
    rhs[k_all] = ss - total**2 / n
    mat[k_all, k_all] = n - 1.0
    for j in range(k_all):
        mat[k_all, j] = n - float((counts[j] ** 2).sum()) / n
    try:
        sol = np.linalg.solve(mat, rhs)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(sol)) or sol[-1] <= 0.0:
        return None
    ratio = sol[:-1] / sol[-1]
    return np.where(ratio > SMALLEST**2, np.sqrt(np.maximum(ratio, 0.0)), FLOOR)
