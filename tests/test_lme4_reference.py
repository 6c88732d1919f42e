"""Agreement with lme4 1.1-31 on the classic data sets.

Tolerances: objective within 1e-6 relative and never worse than lme4's;
components, coefficients, effects and cond_sd within 1e-4 relative.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob
from tests.conftest import DATA, reference

CASES = [
    ("Dyestuff_reml", "Dyestuff.csv", "Yield ~ 1 + (1 | Batch)", "reml"),
    ("Dyestuff_ml", "Dyestuff.csv", "Yield ~ 1 + (1 | Batch)", "ml"),
    ("Dyestuff2_reml", "Dyestuff2.csv", "Yield ~ 1 + (1 | Batch)", "reml"),
    ("Pastes_reml", "Pastes.csv", "strength ~ 1 + (1 | batch/cask)", "reml"),
    # made here with tests/data/make_lme4_reference.R: three levels, uneven groups
    ("income3_reml", "income3.csv", "income ~ 1 + (1 | state/county/zip)", "reml"),
    ("income3_ml", "income3.csv", "income ~ 1 + (1 | state/county/zip)", "ml"),
]
REL = 1e-4


def close(a: float, b: float, rel: float = REL, scale: float = 1.0) -> bool:
    """Relative agreement; values that lme4 reports as 0 are compared on ``scale``."""
    return abs(a - b) <= rel * max(abs(b), 1e-8 * scale) + 1e-10 * scale


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request: pytest.FixtureRequest):
    name, csv, formula, method = request.param
    ref = reference(name)
    assert ref["formula"] == formula
    fit = pooljob.fit(formula, DATA / csv, method=method)
    return ref, fit, csv


def test_objective_matches_and_is_never_worse(case) -> None:
    ref, fit, _ = case
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-6)
    assert fit.objective <= ref["objective"] * (1 + 1e-9)
    assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-6)
    assert fit.converged
    assert fit.singular == ref["singular"]
    assert fit.nobs == ref["nobs"]
    assert fit.sigma == pytest.approx(ref["sigma"], rel=REL)


def test_components(case) -> None:
    ref, fit, _ = case
    got = {r["grouping"]: r for r in fit.components.to_dicts()}
    assert len(got) == len(ref["varcomp"])
    scale = ref["sigma"] ** 2
    for row in ref["varcomp"]:
        mine = got[row["grouping"]]
        assert mine["term1"] == row["term1"]
        assert mine["term2"] == row["term2"]
        assert close(mine["variance"], row["variance_or_cov"], scale=scale), row
        assert close(mine["sd"], row["sd_or_cor"], scale=ref["sigma"]), row


def test_coefficients(case) -> None:
    ref, fit, _ = case
    got = {r["term"]: r for r in fit.coefficients.to_dicts()}
    for row in ref["fixef"]:
        assert got[row["term"]]["estimate"] == pytest.approx(row["estimate"], rel=REL)
        assert got[row["term"]]["std_error"] == pytest.approx(row["std_error"], rel=REL)


def test_effects_and_cond_sd(case) -> None:
    ref, fit, _ = case
    got = {(r["grouping"], r["level"]): r for r in fit.effects.to_dicts()}
    assert len(got) == len(ref["ranef"])
    scale = ref["sigma"]
    sd = {r["grouping"]: r["sd_or_cor"] for r in ref["varcomp"]}
    for row in ref["ranef"]:
        mine = got[(row["grouping"], row["level"])]
        assert mine["term"] == row["term"]
        # 1e-4 relative; an effect near 0 is compared on the scale of its grouping's
        # sd (lme4 stops at ~1e-6 in θ, which moves every effect by ~1e-6 sd)
        tol = REL * abs(row["estimate"]) + 1e-5 * sd[row["grouping"]] + 1e-10 * scale
        assert abs(mine["estimate"] - row["estimate"]) <= tol, row
        assert close(mine["cond_sd"], row["cond_sd"], scale=scale), row


def test_estimates_are_group_means_of_lme4_fitted_values(case) -> None:
    """estimate = the group's mean of lme4's fitted values; parent = fixef + ancestors' ranef."""
    ref, fit, csv = case
    df = pl.read_csv(DATA / csv)
    mu = next(r["estimate"] for r in ref["fixef"] if r["term"] == "(Intercept)")
    eff = {(r["grouping"], r["level"]): r["estimate"] for r in ref["ranef"]}
    hier = fit.hierarchy

    def label(g, row) -> str:
        return ":".join(str(row[c]) for c in g.columns)

    fitted = np.array(
        [mu + sum(eff[(g.name, label(g, row))] for g in hier) for row in df.iter_rows(named=True)]
    )
    df = df.with_columns(pl.Series("fitted", fitted))
    scale = ref["sigma"]
    for k, g in enumerate(hier):
        truth = df.group_by(list(g.columns)).agg(pl.col("fitted").mean())
        mine = fit.estimates.filter(pl.col("grouping") == g.name).join(truth, on=list(g.columns))
        assert mine.height == truth.height
        np.testing.assert_allclose(mine["estimate"], mine["fitted"], rtol=1e-6, atol=1e-6 * scale)
        for row in mine.iter_rows(named=True):
            parent = mu + sum(eff[(a.name, label(a, row))] for a in hier[:k])
            assert row["parent"] == pytest.approx(parent, rel=1e-6, abs=1e-6 * scale)


def test_leaf_coef_matches_lme4_coef(case) -> None:
    ref, fit, _ = case
    leaf = fit.hierarchy[-1]
    mu = fit.coefficients["estimate"][0]
    eff = fit.effects.filter(pl.col("grouping") == leaf.name)
    if "coef" not in ref:
        pytest.skip("this reference has no coef()")
    coef = {(r["grouping"], r["level"]): r["estimate"] for r in ref["coef"]}
    for r in eff.to_dicts():
        assert mu + r["estimate"] == pytest.approx(coef[(leaf.name, r["level"])], rel=REL)


def test_raw_means_and_counts_match_the_data(case) -> None:
    _, fit, csv = case
    df = pl.read_csv(DATA / csv)
    y = fit.formula.response
    for g in fit.hierarchy:
        truth = df.group_by(list(g.columns)).agg(
            pl.len().alias("n_true"), pl.col(y).mean().alias("m")
        )
        mine = fit.estimates.filter(pl.col("grouping") == g.name).join(truth, on=list(g.columns))
        assert mine.height == truth.height
        assert (mine["n"] == mine["n_true"]).all()
        np.testing.assert_allclose(mine["raw_mean"], mine["m"], rtol=1e-12)
