"""The Python API: ``pooljob.fit(formula, data)``."""

from __future__ import annotations

import time
from typing import Any, Literal

from pooljob.errors import ConfigError
from pooljob.formula import Formula, parse_formula
from pooljob.model import fit_nested
from pooljob.results import FitResult, build
from pooljob.source import Source, open_data
from pooljob.statistics import compute

FAMILIES = ("gaussian",)
METHODS = ("reml", "ml")


def check_options(family: str, method: str, interval: float) -> list[str]:
    """Return the problems with the model options (empty when all is well)."""
    problems = []
    if family not in FAMILIES:
        problems.append(f"family = {family!r} is not supported; use one of {', '.join(FAMILIES)}")
    if method not in METHODS:
        problems.append(f"method = {method!r} is not supported; use one of {', '.join(METHODS)}")
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not (0.0 < float(interval) < 1.0)
    ):
        problems.append(f"interval = {interval!r} must be a number between 0 and 1, e.g. 0.95")
    return problems


def fit_source(
    formula: Formula, source: Source, family: str, method: str, interval: float
) -> FitResult:
    """Fit ``formula`` to an open source: one scan, then the solver."""
    t0 = time.perf_counter()
    gs = compute(source, formula)
    t1 = time.perf_counter()
    fitted = fit_nested(gs.stats, "reml" if method == "reml" else "ml")
    t2 = time.perf_counter()
    result = build(formula, gs, fitted, interval, family)
    t3 = time.perf_counter()
    result.timings.update({"scan": t1 - t0, "fit": t2 - t1, "tables": t3 - t2})
    return result


def fit(
    formula: str,
    data: Any,
    family: Literal["gaussian"] = "gaussian",
    method: Literal["reml", "ml"] = "reml",
    interval: float = 0.95,
) -> FitResult:
    """Fit a multilevel model by REML or ML from DuckDB sufficient statistics.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"income ~ 1 + (1 | state/county/zip)"``.
    data : str, path, DuckDB relation, or polars / pandas / Arrow table
        A Parquet or CSV path or glob is scanned by DuckDB; tables are read
        in place.  Rows never come into Python.
    family : {"gaussian"}
    method : {"reml", "ml"}
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
    problems = check_options(family, method, interval)
    if problems:
        raise ConfigError("; ".join(problems))
    with open_data(data) as source:
        return fit_source(parsed, source, family, method, float(interval))
