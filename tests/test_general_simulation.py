"""General models: known parameters are recovered, and a shift by 1e9 changes nothing.

* A crossed model with a correlated random slope, ``y ~ x + (1 | f1) + (1 +
  x | f2)``, simulated with known parameters (4,000 rows, 150 x 100 levels):
  every standard deviation within 20% relative, the correlation within 0.2,
  the fixed effects within 4 standard errors.  (lme4 1.1-31 on the same data
  lands within 13% on every sd and 0.05 on the correlation for these seeds.)
* Shifting ``y`` and the covariate ``x`` by 1e9 in ``y ~ x + (1 | g)`` (the
  data are on a grid of 1/1024, so the shifted values are exact) changes no
  variance component, no slope, no conditional mode or cond_sd beyond 1e-8
  relative; the intercept moves by exactly ``1e9 − slope·1e9``, and every
  group's estimate (a mean of fitted values) by exactly 1e9.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob

FORMULA = "y ~ x + (1 | f1) + (1 + x | f2)"
TRUE = {
    "beta": {"(Intercept)": 2.0, "x": 0.5},
    "sd": {
        ("f1", "(Intercept)"): 1.0,
        ("f2", "(Intercept)"): 1.5,
        ("f2", "x"): 0.6,
        ("Residual", None): 1.0,
    },
    "cor": 0.3,
}


def simulate_crossed_slope(seed: int, n: int = 4000, n1: int = 150, n2: int = 100):
    rng = np.random.default_rng(seed)
    sd = TRUE["sd"]
    s0, s1 = sd[("f2", "(Intercept)")], sd[("f2", "x")]
    cov = np.array([[s0**2, TRUE["cor"] * s0 * s1], [TRUE["cor"] * s0 * s1, s1**2]])
    f1 = rng.integers(0, n1, n)
    f2 = rng.integers(0, n2, n)
    a = rng.normal(0, sd[("f1", "(Intercept)")], n1)
    b = rng.multivariate_normal([0.0, 0.0], cov, n2)
    x = rng.normal(0, 1, n)
    beta = TRUE["beta"]
    y = (
        beta["(Intercept)"]
        + beta["x"] * x
        + a[f1]
        + b[f2, 0]
        + b[f2, 1] * x
        + rng.normal(0, sd[("Residual", None)], n)
    )
    return pl.DataFrame({"f1": [f"u{i}" for i in f1], "f2": [f"v{i}" for i in f2], "x": x, "y": y})


@pytest.mark.parametrize("seed", [11, 12])
def test_crossed_slope_components_are_recovered(seed: int) -> None:
    fit = pooljob.fit(FORMULA, simulate_crossed_slope(seed))
    assert fit.converged and not fit.singular
    rows = {(r["grouping"], r["term1"], r["term2"]): r for r in fit.components.to_dicts()}
    assert len(rows) == 5
    for (g, term), true in TRUE["sd"].items():
        assert rows[(g, term, None)]["sd"] == pytest.approx(true, rel=0.2), (g, term)
    assert abs(rows[("f2", "(Intercept)", "x")]["sd"] - TRUE["cor"]) <= 0.2
    for r in fit.coefficients.to_dicts():
        assert abs(r["estimate"] - TRUE["beta"][r["term"]]) <= 4 * r["std_error"], r


# --- shifting y and x by 1e9 ----------------------------------------------------------

SHIFT = 1e9
GRID = 1024.0  # values are multiples of 1/1024: x + 1e9 is exact in double precision


def shift_data(seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n, groups = 600, 30
    g = rng.permutation(np.arange(n) % groups)
    x = np.round(rng.normal(0, 2, n) * GRID) / GRID
    y = 10 + 1.5 * x + rng.normal(0, 2, groups)[g] + rng.normal(0, 3, n)
    return pl.DataFrame({"g": [f"g{i:02d}" for i in g], "x": x, "y": np.round(y * GRID) / GRID})


@pytest.fixture(scope="module", params=["reml", "ml"])
def shifted_fits(request: pytest.FixtureRequest):
    df = shift_data(7)
    moved = df.with_columns(pl.col("x") + SHIFT, pl.col("y") + SHIFT)
    # the shift is exact: nothing is lost in the data themselves
    assert ((moved["x"] - SHIFT) == df["x"]).all()
    assert ((moved["y"] - SHIFT) == df["y"]).all()
    formula = "y ~ x + (1 | g)"
    return (
        pooljob.fit(formula, df, method=request.param),
        pooljob.fit(formula, moved, method=request.param),
    )


def test_shift_changes_no_component(shifted_fits) -> None:
    base, moved = shifted_fits
    assert moved.objective == pytest.approx(base.objective, rel=1e-10)
    assert moved.sigma == pytest.approx(base.sigma, rel=1e-8)
    a = {(r["grouping"], r["term1"], r["term2"]): r for r in base.components.to_dicts()}
    b = {(r["grouping"], r["term1"], r["term2"]): r for r in moved.components.to_dicts()}
    assert a.keys() == b.keys()
    for k in a:
        assert b[k]["variance"] == pytest.approx(a[k]["variance"], rel=1e-8), k
        assert b[k]["sd"] == pytest.approx(a[k]["sd"], rel=1e-8), k


def test_shift_changes_no_slope_and_moves_the_intercept_exactly(shifted_fits) -> None:
    base, moved = shifted_fits
    a = {r["term"]: r for r in base.coefficients.to_dicts()}
    b = {r["term"]: r for r in moved.coefficients.to_dicts()}
    assert b["x"]["estimate"] == pytest.approx(a["x"]["estimate"], rel=1e-8)
    assert b["x"]["std_error"] == pytest.approx(a["x"]["std_error"], rel=1e-8)
    # y + s = β₀' + β₁(x + s)  =>  β₀' = β₀ + s − β₁ s: an intercept 1e9 away from the
    # data, known only to its standard error (~1e8 here); agreement to 1e-8 of that
    # is agreement of the slope to ~1e-10
    slope = a["x"]["estimate"]
    expected = a["(Intercept)"]["estimate"] + SHIFT - slope * SHIFT
    assert abs(b["(Intercept)"]["estimate"] - expected) <= 1e-8 * b["(Intercept)"]["std_error"]


def test_shift_changes_no_effect(shifted_fits) -> None:
    base, moved = shifted_fits
    sd = {r["grouping"]: r["sd"] for r in base.components.to_dicts() if r["term2"] is None}
    a = {(r["grouping"], r["level"], r["term"]): r for r in base.effects.to_dicts()}
    b = {(r["grouping"], r["level"], r["term"]): r for r in moved.effects.to_dicts()}
    assert a.keys() == b.keys() and len(a) == 30
    for k in a:
        tol = 1e-8 * (abs(a[k]["estimate"]) + sd[k[0]])
        assert abs(b[k]["estimate"] - a[k]["estimate"]) <= tol, k
        assert b[k]["cond_sd"] == pytest.approx(a[k]["cond_sd"], rel=1e-8), k


def test_shift_moves_every_estimate_by_the_shift(shifted_fits) -> None:
    base, moved = shifted_fits
    j = base.estimates.join(moved.estimates, on=["grouping", "g"], suffix="_moved")
    assert j.height == base.estimates.height == moved.estimates.height == 30
    assert (j["n"] == j["n_moved"]).all()
    np.testing.assert_allclose(
        j["raw_mean_moved"] - j["raw_mean"], SHIFT, rtol=0, atol=1e-12 * SHIFT
    )
    # to a few units in the last place of a number near 1e9 (1 ulp = 1.2e-7)
    for column in ["estimate", "parent", "lower", "upper"]:
        np.testing.assert_allclose(
            j[f"{column}_moved"] - j[column], SHIFT, rtol=0, atol=1e-15 * SHIFT, err_msg=column
        )
    # the prediction error of a group's estimate does not depend on where x = 0 is
    np.testing.assert_allclose(j["std_error_moved"], j["std_error"], rtol=1e-6)
