"""The model options: families, methods, the interval and the optimizer's, with their checks.

One list of allowed values per option, used by the config validator and by
:func:`pooljob.fit` alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pooljob.model.formula import Formula

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


@dataclass(frozen=True)
class Control:
    """The optimizer's options (lme4's ``control``).

    Attributes
    ----------
    max_evaluations : int
        Criterion evaluations after which the search stops (lme4's ``maxfun``).
    on_nonconvergence : {"fail", "publish"}
        ``"fail"``: a fit that fails the convergence check raises
        :class:`pooljob.errors.NonConvergenceError` and nothing is published;
        ``"publish"``: it is published with ``converged = false`` and a warning.
    """

    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    on_nonconvergence: str = "fail"


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
    solver: object, family: object, method: object, formula: Formula | None = None
) -> list[str]:
    """Return the problems with ``[model] solver`` (empty when all is well).

    ``"iterative"`` needs a gaussian REML model whose random terms are all
    intercepts (``formula``, when given; categorical fixed effects are found
    only with the source's schema, at the fit).
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
