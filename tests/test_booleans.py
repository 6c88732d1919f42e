"""Boolean columns are factors with levels FALSE, TRUE, as logicals are in R (issue 11).

The lme4 fixtures bool_reml and bool_nointercept_reml (tests/test_lme4_general.py)
and contraception_bool (tests/test_lme4_glmm.py) cover a boolean covariate with
and without an intercept, Gaussian and binomial.  Here the other places a
boolean can go, against lme4 1.1-31 (R 4.2.2) on tests/data/booleans.csv with
``urban`` made a logical (``d$urban <- as.logical(d$urban)``; DuckDB reads the
column as BOOLEAN): a grouping factor, an interaction, ``factor(urban)`` and a
Gaussian response (lmer reads a logical response as 0/1).  The numbers were
printed by ``lmer(formula, d)`` with ``print(x, digits = 15)``.  Then: a
boolean column fits exactly as a text column of ``"FALSE"``/``"TRUE"``, and
its nulls drop rows as a text column's do.
"""

from __future__ import annotations

import polars as pl
import pytest

import pooljob
from pooljob.model.formula import parse_formula
from pooljob.scan.schema import check_schema
from pooljob.scan.source import open_data
from tests.conftest import DATA, reference

BOOLEANS = DATA / "booleans.csv"
REL = 1e-6


def coefficients(fit: pooljob.FitResult) -> dict[str, float]:
    return dict(zip(fit.coefficients["term"], fit.coefficients["estimate"], strict=True))


def test_duckdb_reads_the_fixture_column_as_boolean() -> None:
    assert pl.read_csv(BOOLEANS).schema["urban"] == pl.Boolean
    fit = pooljob.fit("y ~ urban + (1 | g)", BOOLEANS)
    assert list(coefficients(fit)) == ["(Intercept)", "urbanTRUE"]


def test_schema_makes_a_boolean_covariate_categorical() -> None:
    with open_data(BOOLEANS) as source:
        assert source.columns["urban"] == "BOOLEAN"
        spec = check_schema(source, parse_formula("y ~ urban + x + (1 | g)"))
    assert "urban" in spec.categorical and "urban" in spec.keys
    assert "urban" not in spec.numeric and "x" in spec.numeric


def test_boolean_grouping_factor() -> None:
    fit = pooljob.fit("y ~ x + (1 | urban) + (1 | g)", BOOLEANS)
    assert fit.objective == pytest.approx(2136.93744061963, rel=1e-9)
    coef = coefficients(fit)
    assert coef["(Intercept)"] == pytest.approx(10.600459666069948, rel=REL)
    assert coef["x"] == pytest.approx(0.508706131583377, rel=REL)
    urban = fit.effects.filter(pl.col("grouping") == "urban")
    assert urban["level"].to_list() == ["FALSE", "TRUE"]
    assert urban["urban"].to_list() == [False, True]
    expected = [-1.04344899346117, 1.04344899347149]
    assert urban["estimate"].to_list() == pytest.approx(expected, rel=REL)


def test_boolean_grouping_factor_nested_solver() -> None:
    fit = pooljob.fit("y ~ 1 + (1 | urban)", BOOLEANS)
    assert fit.objective == pytest.approx(2250.64712257953, rel=1e-9)
    assert coefficients(fit)["(Intercept)"] == pytest.approx(10.5617147749836, rel=REL)
    assert fit.effects["level"].to_list() == ["FALSE", "TRUE"]
    expected = [-1.01683828182813, 1.01683828182397]
    assert fit.effects["estimate"].to_list() == pytest.approx(expected, rel=REL)


def test_interaction_with_a_boolean() -> None:
    fit = pooljob.fit("y ~ x + x:urban + (1 | g)", BOOLEANS)
    assert fit.objective == pytest.approx(2245.75294994894, rel=1e-9)
    coef = coefficients(fit)
    assert list(coef) == ["(Intercept)", "x", "x:urbanTRUE"]
    assert coef["(Intercept)"] == pytest.approx(10.6146937092886553, rel=REL)
    assert coef["x"] == pytest.approx(0.4939124370378062, rel=REL)
    assert coef["x:urbanTRUE"] == pytest.approx(-0.0165381017905513, rel=1e-4)


def test_factor_of_a_boolean() -> None:
    ref = {r["term"]: r["estimate"] for r in reference("bool_reml")["fixef"]}
    coef = coefficients(pooljob.fit("y ~ factor(urban) + (1 | g)", BOOLEANS))
    assert list(coef) == ["(Intercept)", "factor(urban)TRUE"]
    assert coef["factor(urban)TRUE"] == pytest.approx(ref["urbanTRUE"], rel=REL)


def test_gaussian_boolean_response_is_read_as_0_1() -> None:
    fit = pooljob.fit("urban ~ x + (1 | g)", BOOLEANS)
    assert fit.objective == pytest.approx(706.071902425857, rel=1e-9)
    coef = coefficients(fit)
    assert coef["(Intercept)"] == pytest.approx(0.5082694035460855, rel=REL)
    assert coef["x"] == pytest.approx(-0.0119358661515075, rel=1e-4)
    assert fit.sigma == pytest.approx(0.470106534577657, rel=REL)


def as_text(data: pl.DataFrame) -> pl.DataFrame:
    return data.with_columns(
        pl.when(pl.col("urban")).then(pl.lit("TRUE")).otherwise(pl.lit("FALSE")).alias("urban")
    )


@pytest.mark.parametrize(
    ("formula", "family"),
    [
        ("y ~ 0 + urban + x + (1 | g)", "gaussian"),
        ("y ~ x * urban + (1 + urban | g)", "gaussian"),
        ("k ~ urban + (1 | g)", "poisson"),
        ("b ~ urban + (1 | g)", "binomial"),
    ],
)
def test_a_boolean_fits_as_text_false_true(formula: str, family: str) -> None:
    data = pl.read_csv(BOOLEANS).with_columns(
        k=(pl.col("y") * 2).round().cast(pl.Int64), b=(pl.col("y") > 10).cast(pl.Int64)
    )
    a = pooljob.fit(formula, data, family=family)  # type: ignore[arg-type]
    b = pooljob.fit(formula, as_text(data), family=family)  # type: ignore[arg-type]
    assert a.coefficients["term"].to_list() == b.coefficients["term"].to_list()
    assert a.objective == pytest.approx(b.objective, rel=1e-12)
    for x, y in zip(a.coefficients["estimate"], b.coefficients["estimate"], strict=True):
        assert x == pytest.approx(y, rel=1e-6, abs=1e-9)  # the optimizer's last digits


def test_nulls_drop_rows_as_for_text() -> None:
    data = pl.read_csv(BOOLEANS).with_columns(
        pl.when(pl.int_range(pl.len()) % 50 == 0)
        .then(None)
        .otherwise(pl.col("urban"))
        .alias("urban")
    )
    a = pooljob.fit("y ~ urban + (1 | g)", data)
    text = as_text(data).with_columns(
        pl.when(data["urban"].is_null()).then(None).otherwise(pl.col("urban")).alias("urban")
    )
    b = pooljob.fit("y ~ urban + (1 | g)", text)
    assert a.rows == b.rows
    assert a.rows["dropped"]["null_group_key"] == 10 and a.nobs == 490
    c = pooljob.fit("y ~ urban + (1 | g)", data.drop_nulls())
    assert a.coefficients["term"].to_list() == c.coefficients["term"].to_list()
    for x, y in zip(a.coefficients["estimate"], c.coefficients["estimate"], strict=True):
        assert x == pytest.approx(y, rel=1e-9)
