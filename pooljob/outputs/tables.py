"""The output tables: estimates, effects, coefficients and components.

Columns are built from numpy arrays and Arrow key columns; no Python object
is made per group.  Their meaning is the output contract (docs/outputs.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from pooljob.model.formula import Formula, Grouping
from pooljob.model.nested_fit import NestedFit
from pooljob.model.optimize import is_singular
from pooljob.outputs.frames import level_label

if TYPE_CHECKING:
    from pooljob.model.general import GeneralFit
    from pooljob.outputs.poststratify import Predictor
from pooljob.scan.statistics import GroupStatistics

INTERCEPT = "(Intercept)"


@dataclass(frozen=True)
class FitResult:
    """A fitted model and its tables.

    Attributes
    ----------
    estimates : polars.DataFrame
        One row per group at every level: partially pooled means.
    effects : polars.DataFrame
        Conditional modes and their conditional SDs (lme4 ``ranef``).
    coefficients : polars.DataFrame
        Fixed effects (lme4 ``fixef`` with standard errors).
    components : polars.DataFrame
        Variance components (lme4 ``as.data.frame(VarCorr(m))``).
    objective : float
        REML criterion, or −2 log-likelihood for ML.
    loglik : float
    converged, singular : bool
    hierarchy : tuple of Grouping
        The groupings as fitted: for a nested model the tree, top level first.
    nested : bool
        Whether the groupings form a tree (the nested solver fitted it).
    predictor : Predictor or None
        For binomial and Poisson fits: what poststratification needs.
    """

    formula: Formula
    family: str
    method: str
    interval: float
    estimates: pl.DataFrame
    effects: pl.DataFrame
    coefficients: pl.DataFrame
    components: pl.DataFrame
    objective: float
    loglik: float
    converged: bool
    singular: bool
    nobs: int
    sigma: float
    groups: dict[str, int]
    rows: dict[str, Any]
    optimizer: dict[str, Any]
    hierarchy: tuple[Grouping, ...]
    timings: dict[str, float] = field(default_factory=dict)
    nested: bool = True
    predictor: Predictor | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        """One line: formula, family and method, size, criterion, convergence (no tables)."""
        return (
            f"FitResult({self.formula.text!r}, family={self.family!r}, "
            f"method={self.method!r}, nobs={self.nobs}, groups={self.groups}, "
            f"objective={self.objective:.6f}, converged={self.converged})"
        )

    def __str__(self) -> str:
        """The fit as lme4 prints ``summary(m)``: see :meth:`summary_text`."""
        return self.summary_text()

    def summary_text(self) -> str:
        """The fit as lme4 prints ``summary(m)``, for people.

        Formula, method and criterion (REML, or AIC, BIC, logLik and
        deviance), the random effects' variances, standard deviations and
        correlations, the number of observations and groups, and the fixed
        effects with standard errors and t (or z) values.  ``print(fit)``
        shows it; :meth:`summary` is the manifest's dict of numbers.
        """
        from pooljob.outputs.summary_text import summary_text

        return summary_text(self)

    def summary(self) -> dict[str, Any]:
        """The fit's numbers for the manifest (no tables)."""
        return {
            "formula": self.formula.text,
            "family": self.family,
            "method": self.method,
            "nobs": self.nobs,
            "groups": self.groups,
            "objective": self.objective,
            "loglik": self.loglik,
            "sigma": self.sigma,
            "converged": self.converged,
            "singular": self.singular,
            "optimizer": self.optimizer,
            "rows": self.rows,
            "interval": self.interval,
        }


def _key_frame(gs: GroupStatistics, level: int) -> pl.DataFrame:
    """Key columns for the groups of one level; columns not in it are null."""
    lev = gs.levels[level]
    own = set(lev.grouping.columns)
    picked = gs.keys[lev.first]
    return picked.with_columns(
        [pl.lit(None, dtype=gs.keys.schema[c]).alias(c) for c in gs.keys.columns if c not in own]
    )


def build(
    formula: Formula, gs: GroupStatistics, fit: NestedFit, interval: float, family: str
) -> FitResult:
    """Assemble the output tables from the statistics and the fit."""
    z = NormalDist().inv_cdf(0.5 + interval / 2.0)
    est_parts, eff_parts = [], []
    for k, lev in enumerate(gs.levels):
        res = fit.levels[k]
        keys = _key_frame(gs, k)
        name = lev.grouping.name
        estimate = res.estimate + gs.shift
        est_parts.append(
            pl.concat(
                [
                    pl.repeat(name, len(estimate), eager=True).alias("grouping").to_frame(),
                    keys,
                    pl.DataFrame(
                        {
                            "n": res.n.astype(np.int64),
                            "raw_mean": res.raw_mean + gs.shift,
                            "estimate": estimate,
                            "std_error": res.std_error,
                            "lower": estimate - z * res.std_error,
                            "upper": estimate + z * res.std_error,
                            "shrinkage": res.shrinkage,
                        }
                    ),
                ],
                how="horizontal",
            )
        )
        eff_parts.append(
            pl.concat(
                [
                    keys.select(
                        pl.lit(name).alias("grouping"),
                        level_label(lev.grouping.columns).alias("level"),
                    ),
                    keys,
                    pl.DataFrame(
                        {
                            "term": pl.repeat(INTERCEPT, len(res.effect), eager=True),
                            "estimate": res.effect,
                            "cond_sd": res.cond_sd,
                        }
                    ),
                ],
                how="horizontal",
            )
        )
    estimates = pl.concat(est_parts, how="vertical")
    effects = pl.concat(list(reversed(eff_parts)), how="vertical")
    coefficients = pl.DataFrame(
        {
            "term": [INTERCEPT],
            "estimate": [fit.intercept + gs.shift],
            "std_error": [fit.intercept_se],
        }
    )
    names = [lev.grouping.name for lev in reversed(gs.levels)]
    variances = list(reversed(fit.variances.tolist()))
    components = pl.DataFrame(
        {
            "grouping": [*names, "Residual"],
            "term1": [INTERCEPT] * len(names) + [None],
            "term2": pl.Series([None] * (len(names) + 1), dtype=pl.String),
            "variance": [*variances, fit.sigma2],
            "sd": [float(np.sqrt(v)) for v in [*variances, fit.sigma2]],
        },
        schema_overrides={"term1": pl.String},
    )
    return FitResult(
        formula=formula,
        family=family,
        method=fit.method,
        interval=interval,
        estimates=estimates,
        effects=effects,
        coefficients=coefficients,
        components=components,
        objective=fit.objective,
        loglik=fit.loglik,
        converged=fit.converged,
        singular=fit.singular,
        nobs=int(fit.nobs),
        sigma=float(np.sqrt(fit.sigma2)),
        groups={lev.grouping.name: lev.size for lev in reversed(gs.levels)},
        rows=gs.rows,
        optimizer=fit.optimizer.to_dict(),
        hierarchy=tuple(lev.grouping for lev in gs.levels),
    )


def build_general(
    formula: Formula, fit: GeneralFit, interval: float, family: str, method: str
) -> FitResult:
    """Assemble the output tables of a general (blocked-Cholesky) fit."""
    from pooljob.model.general import tables

    frames = tables(fit, interval)
    prep = fit.prepared
    sigma2 = fit.solution.sigma2
    singular = is_singular(prep.blocks.free, fit.theta)
    groups = {
        b.grouping.name: int(prep.codes[d].max()) + 1 for d, b in enumerate(prep.design.blocks)
    }
    return FitResult(
        formula=formula,
        family=family,
        method=method,
        interval=interval,
        estimates=frames["estimates"],
        effects=frames["effects"],
        coefficients=frames["coefficients"],
        components=frames["components"],
        objective=fit.objective,
        loglik=-0.5 * fit.objective,
        converged=fit.optimizer.converged,
        singular=singular,
        nobs=int(prep.blocks.n),
        sigma=float(np.sqrt(sigma2)),
        groups=groups,
        rows=prep.cells.rows,
        optimizer=fit.optimizer.to_dict(),
        hierarchy=tuple(b.grouping for b in prep.design.blocks),
        nested=False,
    )
