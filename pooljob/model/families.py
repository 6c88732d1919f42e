"""The binomial (logit) and Poisson (log) families: the mean per unit of ``t`` and its link.

For a cell with ``t`` trials (binomial) or exposure ``t`` (Poisson) and
linear predictor ``η``, the mean per unit of ``t`` is ``m(η) = expit(η)`` or
``exp(η)``; ``m'(η)`` is ``m(1 − m)`` or ``m``.  Pure numerics.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


def mean_link(family: str, eta: Array) -> tuple[Array, Array]:
    """Per unit of ``t``: the mean ``m(η)`` and its derivative ``m'(η)``."""
    if family == "binomial":
        from scipy.special import expit  # here: importing pooljob loads no scipy.special

        p = expit(eta)
        return p, p * (1.0 - p)
    mu = np.exp(eta)
    return mu, mu


def link(family: str, mean: Array) -> Array:
    """The link: ``logit`` (binomial) or ``log`` (Poisson)."""
    with np.errstate(divide="ignore"):
        if family == "binomial":
            return np.asarray(np.log(mean) - np.log1p(-mean))
        return np.asarray(np.log(mean))
