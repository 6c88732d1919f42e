"""The output tables: estimates, effects, coefficients and components.

Columns are built from numpy arrays and Arrow key columns; no Python object
is made per group.  Their meaning is the output contract (docs/outputs.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.model.formula import Formula, Grouping
from pooljob.model.nested_fit import NestedFit
from pooljob.model.optimize import is_singular
from pooljob.outputs.estimates import GroupingEstimates, estimates_frame
from pooljob.outputs.frames import (
    COMPONENT_SCHEMA,
    GroupingEffects,
    coefficients_frame,
    effects_table,
    published_names,
)

if TYPE_CHECKING:
    import scipy.sparse as sp

    from pooljob.model.general import GeneralFit
    from pooljob.outputs.poststratify import Predictor
from pooljob.scan.tree import GroupStatistics

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
    sampling_variance : str or None
        Area-level (Fay–Herriot) fits: the column of known sampling variances.
    benchmarked : dict or None
        After :meth:`benchmark` (or a job's ``[benchmark]``): what was
        benchmarked, with each group's total, weighted mean and adjustment.
    interval_method : {"plugin", "prasad-rao"}
        How ``lower``/``upper`` of the estimates were made (docs/outputs.md).
    weights : str or None
        The column of observation (precision) weights, if any.
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
    sampling_variance: str | None = None
    #: The manifest's ``benchmark`` record once the estimates are benchmarked (else None).
    benchmarked: dict[str, Any] | None = None
    interval_method: str = "plugin"
    weights: str | None = None
    #: ``[model] solver = "iterative"``: what is approximate and by how much (manifest).
    approximation: dict[str, Any] | None = None

    @property
    def key_columns(self) -> dict[str, str]:
        """Each grouping key column of the source → its name in the tables.

        The same name unless it clashes with a column of the tables
        (:func:`pooljob.outputs.frames.published_names`: ``level`` →
        ``level_key``); in the order of the tables.
        """
        sources = list(dict.fromkeys(c for g in self.hierarchy for c in g.columns))
        names = published_names(sources)
        return {k: names[k] for k in sources if names[k] in self.estimates.columns}

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

    def predict(
        self, cells: Any, draws: int = 1000, seed: int = 0, interval: float | None = None
    ) -> pl.DataFrame:
        """The model's prediction for each row of ``cells`` (docs/outputs.md, predictions).

        ``cells`` (a path, DuckDB relation, or polars / pandas / Arrow table)
        holds the model's grouping and predictor columns.  Returns, in its row
        order, those columns, ``estimate`` (``m(x'β̂ + Σ z'b̂)``: a mean, a
        probability, or a rate per unit of exposure), ``std_error``,
        ``lower``, ``upper`` (exact for Gaussian fits; from ``draws`` seeded
        posterior draws for binomial and Poisson ones) and ``unseen`` (the
        groupings whose level the sample never saw, predicted at their prior
        mean 0 with their prior variance; null when none).
        """
        import os

        from pooljob.errors import ConfigError
        from pooljob.model.options import PredictConfig
        from pooljob.outputs.predict import predict, read_cells

        if self.predictor is None:
            raise ConfigError(
                'prediction is not available for a fit by solver = "iterative": its '
                "prediction variances are not computed"
                if self.approximation is not None
                else "prediction does not apply to an area-level (Fay–Herriot) fit: it has no "
                "unit-level predictions"
            )
        name = str(cells) if isinstance(cells, str | os.PathLike) else "given"
        config = PredictConfig(name, int(draws), int(seed))
        table = read_cells(self.predictor, config, cells)
        level = self.interval if interval is None else float(interval)
        return predict(self.predictor, config, level, table)

    def benchmark(
        self,
        totals: Any,
        by: list[str] | tuple[str, ...],
        total: str,
        weights: Any = None,
        weight: str | None = None,
        method: str = "ratio",
    ) -> FitResult:
        """The fit with its estimates benchmarked to known totals (docs/outputs.md, benchmark).

        Every grouping whose columns include all of ``by`` is adjusted within
        each ``by`` group ``s`` so that ``Σ_c w_c θ̃_c / Σ_c w_c = T_s``:
        ``θ̃_c = θ̂_c T_s / m_s`` (``method="ratio"``; ``std_error``,
        ``lower``, ``upper``, ``rmse`` scaled alike) or ``θ̂_c + T_s − m_s``
        (``"difference"``; intervals shifted, ``std_error`` kept), with
        ``m_s = Σ_c w_c θ̂_c / Σ_c w_c``.  ``estimate`` holds the benchmarked
        figure, ``estimate_unbenchmarked`` the model's.

        Parameters
        ----------
        totals : str, path, DuckDB relation, or polars / pandas / Arrow table
            One row per ``by`` group: the ``by`` columns and ``total``.
        by : sequence of str
            Grouping columns of the model (``["state"]``).
        total : str
            The column of totals ``T_s``: the weighted mean the group's
            estimates must have.
        weights : table or path, optional
            The weights ``w_c`` (populations), keyed by the columns of the
            groupings finer than ``by``.  Without it, the weights are a
            column of ``totals``, which then has one row per finest group.
        weight : str, optional
            The column of weights (in ``weights``, else in ``totals``);
            needed when a grouping finer than ``by`` is benchmarked.
        method : {"ratio", "difference"}

        Returns
        -------
        FitResult
            A copy with the benchmarked ``estimates`` and ``benchmarked`` set.
        """
        import dataclasses
        import os

        from pooljob.errors import ConfigError
        from pooljob.model.options import check_benchmark
        from pooljob.outputs.benchmark import benchmark_estimates, read_benchmark

        if self.benchmarked is not None:
            raise ConfigError("this fit is already benchmarked; benchmark the original fit")

        def name(data: Any) -> str:
            return str(data) if isinstance(data, str | os.PathLike) else "given"

        spec: dict[str, Any] = {"path": name(totals), "by": list(by), "total": total}
        spec["method"] = method
        if weight is not None:
            spec["weight"] = weight
        if weights is not None:
            spec["weights_path"] = name(weights)
        config, problems = check_benchmark(spec, self.hierarchy)
        if problems:
            raise ConfigError("; ".join(problems))
        assert config is not None
        paths = isinstance(totals, str | os.PathLike), isinstance(weights, str | os.PathLike)
        tables = read_benchmark(
            config,
            self.hierarchy,
            None if paths[0] else totals,
            None if paths[1] or weights is None else weights,
        )
        estimates, record = benchmark_estimates(
            self.estimates, self.key_columns, self.hierarchy, config, tables
        )
        return dataclasses.replace(self, estimates=estimates, benchmarked=record)

    def summary(self) -> dict[str, Any]:
        """The fit's numbers for the manifest (no tables)."""
        return {
            "formula": self.formula.text,
            "family": self.family,
            "method": self.method,
            "sampling_variance": self.sampling_variance,
            "weights": self.weights,
            "nobs": self.nobs,
            "groups": self.groups,
            # not evaluated (NaN) by solver = "iterative": null, as JSON has no NaN
            "objective": self.objective if np.isfinite(self.objective) else None,
            "loglik": self.loglik if np.isfinite(self.loglik) else None,
            "sigma": self.sigma,
            "converged": self.converged,
            "singular": self.singular,
            "optimizer": self.optimizer,
            "rows": self.rows,
            "interval": self.interval,
            "interval_method": self.interval_method,
            "key_columns": self.key_columns,
            "benchmark": self.benchmarked,
            "approximation": self.approximation,
        }


def _key_frame(gs: GroupStatistics, level: int) -> pl.DataFrame:
    """The key columns of the groups of one level (from the first leaf of each)."""
    lev = gs.levels[level]
    return gs.keys[lev.first].select(list(lev.grouping.columns))


def _nested_rmse(gs: GroupStatistics, fit: NestedFit) -> list[NDArray[np.float64]]:
    """Per level of the tree: ``√(std_error² + 2 g3)`` (:mod:`pooljob.model.second_order`)."""
    from pooljob.model.second_order import split_levels, tree_g3

    stats = gs.stats
    g3 = split_levels(tree_g3(stats.n, stats.parents, fit.variances, fit.sigma2), list(stats.sizes))
    return [
        np.sqrt(np.maximum(lev.std_error**2 + 2.0 * g, 0.0))
        for lev, g in zip(fit.levels, g3, strict=True)
    ]


def build(
    formula: Formula,
    gs: GroupStatistics,
    fit: NestedFit,
    interval: float,
    family: str,
    interval_method: str = "plugin",
) -> FitResult:
    """Assemble the output tables from the statistics and the fit.

    With ``interval_method = "prasad-rao"`` the estimates get ``rmse`` and
    their interval from it.
    """
    groups, effects = [], []
    rmse = _nested_rmse(gs, fit) if interval_method == "prasad-rao" else None
    for k, lev in enumerate(gs.levels):
        res = fit.levels[k]
        keys = _key_frame(gs, k)
        name = lev.grouping.name
        groups.append(
            GroupingEstimates(
                name=name,
                keys=keys,
                n=res.n,
                raw_mean=res.raw_mean + gs.shift,
                estimate=res.estimate + gs.shift,
                parent=res.parent + gs.shift,
                std_error=res.std_error,
                shrinkage=res.shrinkage,
                rmse=rmse[k] if rmse is not None else None,
            )
        )
        effects.append(
            GroupingEffects(
                name=name,
                columns=lev.grouping.columns,
                keys=keys,
                terms=[INTERCEPT],
                estimate=res.effect[:, None],
                cond_sd=res.cond_sd[:, None],
            )
        )
    key_list, schema = list(gs.keys.columns), gs.keys.schema
    coefficients = coefficients_frame(
        [INTERCEPT], np.array([fit.intercept + gs.shift]), np.array([[fit.intercept_se**2]])
    )
    variances = fit.variances.tolist()
    rows: list[dict[str, Any]] = [
        {
            "grouping": lev.grouping.name,
            "term1": INTERCEPT,
            "term2": None,
            "variance": variances[k],
            "sd": float(np.sqrt(variances[k])),
        }
        for k, lev in reversed(list(enumerate(gs.levels)))
    ]
    rows.append(
        {
            "grouping": "Residual",
            "term1": None,
            "term2": None,
            "variance": fit.sigma2,
            "sd": float(np.sqrt(fit.sigma2)),
        }
    )
    estimates = estimates_frame(groups, "gaussian", interval, key_list, schema, interval_method)
    effects_out = effects_table(list(reversed(effects)), key_list, schema)
    components = pl.DataFrame(rows, schema=COMPONENT_SCHEMA, orient="row")
    return FitResult(
        formula=formula,
        family=family,
        method=fit.method,
        interval=interval,
        estimates=estimates,
        effects=effects_out,
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
        predictor=_nested_predictor(formula, gs, fit) if family == "gaussian" else None,
        interval_method=interval_method,
    )


def _nested_predictor(formula: Formula, gs: GroupStatistics, fit: NestedFit) -> Predictor:
    """Poststratification of a nested fit: exact variances by one pass up the tree.

    The design is the formula's (intercept and random intercepts, no
    covariates); its blocks map onto the levels of the tree.
    """
    from pooljob.model.design import build_design
    from pooljob.model.nested import upward
    from pooljob.model.nested_linear import linear_variance
    from pooljob.outputs.poststratify import Predictor

    design = build_design(formula, set(), {})
    level_of = [
        next(k for k, lev in enumerate(gs.levels) if lev.grouping == block.grouping)
        for block in design.blocks
    ]
    r = fit.theta**2
    up = upward(gs.stats, r)

    def variance(
        a_fixed: NDArray[np.float64], a_random: list[sp.csr_matrix]
    ) -> NDArray[np.float64]:
        by_level = [a_random[level_of.index(k)] for k in range(len(gs.levels))]
        return linear_variance(gs.stats, up, r, fit.sigma2, a_fixed[0], by_level)

    return Predictor(
        family="gaussian",
        formula=formula,
        design=design,
        beta=np.array([fit.intercept + gs.shift]),
        b=[fit.levels[k].effect[:, None] for k in level_of],
        levels=[_key_frame(gs, k) for k in level_of],
        covariance=[np.array([[fit.variances[k]]]) for k in level_of],
        keys=gs.keys.schema,
        variance=variance,
    )


def build_general(
    formula: Formula,
    fit: GeneralFit,
    interval: float,
    family: str,
    method: str,
    interval_method: str = "plugin",
) -> FitResult:
    """Assemble the output tables of a general (blocked-Cholesky) fit."""
    from pooljob.outputs.gaussian_tables import predictor, tables

    frames = tables(fit, interval, interval_method)
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
        predictor=predictor(fit, formula) if family == "gaussian" else None,
        interval_method=interval_method,
    )
