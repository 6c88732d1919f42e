"""The options of an area-level (Fay–Herriot) model: what its formula and config must be.

Checked by the config validator and :func:`pooljob.fit` alike, before any
data is read (the solver is :mod:`pooljob.model.area`).  Pure: no I/O.
"""

from __future__ import annotations

from pooljob.model.terms import Formula, Term


def term_label(term: Term) -> str:
    """A fixed term's name as lme4 prints it: its variables joined by ``:``."""
    return ":".join(v.label for v in term)


def area_formula_problems(formula: Formula) -> list[str]:
    """What an area-level model's formula must be: ``y ~ x… + (1 | area)``.

    One random intercept on one grouping (each area once, its own effect),
    no offsets, no ``cbind``; the covariates' types are checked against the
    source (numeric only).
    """
    problems = []
    if len(formula.random) != 1 or not formula.random[0].intercept_only:
        problems.append(
            "an area-level model (sampling_variance) has exactly one random term, a random "
            "intercept per area: '(1 | area)'"
        )
    if formula.offsets or formula.log_offsets:
        problems.append("an area-level model takes no offset")
    if formula.cbind is not None:
        problems.append("an area-level model has a numeric response, not cbind(...)")
    return problems


def area_option_problems(formula: Formula | None, family: object, variance: object) -> list[str]:
    """The problems of ``sampling_variance = variance`` with the model's other options."""
    if not isinstance(variance, str) or not variance.strip():
        return [f"sampling_variance = {variance!r} must name a column of sampling variances"]
    problems = []
    if family != "gaussian":
        problems.append(
            f"sampling_variance (an area-level Fay–Herriot model) needs family = 'gaussian', "
            f"got {family!r}"
        )
    if formula is not None:
        problems.extend(area_formula_problems(formula))
    return problems
