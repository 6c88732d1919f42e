"""Bad input: a clear one-line error, or rows dropped and counted (documented)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import InputError, MissingColumnError


def frame(**extra) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 5)
    data = {"g": [f"g{i}" for i in g], "y": 10 + rng.normal(0, 1, 8)[g] + rng.normal(0, 1, 40)}
    data.update(extra)
    return pl.DataFrame(data)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(InputError, match=r"matches no file"):
        pooljob.fit("y ~ 1 + (1 | g)", str(tmp_path / "nope" / "*.parquet"))


def test_missing_column_lists_available_columns() -> None:
    with pytest.raises(MissingColumnError, match=r"'G'.*did you mean 'g'.*available columns: g, y"):
        pooljob.fit("y ~ 1 + (1 | G)", frame())


def test_non_numeric_response() -> None:
    df = frame().with_columns(pl.col("y").cast(pl.String))
    with pytest.raises(InputError, match=r"response column 'y' has type VARCHAR.*numeric"):
        pooljob.fit("y ~ 1 + (1 | g)", df)


def test_no_rows_after_where(tmp_path) -> None:
    from pooljob.job.config import parse_config
    from pooljob.job.run import run

    path = tmp_path / "d.parquet"
    frame().write_parquet(path)
    cfg = parse_config(
        {
            "source": {"path": str(path), "where": "y > 1e6"},
            "model": {"formula": "y ~ 1 + (1 | g)"},
            "output": {"path": str(tmp_path / "out")},
        },
        tmp_path / "c.toml",
    )
    with pytest.raises(InputError, match=r"no usable rows.*0 rows read.*where"):
        run(cfg)
    assert not (tmp_path / "out" / "current").exists()


def test_null_keys_and_nonfinite_responses_are_dropped_and_counted() -> None:
    df = frame()
    y = df["y"].to_list()
    g = df["g"].to_list()
    y[0], y[1], y[2], y[3] = None, math.nan, math.inf, -math.inf
    g[10] = None
    dirty = pl.DataFrame({"g": g, "y": y}, schema={"g": pl.String, "y": pl.Float64})
    fit = pooljob.fit("y ~ 1 + (1 | g)", dirty)
    assert fit.rows["read"] == 40
    assert fit.rows["dropped"] == {
        "null_group_key": 1,
        "null_response": 1,
        "nonfinite_response": 3,
        "unusable_covariate": 0,
    }
    assert fit.rows["used"] == 35
    clean = dirty.filter(pl.col("g").is_not_null() & pl.col("y").is_finite())
    ref = pooljob.fit("y ~ 1 + (1 | g)", clean)
    np.testing.assert_allclose(fit.components["variance"], ref.components["variance"], rtol=1e-12)


def test_a_single_group_is_refused() -> None:
    df = frame().with_columns(pl.lit("only").alias("g"))
    with pytest.raises(InputError, match=r"grouping 'g' has a single group"):
        pooljob.fit("y ~ 1 + (1 | g)", df)


def test_every_group_of_size_one_is_refused() -> None:
    df = pl.DataFrame({"g": [f"g{i}" for i in range(10)], "y": np.arange(10.0)})
    with pytest.raises(InputError, match=r"every 'g' group has exactly one row"):
        pooljob.fit("y ~ 1 + (1 | g)", df)


def test_some_groups_of_size_one_are_fine() -> None:
    df = pl.concat([frame(), pl.DataFrame({"g": ["solo1", "solo2"], "y": [14.0, 7.0]})])
    fit = pooljob.fit("y ~ 1 + (1 | g)", df)
    solo = fit.estimates.filter(pl.col("g") == "solo1").row(0, named=True)
    assert solo["n"] == 1
    comp = dict(fit.components.select("grouping", "variance").rows())
    assert solo["shrinkage"] == pytest.approx(comp["Residual"] / (comp["Residual"] + comp["g"]))
    mu = fit.coefficients["estimate"][0]
    assert solo["estimate"] == pytest.approx(
        solo["shrinkage"] * mu + (1 - solo["shrinkage"]) * 14.0, rel=1e-12
    )


def test_constant_response_is_refused() -> None:
    df = frame().with_columns(pl.lit(3.0).alias("y"))
    with pytest.raises(InputError, match=r"does not vary within any group"):
        pooljob.fit("y ~ 1 + (1 | g)", df)


def test_crossed_groupings_go_to_the_general_solver() -> None:
    df = frame().with_columns(pl.Series("h", ["a", "b"] * 20))
    fit = pooljob.fit("y ~ 1 + (1 | g) + (1 | h)", df)
    assert not fit.nested
    assert set(fit.components["grouping"]) == {"g", "h", "Residual"}


def test_null_covariates_are_dropped_and_counted() -> None:
    df = frame().with_columns(
        pl.Series("x", [None, float("nan")] + [float(i % 7) for i in range(38)])
    )
    fit = pooljob.fit("y ~ x + (1 | g)", df)
    assert fit.rows["dropped"]["unusable_covariate"] == 2
    assert fit.rows["used"] == 38


def test_rank_deficient_design_names_the_column() -> None:
    df = frame().with_columns(pl.col("y").alias("x1")).with_columns((2 * pl.col("x1")).alias("x2"))
    with pytest.raises(InputError, match=r"rank deficient: column 'x2' is a linear combination"):
        pooljob.fit("y ~ x1 + x2 + (1 | g)", df)


def test_crossed_groupings_too_large_for_the_dense_block() -> None:
    from pooljob.model import lmm

    df = frame().with_columns(pl.Series("h", [f"h{i % 13}" for i in range(40)]))
    old = lmm.MAX_DENSE
    try:
        lmm.MAX_DENSE = 5
        import pooljob.model.general as general

        general.MAX_DENSE = 5
        with pytest.raises(InputError, match=r"too large for the exact dense solver: .*levels"):
            pooljob.fit("y ~ 1 + (1 | g) + (1 | h)", df)
    finally:
        lmm.MAX_DENSE = old
        general.MAX_DENSE = old


def test_data_nested_groupings_without_slash_are_fitted_as_nested() -> None:
    df = (
        frame()
        .with_columns(pl.col("g").str.slice(0, 2).alias("top"))
        .with_columns(
            pl.when(pl.col("g") < "g4").then(pl.lit("A")).otherwise(pl.lit("B")).alias("top")
        )
    )
    a = pooljob.fit("y ~ 1 + (1 | top) + (1 | g)", df)
    b = pooljob.fit("y ~ 1 + (1 | top/g)", df)
    assert a.objective == pytest.approx(b.objective, rel=1e-12)


def test_unreadable_data_object() -> None:
    with pytest.raises(InputError, match=r"not a table pooljob can read"):
        pooljob.fit("y ~ 1 + (1 | g)", 42)
