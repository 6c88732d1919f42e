"""Benchmarking: adjust group estimates so that their weighted mean equals a known total.

Pure numerics on arrays (no I/O); the tables are read and matched by
:mod:`pooljob.outputs.benchmark`.  For one benchmarked grouping and the
groups ``c`` of one benchmark group ``s`` (counties of a state), with
weights ``w_c`` (populations), model estimates ``θ̂_c`` and the total
``T_s``::

    m_s = Σ_c w_c θ̂_c / Σ_c w_c               the weighted mean before
    ratio:       θ̃_c = f_s θ̂_c,  f_s = T_s / m_s
    difference:  θ̃_c = θ̂_c + d_s,  d_s = T_s − m_s

so that ``Σ_c w_c θ̃_c / Σ_c w_c = T_s`` exactly (to rounding) either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Codes = NDArray[np.int64]


@dataclass(frozen=True)
class Adjustment:
    """The adjustment of each benchmark group.

    Attributes
    ----------
    mean : ndarray, shape (G,)
        ``m_s``, the weighted mean of the group's estimates before benchmarking.
    weight : ndarray, shape (G,)
        ``Σ_c w_c``.
    members : ndarray, shape (G,)
        How many estimates the group has.
    adjustment : ndarray, shape (G,)
        ``f_s = T_s / m_s`` (ratio) or ``d_s = T_s − m_s`` (difference).
    """

    mean: Array
    weight: Array
    members: Codes
    adjustment: Array


def adjustments(
    estimate: Array, weight: Array, group: Codes, totals: Array, method: str
) -> Adjustment:
    """``m_s``, ``Σ w`` and the factor ``T_s / m_s`` (ratio) or shift ``T_s − m_s`` per group.

    ``group[i]`` is the benchmark group of estimate ``i`` (``0 ≤ group < G``,
    ``G = len(totals)``).  A group with no estimate gets ``m = nan``; the
    caller checks :func:`empty_weight` and :func:`ratio_problem` first.
    """
    size = len(totals)
    members = np.bincount(group, minlength=size).astype(np.int64)
    wsum = np.bincount(group, weights=weight, minlength=size).astype(np.float64)
    wy = np.bincount(group, weights=weight * estimate, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = wy / wsum
        adjust = totals / mean if method == "ratio" else totals - mean
    return Adjustment(mean=mean, weight=wsum, members=members, adjustment=adjust)


def empty_weight(weight: Array, group: Codes, size: int) -> int | None:
    """The first group whose estimates all have weight 0 (its mean is undefined), or None."""
    members = np.bincount(group, minlength=size)
    wsum = np.bincount(group, weights=weight, minlength=size)
    bad = np.flatnonzero((members > 0) & ~(wsum > 0))
    return int(bad[0]) if bad.size else None


def ratio_problem(estimate: Array, group: Codes, totals: Array) -> int | None:
    """The first group where ratio benchmarking is ill-defined, or None.

    Ratio benchmarking needs a group's estimates and its total all of one
    strict sign (all > 0, or all < 0): otherwise ``m_s`` may be 0 or near it,
    or the factor negative, and the scaled estimates meaningless.
    """
    size = len(totals)
    pos = np.bincount(group, weights=(estimate > 0).astype(float), minlength=size)
    neg = np.bincount(group, weights=(estimate < 0).astype(float), minlength=size)
    members = np.bincount(group, minlength=size)
    ok = ((pos == members) & (totals > 0)) | ((neg == members) & (totals < 0)) | (members == 0)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def apply(values: Array, adjustment: Array, method: str, scale: bool) -> Array:
    """Benchmarked ``values``: times the factor (ratio), or plus the shift (difference).

    ``adjustment`` is per value (the group's, already looked up).  ``scale``
    marks a spread (``std_error``, ``rmse``): the ratio multiplies it by
    ``|f|``; the difference leaves it as it is.
    """
    if method == "ratio":
        return values * (np.abs(adjustment) if scale else adjustment)
    return values if scale else values + adjustment
