"""The statistics a scan hands to the model: per-cell moments and per-cell counts.

A cell is one combination of the model's key columns (grouping factors and
categorical variables).  These containers are the model's state: the scan
(:mod:`pooljob.scan`) fills them with one SQL pass, the solvers read them, and
nothing in them refers to rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from numpy.typing import NDArray

Array = NDArray[np.float64]


@dataclass(frozen=True)
class NumericVariable:
    """A numeric variable: the product of one or more numeric columns.

    Attributes
    ----------
    columns : tuple of str
        Source columns multiplied together (one for a plain covariate).
    centrable : bool
        Whether the model may be fitted with this variable centred (its
        design is closed under the shift; see :mod:`pooljob.model.design`).
    """

    columns: tuple[str, ...]
    centrable: bool = True


@dataclass(frozen=True)
class CellTable:
    """Per-cell moments of the model's numeric variables.

    Attributes
    ----------
    keys : polars.DataFrame
        One row per cell: the key columns with their original types.
    n : ndarray, shape (C,)
        Rows per cell; with observation weights ``w`` (``[model] weights``),
        ``Σ w`` over the cell's rows.
    mean : ndarray, shape (C, m)
        Means of the variables, centred at ``shifts`` (weighted:
        ``Σ w v / Σ w``).
    comoment : ndarray, shape (C, m, m)
        ``Σ w (v_i − v̄_i)(v_j − v̄_j)`` within each cell (``w = 1`` unweighted).
    shifts : ndarray, shape (m,)
    rows : dict
        ``read``, ``used`` and ``dropped`` (reason to count).
    count : ndarray or None, shape (C,)
        Weighted cells only: rows per cell (``n`` is then the weight sum).
    log_weight : float
        ``Σ log w`` over the rows used (0 unweighted): lme4's criterion with
        precision weights is the unweighted one of the rows scaled by ``√w``
        less this sum (docs/models.md, "Observation weights").
    """

    keys: pl.DataFrame
    n: NDArray[np.float64]
    mean: NDArray[np.float64]
    comoment: NDArray[np.float64]
    shifts: NDArray[np.float64]
    rows: dict[str, object]
    count: NDArray[np.float64] | None = None
    log_weight: float = 0.0

    @property
    def row_counts(self) -> NDArray[np.float64]:
        """Rows per cell: ``count`` when weighted, else ``n``."""
        return self.n if self.count is None else self.count

    def moments(self) -> NDArray[np.float64]:
        """``S[c] = Σ_rows ω u uᵀ`` with ``u = (1, v_1 − s_1, …)``, shape (C, m+1, m+1).

        ``ω`` is the row's observation weight (1 unweighted).
        """
        c, m = self.mean.shape
        s = np.empty((c, m + 1, m + 1))
        s[:, 0, 0] = self.n
        s[:, 0, 1:] = self.n[:, None] * self.mean
        s[:, 1:, 0] = s[:, 0, 1:]
        s[:, 1:, 1:] = self.comoment + self.n[:, None, None] * (
            self.mean[:, :, None] * self.mean[:, None, :]
        )
        return s


@dataclass(frozen=True)
class CountTable:
    """Per-cell sufficient statistics of a binomial or Poisson model.

    Attributes
    ----------
    keys : polars.DataFrame
        One row per cell: the key columns with their original types.
    n : ndarray, shape (C,)
        Rows used per cell.
    y : ndarray, shape (C,)
        Sum of the response: successes, or events.
    t : ndarray, shape (C,)
        Binomial: trials.  Poisson: ``Σ exp(offset)``, the exposure.
    offset : ndarray, shape (C,)
        Binomial: the cell's offset (constant within it).  Poisson: 0 (the
        offsets are in ``t``).
    values : ndarray, shape (C, m)
        The numeric variables of the design, constant within each cell
        (column ``k`` is design variable ``k + 1``; the response's column is
        0 and the offsets' columns 0: they are not design columns).
    constant : float
        ``Σ_rows`` of the log-likelihood's constant.
    rows : dict
        ``read``, ``used`` and ``dropped`` (reason to count).
    """

    keys: pl.DataFrame
    n: Array
    y: Array
    t: Array
    offset: Array
    values: Array
    constant: float
    rows: dict[str, object]
