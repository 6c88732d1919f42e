"""Bad input to binomial and Poisson models: one clear error, naming what is wrong."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import ConfigError, InputError, UnsupportedTermError


def frame(**extra: list[object]) -> pl.DataFrame:
    rng = np.random.default_rng(1)
    n = 200
    g = [f"g{i % 10}" for i in range(n)]
    base: dict[str, list[object]] = {
        "g": list(g),
        "y": [int(v) for v in rng.integers(0, 2, n)],
        "k": [int(v) for v in rng.poisson(2.0, n)],
        "x": [float(i % 10) for i in range(n)],  # constant within g
        "w": [float(v) for v in rng.normal(size=n)],  # varies within g
        "e": [float(v) for v in rng.uniform(0.5, 2.0, n)],
    }
    base.update(extra)
    return pl.DataFrame(base)


@pytest.mark.parametrize(
    ("formula", "family", "data", "message"),
    [
        ("y ~ 1 + (1 | g)", "binomial", {"y": [2] + [0] * 199}, "must be 0 or 1"),
        ("k ~ 1 + (1 | g)", "poisson", {"k": [-1] + [0] * 199}, "whole number >= 0"),
        ("k ~ 1 + (1 | g)", "poisson", {"k": [0.5] + [0] * 199}, "whole number >= 0"),
        ("cbind(y, k) ~ 1 + (1 | g)", "binomial", {"y": [-1] + [0] * 199}, "0 <= successes"),
        ("y ~ 1", "binomial", {}, "no random-effect term"),
    ],
)
def test_input_errors(
    formula: str, family: str, data: dict[str, list[object]], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        pooljob.fit(formula, frame(**data), family=family)  # type: ignore[arg-type]


def test_constant_covariate_is_fine() -> None:
    result = pooljob.fit("y ~ x + (1 | g)", frame(), family="binomial")
    assert result.coefficients["term"].to_list() == ["(Intercept)", "x"]


def test_covariate_that_varies_within_cells_is_fitted() -> None:
    # w varies within g: each row is a cell of its own (distinct keys and values)
    for family, formula in [("binomial", "y ~ w + (1 | g)"), ("poisson", "k ~ w + (1 | g)")]:
        result = pooljob.fit(formula, frame(), family=family)  # type: ignore[arg-type]
        assert result.coefficients["term"].to_list() == ["(Intercept)", "w"]
        assert result.nobs == 200 and result.converged


def test_rows_with_equal_covariate_values_pool_into_one_cell() -> None:
    # 0/1 rows with a covariate taking 5 values per group, and the same data as
    # cbind counts per (group, value): the same cells, the same fit; only the
    # log-likelihood's constant (the binomial coefficients) differs
    rng = np.random.default_rng(7)
    n = 3000
    g = [f"g{i}" for i in rng.integers(0, 12, n)]
    x = rng.choice([-1.0, -0.25, 0.0, 0.5, 1.5], n)
    eta = -0.3 + 0.8 * x + np.array([int(v[1:]) for v in g]) * 0.05
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(int)
    rows = pl.DataFrame({"g": g, "x": x, "y": y})
    cells = (
        rows.group_by("g", "x")
        .agg(pl.col("y").sum().alias("s"), (1 - pl.col("y")).sum().alias("f"))
        .sort("g", "x")
    )
    by_rows = pooljob.fit("y ~ x + (1 | g)", rows, family="binomial")
    by_cells = pooljob.fit("cbind(s, f) ~ x + (1 | g)", cells, family="binomial")
    for name in ("coefficients", "components", "effects", "estimates"):
        a, b = getattr(by_rows, name), getattr(by_cells, name)
        for c in ("estimate", "std_error", "variance"):
            if c in a.columns:
                np.testing.assert_allclose(a[c], b[c], rtol=1e-7, err_msg=name)
    assert by_rows.nobs == n and by_cells.nobs == cells.height <= 60


def test_too_many_cells_is_one_line_naming_the_count_and_the_bound(monkeypatch) -> None:
    import pooljob.scan.cell_counts as cell_counts

    monkeypatch.setattr(cell_counts, "MAX_CELLS", 150)
    with pytest.raises(InputError) as error:
        pooljob.fit("y ~ w + (1 | g)", frame(), family="binomial")
    assert str(error.value) == (
        "200 cells (distinct keys and covariate values) exceed the bound of 150 for a "
        "binomial model fitted from per-cell counts: round or bin the continuous "
        "covariates, or filter rows with [source] where"
    )
    # a covariate constant within g: 10 cells, well within the bound
    assert pooljob.fit("y ~ x + (1 | g)", frame(), family="binomial").converged


def test_gaussian_with_cbind_or_log_offset() -> None:
    with pytest.raises(InputError, match="needs family = 'binomial'"):
        pooljob.fit("cbind(y, k) ~ 1 + (1 | g)", frame())
    with pytest.raises(InputError, match="offset\\(log"):
        pooljob.fit("y ~ 1 + offset(log(e)) + (1 | g)", frame())


def test_method_must_suit_the_family() -> None:
    with pytest.raises(ConfigError, match="method = 'reml' is not supported for family"):
        pooljob.fit("y ~ 1 + (1 | g)", frame(), family="binomial", method="reml")


def test_unsupported_response_expression() -> None:
    with pytest.raises(UnsupportedTermError, match="cbind"):
        pooljob.fit("cbind(y, k, e) ~ 1 + (1 | g)", frame(), family="binomial")


def test_dropped_rows_are_counted() -> None:
    data = frame().with_columns(
        pl.when(pl.int_range(pl.len()) < 3).then(None).otherwise(pl.col("k")).alias("k"),
        pl.when(pl.int_range(pl.len()) == 5).then(None).otherwise(pl.col("g")).alias("g"),
        pl.when(pl.int_range(pl.len()) == 7).then(0.0).otherwise(pl.col("e")).alias("e"),
    )
    result = pooljob.fit("k ~ 1 + offset(log(e)) + (1 | g)", data, family="poisson")
    assert result.rows["read"] == 200
    assert result.rows["dropped"] == {
        "null_group_key": 1,
        "null_response": 3,
        "nonfinite_response": 0,
        "unusable_covariate": 1,
    }
    assert result.rows["used"] == 195 == result.nobs


def test_boolean_response() -> None:
    data = frame()
    a = pooljob.fit("y ~ 1 + (1 | g)", data, family="binomial")
    b = pooljob.fit("y ~ 1 + (1 | g)", data.with_columns(pl.col("y") == 1), family="binomial")
    assert a.loglik == b.loglik


def test_explain_and_validate_count_model(tmp_path: object) -> None:
    from pathlib import Path

    from pooljob.job.cli import main

    assert isinstance(tmp_path, Path)
    frame().write_parquet(tmp_path / "d.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "d.parquet"\n'
        '[model]\nformula = "k ~ 1 + offset(log(e)) + (1 | g)"\nfamily = "poisson"\n'
        '[output]\npath = "out"\n'
    )
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["explain", str(tmp_path / "job.toml")]) == 0
    text = out.getvalue()
    assert "per-cell counts" in text and 'ln(cast(source."e" as double))' in text
    assert "lgamma(y + 1)" in text


def test_spark_engine_takes_count_families(tmp_path: object) -> None:
    from pathlib import Path

    from pooljob.job.config import parse_config

    assert isinstance(tmp_path, Path)
    raw = {
        "source": {"path": "x.parquet"},
        "model": {"formula": "y ~ 1 + (1 | g)", "family": "binomial"},
        "output": {"path": "out"},
        "engine": {"kind": "spark"},
    }
    config = parse_config(raw, tmp_path / "c.toml")  # tests/test_spark.py runs such a job
    assert config.engine.kind == "spark" and config.model.family == "binomial"


def test_poststratification_with_a_covariate_that_varies_within_cells() -> None:
    # the population table carries the covariate's values; with the sample's own
    # cells as the population, a group's poststratified figure is its estimate
    from pathlib import Path

    data = pl.read_csv(
        Path(__file__).parent / "data" / "contraception_age.csv",
        schema_overrides={"district": pl.String, "livch": pl.String},
    )
    fit = pooljob.fit("use ~ age + urban + livch + (1 | district)", data, family="binomial")
    population = data.group_by("district", "urban", "livch", "age").agg(
        pl.len().alias("population")
    )
    by_district = pooljob.poststratify(fit, population, weight="population", by=["district"])
    estimates = fit.estimates.filter(pl.col("grouping") == "district").sort("district")
    np.testing.assert_allclose(
        by_district.sort("district")["estimate"], estimates["estimate"], rtol=1e-12
    )
