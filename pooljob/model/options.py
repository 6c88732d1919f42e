"""The model options: families, methods and the interval, with their checks.

One list of allowed values per option, used by the config validator and by
:func:`pooljob.fit` alike.
"""

from __future__ import annotations

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
