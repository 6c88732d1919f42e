"""FitResult as text: a one-line repr, and lme4's summary layout from ``str(fit)``."""

from __future__ import annotations

from pathlib import Path

import pooljob

DATA = Path(__file__).parent / "data"


def test_repr_is_one_short_line() -> None:
    fit = pooljob.fit("Yield ~ 1 + (1 | Batch)", DATA / "Dyestuff.csv")
    text = repr(fit)
    assert text == (
        "FitResult('Yield ~ 1 + (1 | Batch)', family='gaussian', method='reml', nobs=30, "
        "groups={'Batch': 6}, objective=319.654277, converged=True)"
    )
    assert set(fit.summary()) >= {"formula", "nobs", "groups", "objective", "rows"}  # unchanged


def test_summary_text_reads_like_lme4() -> None:
    fit = pooljob.fit("Yield ~ 1 + (1 | Batch)", DATA / "Dyestuff.csv")
    text = str(fit)
    assert text == fit.summary_text()
    lines = text.splitlines()
    assert lines[:4] == [
        "Linear mixed model fit by REML (pooljob)",
        "Formula: Yield ~ 1 + (1 | Batch)",
        "",
        "REML criterion at convergence: 319.6543",
    ]
    assert "Random effects:" in lines and "Fixed effects:" in lines
    assert lines[lines.index("Random effects:") + 1].split() == [
        "Groups",
        "Name",
        "Variance",
        "Std.Dev.",
    ]
    assert " Batch    (Intercept)     1764    42.00" in lines
    assert " Residual                 2451    49.51" in lines
    assert "Number of obs: 30, groups:  Batch, 6" in lines
    assert lines[-1].split() == ["(Intercept)", "1527.50", "19.38", "78.8"]


def test_summary_text_of_ml_slopes_and_glmm() -> None:
    ml = pooljob.fit("Reaction ~ Days + (Days | Subject)", DATA / "sleepstudy.csv", method="ml")
    text = str(ml)
    # lme4: AIC 1763.9, BIC 1783.1, logLik -876.0, deviance 1751.9, df.resid 174
    assert "1763.9 1783.1 -876.0   1751.9      174" in text
    assert "Corr" in text and "Days" in text
    days = next(
        line for line in text.splitlines() if line.strip().startswith("Days") and "0.0" in line
    )
    assert days.split()[-1] == "0.081"  # the correlation, on the second term's line
    glmm = pooljob.fit(
        "cbind(incidence, size - incidence) ~ factor(period) + (1 | herd)",
        DATA / "cbpp.csv",
        family="binomial",
    )
    text = str(glmm)
    assert " Family: binomial  ( logit )" in text and "Pr(>|z|)" in text
    assert "Residual" not in text and "Number of obs: 56, groups:  herd, 15" in text


def test_singular_fit_says_so() -> None:
    fit = pooljob.fit("Yield ~ 1 + (1 | Batch)", DATA / "Dyestuff2.csv")
    assert str(fit).splitlines()[-1].startswith("boundary (singular) fit")
