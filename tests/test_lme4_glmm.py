"""Binomial and Poisson fits against lme4's glmer (Laplace, nAGQ = 1).

Fixtures (tests/data, made by make_lme4_glmm.R): cbpp and grouseticks as lme4
ships them, a crossed 0/1 poll and a Poisson table with exposure that varies
within cells; and (make_lme4_contract.R) mlmRev's Contraception with the
boolean covariate ``urban``; and (make_lme4_glmm_rows.R) Contraception with
``age``, and claims with the exposure as a covariate, numeric covariates that
vary within the model's cells. Each comes twice: with glmer's defaults, and
with its PIRLS tolerance tightened (``_tight``). glmer's default tolerance
leaves its Laplace criterion off by up to ~6e-4 (the log-determinant is taken
at the weights of the previous PIRLS iterate), so against the default fits
pooljob must be no worse in log-likelihood and agree to 2e-3 (standard errors
to 2e-2); against the tight fits, where glmer minimises the same criterion as
pooljob, everything agrees to 1e-4 relative (most to 1e-6) — except standard
errors of the fixed effects, which glmer takes from a finite-difference Hessian
good to ~3e-4 (pooljob's, by central differences at two step sizes, agree to
1e-6): those to 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import pooljob

DATA = Path(__file__).parent / "data"

#: name, data file, family, columns read as text (factors in R)
CASES = [
    ("cbpp_binomial", "cbpp.csv", "binomial", ["herd", "period"]),
    ("grouseticks_poisson", "grouseticks.csv", "poisson", ["BROOD", "YEAR"]),
    ("poll_crossed", "poll.csv", "binomial", ["state", "age", "sex"]),
    ("claims_offset", "claims.csv", "poisson", ["district", "agecat"]),
    # urban is read as a boolean (true/false): a factor, as a logical is in R
    ("contraception_bool", "contraception.csv", "binomial", ["district", "livch"]),
    # make_lme4_glmm_rows.R: a numeric covariate that varies within cells (age; the
    # exposure as a covariate), so the cells are the distinct (keys, covariate values)
    ("contraception_age", "contraception_age.csv", "binomial", ["district", "livch"]),
    ("claims_covariate", "claims.csv", "poisson", ["district", "agecat"]),
]


def load(data: str, text: list[str]) -> pl.DataFrame:
    return pl.read_csv(DATA / data, schema_overrides={c: pl.String for c in text})


_FITS: dict[str, tuple[pooljob.FitResult, dict[str, Any]]] = {}


def fitted(name: str, data: str, family: str, text: list[str]) -> pooljob.FitResult:
    if name not in _FITS:
        ref = json.loads((DATA / f"{name}.json").read_text())
        result = pooljob.fit(ref["formula"], load(data, text), family=family)  # type: ignore[arg-type]
        _FITS[name] = (result, ref)
    return _FITS[name][0]


def reference(name: str, tight: bool) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((DATA / f"{name}{'_tight' if tight else ''}.json").read_text())
    return out


def close(a: float, b: float, rel: float, floor: float = 1e-3) -> bool:
    return abs(a - b) <= rel * max(abs(b), floor)


@pytest.mark.parametrize(("name", "data", "family", "text"), CASES)
@pytest.mark.parametrize("tight", [False, True])
def test_loglik_never_worse(
    name: str, data: str, family: str, text: list[str], tight: bool
) -> None:
    result = fitted(name, data, family, text)
    ref = reference(name, tight)
    assert result.nobs == ref["nobs"]
    assert result.loglik >= ref["loglik"] - 1e-6 * abs(ref["loglik"])
    if tight:
        assert abs(result.loglik - ref["loglik"]) <= 1e-8 * abs(ref["loglik"])


@pytest.mark.parametrize(("name", "data", "family", "text"), CASES)
@pytest.mark.parametrize(("tight", "rel", "se_rel"), [(False, 2e-3, 2e-2), (True, 1e-4, 1e-3)])
def test_estimates_agree(
    name: str, data: str, family: str, text: list[str], tight: bool, rel: float, se_rel: float
) -> None:
    result = fitted(name, data, family, text)
    ref = reference(name, tight)
    coef = {r["term"]: r for r in result.coefficients.iter_rows(named=True)}
    for row in ref["fixef"]:
        assert close(coef[row["term"]]["estimate"], row["estimate"], rel), row
        assert close(coef[row["term"]]["std_error"], row["std_error"], se_rel), row
    comp = {(r["grouping"], r["term1"]): r for r in result.components.iter_rows(named=True)}
    assert len(comp) == len(ref["varcomp"])
    for row in ref["varcomp"]:
        got = comp[(row["grouping"], row["term1"])]
        assert close(got["variance"], row["variance_or_cov"], rel), row
    eff = {(r["grouping"], r["level"]): r for r in result.effects.iter_rows(named=True)}
    for row in ref["ranef"]:
        got = eff[(row["grouping"], str(row["level"]))]
        # effects near 0: compared in units of their conditional SD
        assert close(got["estimate"], row["estimate"], rel, floor=row["cond_sd"]), row
        assert close(got["cond_sd"], row["cond_sd"], rel), row
    est = {
        (r["grouping"], str(r[r["grouping"]])): r for r in result.estimates.iter_rows(named=True)
    }
    for row in ref["group_means"]:
        got = est[(row["grouping"], str(row["level"]))]
        assert got["n"] == row["n"]
        assert close(got["raw_mean"], row["raw_mean"], 1e-12)
        assert close(got["estimate"], row["fitted_mean"], rel), row


def test_singular_flag_and_no_residual() -> None:
    result = fitted(*CASES[0])
    assert not result.singular
    assert "Residual" not in result.components["grouping"].to_list()
    assert result.method == "laplace" and result.family == "binomial"
    est = result.estimates
    assert ((est["lower"] < est["estimate"]) & (est["estimate"] < est["upper"])).all()
    assert ((est["lower"] > 0) & (est["upper"] < 1)).all()
