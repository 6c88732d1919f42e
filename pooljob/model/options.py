"""The model options: families, methods, the interval and the optimizer's, with their checks.

One list of allowed values per option, used by the config validator and by
:func:`pooljob.fit` alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pooljob.model.formula import Formula

from pooljob.model.terms import Grouping

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


#: lme4's ``maxfun``: the default limit on criterion evaluations.
DEFAULT_MAX_EVALUATIONS = 10_000
#: What a fit whose convergence check fails does: raise, or publish flagged.
ON_NONCONVERGENCE = ("fail", "publish")


#: How ``lower``/``upper`` of the estimates are made: the first is the default.
INTERVAL_METHODS = ("plugin", "prasad-rao")


@dataclass(frozen=True)
class Control:
    """The optimizer's options (lme4's ``control``), and how the intervals are made.

    Attributes
    ----------
    max_evaluations : int
        Criterion evaluations after which the search stops (lme4's ``maxfun``).
    on_nonconvergence : {"fail", "publish"}
        ``"fail"``: a fit that fails the convergence check raises
        :class:`pooljob.errors.NonConvergenceError` and nothing is published;
        ``"publish"``: it is published with ``converged = false`` and a warning.
    interval_method : {"plugin", "prasad-rao"}
        ``lower``/``upper`` of the estimates from ``std_error`` (the variance
        components taken as known), or from ``rmse``, the second-order MSE
        that adds their uncertainty (:mod:`pooljob.model.second_order`).
    """

    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    on_nonconvergence: str = "fail"
    interval_method: str = "plugin"


#: The defaults: 10,000 evaluations, and a fit that fails the check fails.
DEFAULT_CONTROL = Control()


def check_control(max_evaluations: object, on_nonconvergence: object) -> list[str]:
    """Return the problems with the optimizer's options (empty when all is well)."""
    problems = []
    if (
        isinstance(max_evaluations, bool)
        or not isinstance(max_evaluations, int)
        or max_evaluations < 1
    ):
        problems.append(
            f"max_evaluations = {max_evaluations!r} must be an integer of at least 1, "
            f"e.g. {DEFAULT_MAX_EVALUATIONS}"
        )
    if on_nonconvergence not in ON_NONCONVERGENCE:
        problems.append(
            f"on_nonconvergence = {on_nonconvergence!r} is not supported; use "
            + " or ".join(repr(v) for v in ON_NONCONVERGENCE)
        )
    return problems


#: Gaussian solvers a config may choose: the exact blocked Cholesky (with the
#: nested tree where the groupings nest), or the opt-in iterative solver for
#: crossed random intercepts at scale (docs/crossed-at-scale.md).
SOLVERS = ("exact", "iterative")


def check_solver(
    solver: object,
    family: object,
    method: object,
    formula: Formula | None = None,
    weights: object = None,
    interval_method: object = "plugin",
) -> list[str]:
    """Return the problems with ``[model] solver`` (empty when all is well).

    ``"iterative"`` needs a gaussian REML model whose random terms are all
    intercepts (``formula``, when given; categorical fixed effects are found
    only with the source's schema, at the fit), without observation
    ``weights`` and with plug-in intervals.
    """
    if solver not in SOLVERS:
        return [
            f"solver = {solver!r} is not supported; use " + " or ".join(repr(v) for v in SOLVERS)
        ]
    if solver == "iterative" and (family != "gaussian" or method != "reml"):
        return [
            f'solver = "iterative" fits gaussian REML models only, not {family} {method}; '
            'use solver = "exact"'
        ]
    if solver == "iterative" and weights is not None:
        return [f'solver = "iterative" fits unweighted rows; drop weights = {weights!r}']
    if solver == "iterative" and interval_method != "plugin":
        return [
            'solver = "iterative" publishes plug-in intervals (with a bound on std_error); '
            f'interval_method = {interval_method!r} needs solver = "exact"'
        ]
    if solver == "iterative" and formula is not None:
        slopes = [rt.name for rt in formula.random if rt.terms or not rt.intercept]
        if not formula.random or slopes:
            what = f"random slopes ({', '.join(slopes)})" if slopes else "no random term"
            return [
                f'solver = "iterative" fits random intercepts only, e.g. '
                f"'y ~ x + (1 | user) + (1 | item)'; {formula.text!r} has {what}"
            ]
    return []


@dataclass(frozen=True)
class PoststratifyConfig:
    """The ``[poststratify]`` section: the population table and what to report."""

    path: str
    weight: str
    by: tuple[str, ...] = ()
    draws: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class PredictConfig:
    """The ``[predict]`` section: the table of cells to score, and the draws (counts)."""

    path: str
    draws: int = 1000
    seed: int = 0


#: The keys of ``[model] rollup``: the rollup's columns of the response's statistics.
ROLLUP_KEYS = ("count", "sum", "sum_squares")


@dataclass(frozen=True)
class Rollup:
    """``[model] rollup``: the source is a rollup table, one row per (at least) model cell.

    The response's rows behind each rollup row are given by their number
    (``count``), the sum of the response (``sum``) and of its squares
    (``sum_squares``); every other column the formula uses is a column of the
    rollup, constant over those rows (docs/models.md, "Rollup tables").
    """

    count: str
    sum: str
    sum_squares: str

    @property
    def columns(self) -> tuple[str, str, str]:
        """The three columns, in the order of ``ROLLUP_KEYS``."""
        return (self.count, self.sum, self.sum_squares)


def check_rollup(value: object, family: object) -> tuple[Rollup | None, list[str]]:
    """``[model] rollup`` (or the API's ``rollup=``) as a :class:`Rollup`, and its problems."""
    if value is None:
        return None, []
    example = '{ count = "n", sum = "y_sum", sum_squares = "y_sum_squares" }'
    if not isinstance(value, dict):
        return None, [f"rollup = {value!r} must be a table such as {example}"]
    problems = [
        f"rollup has an unknown key {k!r}; allowed: {', '.join(ROLLUP_KEYS)}"
        for k in value
        if k not in ROLLUP_KEYS
    ]
    for key in ROLLUP_KEYS:
        if key not in value:
            problems.append(f"rollup needs {key} = <column>, as in {example}")
        elif not isinstance(value[key], str) or not value[key].strip():
            problems.append(f"rollup {key} = {value[key]!r} must be a column name")
    names = [value.get(k) for k in ROLLUP_KEYS]
    if not problems and len(set(names)) != len(names):
        problems.append(f"rollup names a column twice: {', '.join(map(repr, names))}")
    if family in ("binomial", "poisson"):
        problems.append(
            f"rollup is for family = 'gaussian'; a {family} model needs no rollup option: "
            "binomial rollups are already cbind(successes, failures) per row, and Poisson "
            "rollups a count response with offset(log(exposure)), summed per row "
            "(docs/rates.md)"
        )
    if problems:
        return None, problems
    return Rollup(*(str(value[k]) for k in ROLLUP_KEYS)), []


#: How ``[benchmark]`` adjusts the estimates: scale (ratio) or shift (difference).
BENCHMARK_METHODS = ("ratio", "difference")
#: The keys of ``[benchmark]`` (and of :meth:`FitResult.benchmark`'s arguments).
BENCHMARK_KEYS = ("path", "by", "total", "weights_path", "weight", "method")


@dataclass(frozen=True)
class BenchmarkConfig:
    """``[benchmark]``: adjust the estimates so that they agree with known totals.

    Attributes
    ----------
    path : str
        The totals table: one row per group of ``by``.
    by : tuple of str
        Grouping columns of the model; every grouping whose columns include
        them all is benchmarked within each of their groups.
    total : str
        The column of the totals table holding the benchmark of each group:
        the value the weighted mean of its estimates must equal.
    weights_path, weight : str or None
        The table of weights (populations) and its column; keyed by the
        columns of the benchmarked groupings.  ``weight`` is needed when a
        benchmarked grouping is finer than ``by``; without ``weights_path``
        the weights are in the totals table itself (one row per finest
        group, its ``total`` repeated within each group of ``by``).
    method : {"ratio", "difference"}
        ``ratio``: every estimate of a group times ``T / m``; ``difference``:
        plus ``T - m`` (``m`` the weighted mean of the group's estimates).
    """

    path: str
    by: tuple[str, ...]
    total: str
    weights_path: str | None = None
    weight: str | None = None
    method: str = "ratio"


def benchmarked_groupings(groupings: tuple[Grouping, ...], by: tuple[str, ...]) -> list[Grouping]:
    """The groupings benchmarked within ``by``: those whose columns include every ``by`` column.

    Each of their groups lies in exactly one group of ``by`` (its key values
    include ``by``'s), so no nesting in the data needs checking.
    """
    return [g for g in groupings if set(by) <= set(g.columns)]


def check_benchmark(
    value: object, groupings: tuple[Grouping, ...] | None
) -> tuple[BenchmarkConfig | None, list[str]]:
    """``[benchmark]`` (or the API's arguments) as a :class:`BenchmarkConfig`, and its problems.

    ``value`` is the section as a dict (paths already resolved); ``groupings``
    the formula's (None when the formula did not parse: those checks wait).
    """
    if value is None:
        return None, []
    if not isinstance(value, dict):
        return None, [f"benchmark = {value!r} must be a table of {', '.join(BENCHMARK_KEYS)}"]
    problems = [
        f"benchmark has an unknown key {k!r}; allowed: {', '.join(BENCHMARK_KEYS)}"
        for k in value
        if k not in BENCHMARK_KEYS
    ]
    for key in ("path", "total", "weights_path", "weight"):
        v = value.get(key)
        if key in ("path", "total") and key not in value:
            what = "the totals table" if key == "path" else "the column of totals"
            problems.append(f"benchmark needs {key} ({what})")
        elif v is not None and (not isinstance(v, str) or not v.strip()):
            problems.append(f"benchmark {key} = {v!r} must be a non-empty string")
    by = value.get("by")
    if by is None:
        problems.append('benchmark needs by = [...], grouping columns such as ["state"]')
    elif (
        not isinstance(by, list | tuple)
        or not by
        or not all(isinstance(c, str) and c.strip() for c in by)
    ):
        problems.append(f"benchmark by = {by!r} must be a non-empty list of column names")
    elif len(set(by)) != len(by):
        problems.append(f"benchmark by = {list(by)!r} names a column twice")
    method = value.get("method", "ratio")
    if isinstance(method, str) and method.strip().lower() in BENCHMARK_METHODS:
        method = method.strip().lower()
    else:
        problems.append(
            f"benchmark method = {method!r} is not supported; use "
            + " or ".join(repr(m) for m in BENCHMARK_METHODS)
        )
    if "weights_path" in value and "weight" not in value:
        problems.append(
            "benchmark weights_path needs weight: the column of weights (populations) in "
            "the table weights_path names"
        )
    if problems:
        return None, problems
    by_t = tuple(str(c) for c in by)  # type: ignore[union-attr]
    if groupings is not None:
        problems += _grouping_problems(groupings, by_t, "weight" in value)
    if problems:
        return None, problems
    return (
        BenchmarkConfig(
            path=str(value["path"]),
            by=by_t,
            total=str(value["total"]),
            weights_path=value.get("weights_path"),
            weight=value.get("weight"),
            method=str(method),
        ),
        [],
    )


def _grouping_problems(
    groupings: tuple[Grouping, ...], by: tuple[str, ...], weighted: bool
) -> list[str]:
    """``by`` against the formula's groupings: something to benchmark, and weights if needed."""
    hit = benchmarked_groupings(groupings, by)
    if not hit:
        names = ", ".join(f"{g.name} ({', '.join(g.columns)})" for g in groupings) or "none"
        return [
            f"benchmark by = {list(by)!r}: no grouping of the model has all of these columns; "
            f"the groupings (their columns) are: {names}"
        ]
    finer = [g.name for g in hit if set(g.columns) != set(by)]
    if finer and not weighted:
        return [
            f"benchmark needs weight (the population column, in weights_path or the totals "
            f"table): {', '.join(finer)} "
            f"{'is' if len(finer) == 1 else 'are'} benchmarked within {', '.join(by)}, and the "
            "weighted mean of their estimates needs each group's weight (population)"
        ]
    return []


def check_weights_option(
    weights: object,
    rollup: object = None,
    sampling_variance: object = None,
) -> list[str]:
    """Return the problems with ``[model] weights`` (observation weights; empty when all is well).

    Precision weights of a Gaussian model (lme4's ``weights``: residual
    variance ``σ²/w``) and glmer's prior weights of a binomial or Poisson one
    are fitted, on DuckDB and on Spark; with a rollup or an area-level model
    they are refused, each with its reason.
    """
    if weights is None:
        return []
    if not isinstance(weights, str) or not weights.strip():
        return [
            f"weights = {weights!r} must be the name of a numeric column of observation weights"
        ]
    problems = []
    if rollup is not None:
        problems.append(
            "weights with rollup: a rollup row stands for rows whose weights it does not "
            "hold; put the weights in the rows, or drop weights"
        )
    if sampling_variance is not None:
        problems.append(
            "weights with sampling_variance: an area-level model weights its areas by their "
            "sampling variances already; drop weights"
        )
    return problems
