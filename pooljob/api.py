"""The Python API: ``pooljob.fit(formula, data)``."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from pooljob.errors import ConfigError
from pooljob.model.area_options import area_option_problems
from pooljob.model.formula import parse_formula
from pooljob.model.interval_options import interval_method_problems
from pooljob.model.options import (
    DEFAULT_MAX_EVALUATIONS,
    FAMILIES,
    METHODS,
    Control,
    check_benchmark,
    check_control,
    check_options,
    check_rollup,
    check_solver,
    check_weights_option,
    default_method,
)
from pooljob.outputs.benchmark import benchmark_estimates, read_benchmark
from pooljob.outputs.tables import FitResult
from pooljob.pipeline import fit_source
from pooljob.scan.source import open_data


def fit(
    formula: str,
    data: Any,
    family: Literal["gaussian", "binomial", "poisson"] = "gaussian",
    method: Literal["reml", "ml", "laplace"] | None = None,
    interval: float = 0.95,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    on_nonconvergence: Literal["fail", "publish"] = "fail",
    rollup: dict[str, str] | None = None,
    sampling_variance: str | None = None,
    benchmark: dict[str, Any] | None = None,
    interval_method: Literal["plugin", "prasad-rao"] = "plugin",
    weights: str | None = None,
    solver: Literal["exact", "iterative"] = "exact",
) -> FitResult:
    """Fit a multilevel model from DuckDB sufficient statistics.

    Gaussian models by REML or ML from per-cell moments; binomial (logit)
    and Poisson (log) models by Laplace's approximation, as glmer, from
    per-cell counts.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"income ~ 1 + (1 | state/county/zip)"``.
    data : str, path, DuckDB relation, or polars / pandas / Arrow table
        A Parquet or CSV path or glob is scanned by DuckDB; tables are read
        in place.  Rows never come into Python.
    family : {"gaussian", "binomial", "poisson"}
        A binomial response is a 0/1 (or boolean) column, or
        ``cbind(successes, failures)``; a Poisson response a count column,
        with ``offset(log(exposure))`` for rates.
    method : {"reml", "ml", "laplace"}, optional
        Default: ``"reml"`` for gaussian, ``"laplace"`` otherwise.  Family
        and method are case-insensitive (``"REML"`` is ``"reml"``).
    interval : float
        Coverage of the ``lower``/``upper`` interval of the estimates.
    max_evaluations : int
        Criterion evaluations after which the optimizer stops (lme4's
        ``maxfun``); the point it reached is then checked like any other.
    on_nonconvergence : {"fail", "publish"}
        A fit that fails the convergence check (docs/models.md) raises
        :class:`pooljob.errors.NonConvergenceError` (``"fail"``), or is
        returned with ``converged = False`` and a warning logged
        (``"publish"``).
    rollup : dict, optional
        ``{"count": ..., "sum": ..., "sum_squares": ...}``: ``data`` is a
        rollup table, one row per group of rows with their number and the sum
        and sum of squares of the response; every other column of the model is
        a column of the rollup (docs/models.md, "Rollup tables").  Gaussian only.
    sampling_variance : str, optional
        An area-level (Fay–Herriot) model, as ``metafor::rma(yi, vi, mods)``
        or ``sae::eblupFH``: one row per area, the response its direct
        estimate and this column its known sampling variance (> 0); the
        formula is ``y ~ x… + (1 | area)``.  ``estimates`` gains ``rmse``
        (docs/models.md, "Area-level models").
    benchmark : dict, optional
        The keys of a job's ``[benchmark]``: ``path`` (the totals table),
        ``by``, ``total``, ``weights_path`` and ``weight`` (needed when a
        benchmarked grouping is finer than ``by``), ``method`` (``"ratio"``
        or ``"difference"``).  The tables are read and checked before the
        scan; the result is :meth:`FitResult.benchmark` of the fit
        (docs/outputs.md, "Benchmarking").
    interval_method : {"plugin", "prasad-rao"}
        ``lower``/``upper`` of the estimates as ``estimate ∓ z·std_error``,
        the variance components taken as known (``"plugin"``, lme4's and
        metafor's), or ``estimate ∓ z·rmse`` with ``rmse`` the second-order
        MSE that adds their uncertainty (``"prasad-rao"``: Gaussian, random
        intercepts, REML for unit-level models; docs/outputs.md).  With few
        groups the plug-in intervals cover less than they say
        (docs/small-area.md).
    weights : str, optional
        The column of observation weights, as lme4's ``weights``: for a
        gaussian model precision weights, row ``i`` has residual variance
        ``σ²/w_i``; for a binomial or Poisson model glmer's prior weights,
        row ``i``'s log-likelihood times ``w_i``.  A weight of 0 drops the
        row; a null, negative or non-finite weight is an
        :class:`pooljob.errors.InputError` (docs/models.md, "Observation
        weights").
    solver : {"exact", "iterative"}
        ``"exact"`` (default): lme4's criterion, exactly.  ``"iterative"``:
        gaussian REML for crossed random intercepts too large for the exact
        dense solver, ``y ~ x… + (1 | f1) + (1 | f2) …``: β̂ and the BLUPs
        solved to a stated tolerance, the variance components with
        stochastic traces; ``.approximation`` says what is approximate and by
        how much (docs/crossed-at-scale.md).

    Returns
    -------
    FitResult
        ``.estimates``, ``.effects``, ``.coefficients``, ``.components``
        (polars DataFrames), ``.objective``, ``.loglik``, ``.converged``,
        ``.singular``, ``.optimizer`` (the optimizer's record and its check).

    Raises
    ------
    NonConvergenceError
        The fit failed the convergence check and ``on_nonconvergence`` is
        ``"fail"``.
    """
    parsed = parse_formula(formula)
    if isinstance(family, str) and family.lower() in FAMILIES:
        family = family.lower()  # type: ignore[assignment]
    if isinstance(method, str) and method.lower() in METHODS:
        method = method.lower()  # type: ignore[assignment]
    if method is None:
        method = default_method(family)  # type: ignore[assignment]
    assert method is not None
    problems = check_options(family, method, interval)
    problems += check_control(max_evaluations, on_nonconvergence)
    problems += check_solver(solver, family, method, parsed, weights, interval_method)
    if solver == "iterative" and sampling_variance is not None:
        problems.append('solver = "iterative" does not fit area-level models (sampling_variance)')
    columns, rollup_problems = check_rollup(rollup, family)
    problems += rollup_problems
    if sampling_variance is not None:
        problems += area_option_problems(parsed, family, sampling_variance)
    bench, bench_problems = check_benchmark(benchmark, parsed.groupings)
    problems += bench_problems
    problems += interval_method_problems(
        interval_method, parsed, family, method, sampling_variance is not None, weights
    )
    problems += check_weights_option(weights, rollup, sampling_variance)
    if problems:
        raise ConfigError("; ".join(problems))
    control = Control(max_evaluations, on_nonconvergence, interval_method)
    tables = read_benchmark(bench, parsed.groupings) if bench is not None else None
    with open_data(data) as source:
        result = fit_source(
            parsed,
            source,
            family,
            method,
            float(interval),
            control=control,
            rollup=columns,
            sampling_variance=sampling_variance,
            weights=weights,
            solver="iterative" if solver == "iterative" else "auto",
        )
    if bench is None or tables is None:
        return result
    estimates, record = benchmark_estimates(
        result.estimates, result.key_columns, result.hierarchy, bench, tables
    )
    return dataclasses.replace(result, estimates=estimates, benchmarked=record)


def poststratify(
    result: FitResult,
    population: Any,
    weight: str,
    by: tuple[str, ...] | list[str] = (),
    draws: int = 1000,
    seed: int = 0,
    interval: float | None = None,
) -> Any:
    """Weight a fit's cell predictions to a population (MRP).

    Parameters
    ----------
    result : FitResult
        A unit-level fit of any family (not an area-level one).
    population : str, path, DuckDB relation, or polars / pandas / Arrow table
        One row per cell: the model's grouping and categorical columns (and
        any cell-constant numeric covariates) and the count ``weight``.
    weight : str
        The column of population counts (or exposure, for a Poisson rate).
    by : sequence of str
        Columns of the population to report; empty for one overall figure.
    draws, seed : int
        Posterior draws for ``std_error``/``lower``/``upper``, and their seed
        (binomial and Poisson; a Gaussian fit's are exact, with no draws).
    interval : float, optional
        Coverage of ``lower``/``upper``; default the fit's.

    Returns
    -------
    polars.DataFrame
        The ``by`` columns, ``estimate = Σ N_c m(η̂_c) / Σ N_c``,
        ``std_error``, ``lower``, ``upper``, ``population = Σ N_c``
        (docs/outputs.md).
    """
    from pooljob.model.options import PoststratifyConfig
    from pooljob.outputs.poststratify import poststratify, read_population

    if result.predictor is None and result.approximation is not None:
        raise ConfigError(
            'poststratification is not available for a fit by solver = "iterative": its '
            "prediction variances are not computed"
        )
    if result.predictor is None:
        raise ConfigError(
            "poststratification does not apply to an area-level (Fay–Herriot) fit: it has no "
            "unit-level predictions to weight"
        )
    name = str(population) if isinstance(population, str | os.PathLike) else "given"
    config = PoststratifyConfig(name, weight, tuple(by), int(draws), int(seed))
    table, _, _ = read_population(result.predictor, config, population)
    level = result.interval if interval is None else float(interval)
    return poststratify(result.predictor, config, level, table)
