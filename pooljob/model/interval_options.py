"""The option ``interval_method``: what the model must be for ``"prasad-rao"``.

Checked by the config validator and :func:`pooljob.fit` alike, before any
data is read.  ``"prasad-rao"`` widens the intervals of the estimates by the
second-order MSE (:mod:`pooljob.model.second_order` for unit-level models,
:mod:`pooljob.model.area` for area-level ones): Gaussian models, random
intercepts only, REML for unit-level models (REML or ML, Datta–Lahiri, for
area-level ones).  Pure: no I/O.
"""

from __future__ import annotations

from pooljob.model.options import INTERVAL_METHODS
from pooljob.model.terms import Formula


def interval_method_problems(
    value: object,
    formula: Formula | None,
    family: object,
    method: object,
    area_level: bool,
    weights: object = None,
) -> list[str]:
    """The problems of ``interval_method = value`` with the model's other options.

    ``weights`` is ``[model] weights`` (observation weights): Prasad–Rao's
    ``g3`` is derived here for unweighted rows only, so the two are refused
    together.
    """
    if value not in INTERVAL_METHODS:
        return [
            f"interval_method = {value!r} is not supported; use "
            + " or ".join(repr(v) for v in INTERVAL_METHODS)
        ]
    if value == "plugin":
        return []
    if family != "gaussian":
        return [
            f"interval_method = 'prasad-rao' is for gaussian models; a {family} model's "
            "intervals are plug-in: use interval_method = 'plugin'"
        ]
    if area_level:
        return []
    problems = []
    if weights is not None:
        problems.append(
            "interval_method = 'prasad-rao' is derived for unweighted rows; with weights "
            f"= {weights!r} use interval_method = 'plugin'"
        )
    if method != "reml":
        problems.append(
            f"interval_method = 'prasad-rao' needs method = 'reml' for a unit-level model, "
            f"got {method!r} (ML's second-order MSE needs the bias of the ML estimates, "
            "which pooljob has only for area-level models)"
        )
    if formula is not None:
        slopes = [t.grouping.name for t in formula.random if not t.intercept_only]
        if slopes:
            problems.append(
                "interval_method = 'prasad-rao' supports random intercepts (1 | g) only, and "
                f"the term on {', '.join(repr(s) for s in slopes)} has a slope: use 'plugin'"
            )
    return problems
