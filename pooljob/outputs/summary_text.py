"""A fit as text, laid out as lme4's ``print(summary(m))``: ``str(fit)``.

Formula, method and criterion; the random effects (variances, standard
deviations and correlations); the number of observations and of groups; the
fixed effects with their standard errors.  lme4's scaled residuals are left
out: pooljob never sees a row.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pooljob.outputs.tables import FitResult

_LINKS = {"binomial": "logit", "poisson": "log"}


def _g(x: float | None, digits: int = 4) -> str:
    """A number to ``digits`` significant digits, as R's ``signif`` prints it."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NA"
    text = f"{x:#.{digits}g}"  # keeps trailing zeros: 42.00, as R prints 42
    return text[:-1] if text.endswith(".") else text


def _columns(rows: list[list[str]], left: int = 1) -> list[str]:
    """Rows of cells as aligned text: the first ``left`` columns to the left, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        " "
        + " ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _parameters(fit: FitResult) -> int:
    """lme4's ``npar``: fixed effects, covariance parameters, and σ for a gaussian model.

    An area-level model has no σ (its sampling variances are known): metafor's count.
    """
    return (
        fit.coefficients.height
        + fit.components.filter(fit.components["grouping"] != "Residual").height
        + (1 if fit.family == "gaussian" and fit.sampling_variance is None else 0)
    )


def _criteria(fit: FitResult) -> list[str]:
    """lme4's ``AIC BIC logLik deviance df.resid`` line (ML and Laplace fits)."""
    k = _parameters(fit)
    deviance = -2.0 * fit.loglik
    values = [
        deviance + 2 * k,
        deviance + k * math.log(fit.nobs) if fit.nobs > 0 else math.nan,
        fit.loglik,
        deviance,
    ]
    cells = [f"{v:.1f}" for v in values] + [str(fit.nobs - k)]
    return _columns([["AIC", "BIC", "logLik", "deviance", "df.resid"], cells], left=0)


def _random_effects(fit: FitResult) -> list[str]:
    """The ``Random effects`` table: variance, SD and correlations within each grouping."""
    comp = fit.components
    order: list[str] = []
    terms: dict[str, list[tuple[str, float, float]]] = {}
    corr: dict[tuple[str, str, str], float] = {}
    for grouping, t1, t2, variance, sd in comp.select(
        "grouping", "term1", "term2", "variance", "sd"
    ).iter_rows():
        if grouping not in terms:
            order.append(grouping)
            terms[grouping] = []
        if t2 is None:
            terms[grouping].append((t1 or "", variance, sd))
        else:
            corr[(grouping, t1, t2)] = sd
    with_corr = bool(corr)
    rows = [["Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] if with_corr else [])]
    for grouping in order:
        names = [name for name, _, _ in terms[grouping]]
        for j, (name, variance, sd) in enumerate(terms[grouping]):
            row = [grouping if j == 0 else "", name, _g(variance), _g(sd)]
            if with_corr:
                r = [corr.get((grouping, names[i], name)) for i in range(j)]
                row.append(" ".join(_g(c, 2) if c is not None else "" for c in r).strip())
            rows.append(row)
    return _columns(rows, left=2)


def _fixed_effects(fit: FitResult) -> list[str]:
    """The ``Fixed effects`` table: estimate, standard error, t (or z and its p) value."""
    gaussian = fit.family == "gaussian"
    header = ["", "Estimate", "Std. Error", "t value" if gaussian else "z value"]
    if not gaussian:
        header.append("Pr(>|z|)")
    rows = [header]
    for term, estimate, se in fit.coefficients.select("term", "estimate", "std_error").iter_rows():
        stat = estimate / se if se else math.nan
        row = [term, _g(estimate, 6), _g(se, 4), _g(stat, 3)]
        if not gaussian:
            p = 2.0 * NormalDist().cdf(-abs(stat)) if math.isfinite(stat) else math.nan
            row.append("< 2e-16" if p < 2e-16 else _g(p, 3))
        rows.append(row)
    return _columns(rows)


def summary_text(fit: FitResult) -> str:
    """``fit`` as lme4 prints ``summary(m)`` (without the scaled residuals)."""
    if fit.family == "gaussian":
        how = "REML" if fit.method == "reml" else "maximum likelihood"
        title = f"Linear mixed model fit by {how} (pooljob)"
        if fit.sampling_variance is not None:
            title = (
                f"Area-level (Fay-Herriot) model fit by {how}, sampling variances "
                f"{fit.sampling_variance!r} (pooljob)"
            )
    else:
        title = (
            "Generalized linear mixed model fit by maximum likelihood "
            "(Laplace Approximation) (pooljob)"
        )
    lines = [title]
    if fit.family != "gaussian":
        lines.append(f" Family: {fit.family}  ( {_LINKS.get(fit.family, '?')} )")
    lines.append(f"Formula: {fit.formula.text}")
    if fit.weights is not None:  # as lme4 prints it
        lines.append(f"Weights: {fit.weights}")
    lines.append("")
    if fit.approximation is not None:
        lines.append(
            'REML by solver = "iterative" (criterion not evaluated; components approximate, '
            "see the manifest's approximation)"
        )
    elif fit.method == "reml":
        lines.append(f"REML criterion at convergence: {fit.objective:.4f}")
    else:
        lines += _criteria(fit)
    lines += ["", "Random effects:", *_random_effects(fit)]
    groups = "; ".join(f"{name}, {count}" for name, count in fit.groups.items())
    lines.append(f"Number of obs: {fit.nobs}" + (f", groups:  {groups}" if groups else ""))
    lines += ["", "Fixed effects:", *_fixed_effects(fit)]
    notes = []
    if not fit.converged:
        notes.append(f"the optimizer did NOT converge: {fit.optimizer.get('message', '')}")
    if fit.singular:
        notes.append("boundary (singular) fit: a variance is 0 or a correlation ±1")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
