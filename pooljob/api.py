"""The Python API: ``pooljob.fit(formula, data)``."""

from __future__ import annotations

import os
import time
from typing import Any, Literal

from pooljob.errors import ConfigError, NotNestedError
from pooljob.model.formula import Formula, parse_formula
from pooljob.model.nested_fit import fit_nested
from pooljob.outputs.tables import FitResult, build, build_general
from pooljob.scan.cell_counts import COUNT_FAMILIES
from pooljob.scan.cell_moments import CellTable, scan_cells
from pooljob.scan.source import TableSource, open_data
from pooljob.scan.statistics import ScanSpec, check_schema, nested_statistics

FAMILIES = ("gaussian", "binomial", "poisson")
METHODS = ("reml", "ml", "laplace")
#: The estimation methods of each family; the first is the default.
FAMILY_METHODS = {"gaussian": ("reml", "ml"), "binomial": ("laplace",), "poisson": ("laplace",)}


def default_method(family: str) -> str:
    """The default method of ``family``: REML for gaussian, Laplace otherwise."""
    return FAMILY_METHODS.get(family, ("reml",))[0]


def check_options(family: str, method: str, interval: float) -> list[str]:
    """Return the problems with the model options (empty when all is well)."""
    problems = []
    if family not in FAMILIES:
        problems.append(f"family = {family!r} is not supported; use one of {', '.join(FAMILIES)}")
        if method not in METHODS:
            problems.append(
                f"method = {method!r} is not supported; use one of {', '.join(METHODS)}"
            )
    elif method not in FAMILY_METHODS[family]:
        allowed = ", ".join(repr(m) for m in FAMILY_METHODS[family])
        problems.append(
            f"method = {method!r} is not supported for family = {family!r}; use {allowed}"
        )
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not (0.0 < float(interval) < 1.0)
    ):
        problems.append(f"interval = {interval!r} must be a number between 0 and 1, e.g. 0.95")
    return problems


def fit_source(
    formula: Formula, source: TableSource, family: str, method: str, interval: float
) -> FitResult:
    """Fit ``formula`` to an open source: one scan, then the solver.

    Random intercepts on groupings that nest in the data go to the exact tree
    solver (:mod:`pooljob.model.nested`, linear in the number of groups); every
    other model to the blocked-Cholesky solver (:mod:`pooljob.model.lmm`).  Both
    start from the same cell statistics.
    """
    t0 = time.perf_counter()
    spec = check_schema(source, formula, family)
    if family in COUNT_FAMILIES:
        from pooljob.outputs.count_tables import fit_count_source

        return fit_count_source(formula, source, spec, family, interval)
    cells = scan_cells(source, spec.keys, spec.variables)
    return fit_cells(
        formula,
        cells,
        spec,
        family,
        method,
        interval,
        source.description,
        scan_seconds=time.perf_counter() - t0,
    )


def fit_cells(
    formula: Formula,
    cells: CellTable,
    spec: ScanSpec,
    family: str,
    method: str,
    interval: float,
    description: str,
    scan_seconds: float = 0.0,
) -> FitResult:
    """Fit ``formula`` to cell statistics, scanned or merged from a store.

    ``description`` names the data in messages; ``scan_seconds`` is recorded
    as the ``scan`` timing.  The solver is chosen as in :func:`fit_source`.
    """
    t1 = time.perf_counter()
    reml = method == "reml"
    result: FitResult | None = None
    if formula.nested_intercepts:
        try:
            gs = nested_statistics(cells, formula, description)
        except NotNestedError:
            gs = None
        if gs is not None:
            fitted = fit_nested(gs.stats, "reml" if reml else "ml")
            t2 = time.perf_counter()
            result = build(formula, gs, fitted, interval, family)
    if result is None:
        from pooljob.model.general import fit_general, prepare

        prep = prepare(formula, cells, spec.numeric, spec.categorical)
        general = fit_general(prep, reml)
        t2 = time.perf_counter()
        result = build_general(formula, general, interval, family, method)
    t3 = time.perf_counter()
    result.timings.update({"scan": scan_seconds, "fit": t2 - t1, "tables": t3 - t2})
    return result


def fit(
    formula: str,
    data: Any,
    family: Literal["gaussian", "binomial", "poisson"] = "gaussian",
    method: Literal["reml", "ml", "laplace"] | None = None,
    interval: float = 0.95,
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

    Returns
    -------
    FitResult
        ``.estimates``, ``.effects``, ``.coefficients``, ``.components``
        (polars DataFrames), ``.objective``, ``.loglik``, ``.converged``,
        ``.singular``.
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
    if problems:
        raise ConfigError("; ".join(problems))
    with open_data(data) as source:
        return fit_source(parsed, source, family, method, float(interval))


def poststratify(
    result: FitResult,
    population: Any,
    weight: str,
    by: tuple[str, ...] | list[str] = (),
    draws: int = 1000,
    seed: int = 0,
    interval: float | None = None,
) -> Any:
    """Weight a binomial or Poisson fit's cell predictions to a population (MRP).

    Parameters
    ----------
    result : FitResult
        A fit with ``family = "binomial"`` or ``"poisson"``.
    population : str, path, DuckDB relation, or polars / pandas / Arrow table
        One row per cell: the model's grouping and categorical columns (and
        any cell-constant numeric covariates) and the count ``weight``.
    weight : str
        The column of population counts (or exposure, for a Poisson rate).
    by : sequence of str
        Columns of the population to report; empty for one overall figure.
    draws, seed : int
        Posterior draws for ``std_error``/``lower``/``upper``, and their seed.
    interval : float, optional
        Coverage of ``lower``/``upper``; default the fit's.

    Returns
    -------
    polars.DataFrame
        The ``by`` columns, ``estimate = Σ N_c m(η̂_c) / Σ N_c``,
        ``std_error``, ``lower``, ``upper``, ``population = Σ N_c``.
    """
    from pooljob.outputs.poststratify import PoststratifyConfig, poststratify, read_population

    if result.predictor is None:
        raise ConfigError(
            f"poststratification needs a binomial or poisson fit; got family = {result.family!r}"
        )
    name = str(population) if isinstance(population, str | os.PathLike) else "given"
    config = PoststratifyConfig(name, weight, tuple(by), int(draws), int(seed))
    table, _, _ = read_population(result.predictor, config, population)
    level = result.interval if interval is None else float(interval)
    return poststratify(result.predictor, config, level, table)
