"""Fits from rollup tables (issue 12 §5): rows → a DuckDB GROUP BY rollup → the same fit.

A rollup keeps per row (day × cell, say) the count, sum and sum of squares of
the response; ``[model] rollup`` (``pooljob.fit(..., rollup=...)``) fits from
it.  Every fit here is compared with the fit from the rows: objective and
every table to 1e-9 — a nested model (tree solver), a categorical and a
numeric covariate constant within rollup rows, crossed groupings (blocked
solver), and a response shifted by 1e9 (exact DECIMAL sums).  Then the
errors: a rollup too coarse for the formula, bad or missing count, sum and
sum_squares columns, negative counts, squares below sum²/count; rows with
count 0 and nulls dropped and counted; the config, the CLI (run, validate,
explain) and the Poisson rates that need no rollup option.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import ConfigError, InputError
from pooljob.job.cli import main
from pooljob.outputs.tables import FitResult

ROLLUP = {"count": "n", "sum": "y_sum", "sum_squares": "y_sum_squares"}
TABLES = ("estimates", "effects", "coefficients", "components")


def rows(seed: int = 0, n: int = 4000, shift: float = 0.0) -> pl.DataFrame:
    """Rows: a in 8 groups, b in 5 within each, crossed c, a day, a school-day covariate x."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 8, n)
    b = rng.integers(0, 5, n)
    c = rng.integers(0, 6, n)
    day = rng.integers(0, 4, n)
    gender = rng.choice(["f", "m"], n)
    x = np.round(np.sin(a * 4 + day) * 8) / 8  # constant within (a, day)
    y = (
        rng.normal(0, 1, 8)[a]
        + rng.normal(0, 0.5, 40)[a * 5 + b]
        + rng.normal(0, 0.7, 6)[c]
        + 0.4 * (gender == "m")
        + 0.8 * x
        + rng.normal(0, 1, n)
    )
    y = np.round(y * 8) / 8 + shift  # on a grid of 1/8: exact in DECIMAL(38, 3)
    return pl.DataFrame(
        {"a": a.astype(str), "b": b.astype(str), "c": c, "day": day, "gender": gender}
    ).with_columns(x=pl.Series(x), y=pl.Series(y))


def rollup(frame: pl.DataFrame, by: str, exact: bool = False) -> pl.DataFrame:
    """The rollup a warehouse keeps: GROUP BY ``by``, count, sum and sum of squares of y."""
    value = "cast(y as decimal(38, 3))" if exact else "y"
    con = duckdb.connect()
    con.register("frame", frame.to_arrow())
    return con.sql(
        f"select {by}, count(*) as n, sum({value}) as y_sum, "
        f"sum({value} * {value}) as y_sum_squares from frame group by {by} order by {by}"
    ).pl()


def assert_same_fit(got: FitResult, want: FitResult, atol: float = 1e-9) -> None:
    assert got.objective == pytest.approx(want.objective, rel=1e-9, abs=1e-9)
    assert got.nobs == want.nobs and got.rows["used"] == want.rows["used"]
    for name in TABLES:
        a, b = getattr(got, name), getattr(want, name)
        assert a.columns == b.columns and a.height == b.height, name
        keys = [c for c, t in a.schema.items() if not t.is_float()]
        a, b = a.sort(keys, nulls_last=True), b.sort(keys, nulls_last=True)
        for col in a.columns:
            if a.schema[col].is_float():
                np.testing.assert_allclose(
                    a[col].to_numpy(), b[col].to_numpy(), rtol=1e-9, atol=atol, err_msg=name
                )
            else:
                assert a[col].to_list() == b[col].to_list(), (name, col)


@pytest.mark.parametrize(
    ("formula", "by"),
    [
        ("y ~ 1 + (1 | a/b)", "a, b, day"),
        ("y ~ gender + x + (1 | a/b)", "a, b, day, gender, x"),
        ("y ~ gender + x + (1 | a)", "a, b, day, gender, x"),
        ("y ~ 1 + (1 | a) + (1 | c)", "a, c, day"),
        ("y ~ x + (1 | a:b) + (1 | c)", "a, b, c, day, x"),
    ],
)
def test_rollup_fit_equals_row_fit(formula: str, by: str) -> None:
    frame = rows()
    want = pooljob.fit(formula, frame)
    got = pooljob.fit(formula, rollup(frame, by), rollup=ROLLUP)
    assert_same_fit(got, want)
    assert got.rows["rollup_rows"]["used"] == rollup(frame, by).height


def test_rollup_shifted_by_1e9_equals_row_fit() -> None:
    """Exact DECIMAL sums of a response near 1e9: the cells are as exact as the rows'."""
    frame = rows(seed=3, shift=1e9)
    for formula, by in [
        ("y ~ 1 + (1 | a/b)", "a, b, day"),
        ("y ~ x + (1 | a) + (1 | c)", "a, c, day, x"),
    ]:
        want = pooljob.fit(formula, frame)
        got = pooljob.fit(formula, rollup(frame, by, exact=True), rollup=ROLLUP)
        assert_same_fit(got, want, atol=1e-6)  # estimates near 1e9: their ulp is 1.2e-7
        base = pooljob.fit(formula, rows(seed=3))
        np.testing.assert_allclose(
            got.components["variance"].to_numpy(), base.components["variance"].to_numpy(), 1e-8
        )


def test_zero_counts_and_nulls_are_dropped_and_counted() -> None:
    frame = rows()
    roll = rollup(frame, "a, b, day")
    extra = pl.DataFrame(
        {
            "a": ["0", None, "1", "2", "3"],
            "b": ["0", "1", "1", "1", "1"],
            "day": [9, 9, 9, 9, 9],
            "n": [0, 4, 3, None, 2],
            "y_sum": [0.0, 1.0, None, 1.0, 2.0],
            "y_sum_squares": [0.0, 1.0, 1.0, 1.0, float("nan")],
        },
        schema=roll.schema,
    )
    got = pooljob.fit("y ~ 1 + (1 | a/b)", pl.concat([roll, extra]), rollup=ROLLUP)
    want = pooljob.fit("y ~ 1 + (1 | a/b)", frame)
    assert_same_fit(got, want)
    assert got.rows["read"] == frame.height + 9 and got.rows["used"] == frame.height
    assert got.rows["dropped"] == {
        "null_group_key": 4,
        "null_response": 3,
        "nonfinite_response": 2,
        "unusable_covariate": 0,
    }
    dropped = got.rows["rollup_rows"]["dropped"]
    assert dropped["zero_count"] == 1 and dropped["null_count"] == 1
    assert dropped["null_group_key"] == dropped["null_response"] == 1


def test_data_errors_exit_3() -> None:
    roll = rollup(rows(), "a, b, day")
    negative = roll.with_columns(n=pl.when(pl.col("day") == 0).then(-1).otherwise(pl.col("n")))
    with pytest.raises(InputError, match="negative or not a whole number"):
        pooljob.fit("y ~ 1 + (1 | a)", negative, rollup=ROLLUP)
    squares = roll.with_columns(y_sum_squares=pl.col("y_sum_squares") * 0.5)
    with pytest.raises(InputError, match=r"sum_squares below sum²/count"):
        pooljob.fit("y ~ 1 + (1 | a)", squares, rollup=ROLLUP)


@pytest.mark.parametrize(
    ("formula", "columns", "match"),
    [
        ("y ~ x + (1 | a)", {}, r"uses 'x', not a column of the rollup.*roll the data up"),
        ("y ~ 1 + (1 | a/b)", {}, r"uses 'b', not a column"),
        ("y ~ offset(x) + (1 | a)", {}, r"uses 'x'"),
        ("y ~ 1 + (1 | a)", {"sum": "total"}, r"sum = 'total' is not a column.*n \(BIGINT\)"),
        ("y ~ 1 + (1 | a)", {"count": "a"}, r"count = 'a' has type VARCHAR, not a number"),
    ],
)
def test_rollups_too_coarse_or_without_the_statistics_are_config_errors(
    formula: str, columns: dict[str, str], match: str
) -> None:
    roll = rollup(rows(), "a, day")
    with pytest.raises(ConfigError, match=match):
        pooljob.fit(formula, roll, rollup={**ROLLUP, **columns})


def test_api_rollup_argument_is_checked() -> None:
    roll = rollup(rows(), "a, day")
    with pytest.raises(ConfigError, match="unknown key 'mean'"):
        pooljob.fit("y ~ 1 + (1 | a)", roll, rollup={**ROLLUP, "mean": "m"})
    with pytest.raises(ConfigError, match="needs sum_squares"):
        pooljob.fit("y ~ 1 + (1 | a)", roll, rollup={"count": "n", "sum": "y_sum"})
    with pytest.raises(ConfigError, match=r"cbind\(successes, failures\).*offset\(log"):
        pooljob.fit("y ~ 1 + (1 | a)", roll, family="poisson", rollup=ROLLUP)


def _job(folder: Path, formula: str, model: str = "", data: pl.DataFrame | None = None) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    roll = rollup(rows(), "a, b, day, x") if data is None else data
    roll.write_parquet(folder / "data" / "rollup.parquet")
    cfg = folder / "job.toml"
    cfg.write_text(
        "[source]\npath = 'data/*.parquet'\n[model]\n"
        f"formula = '{formula}'\n{model}\n[output]\npath = 'out'\n"
    )
    return cfg


ROLLUP_TOML = 'rollup = { count = "n", sum = "y_sum", sum_squares = "y_sum_squares" }'


def test_job_run_validate_explain(tmp_path: Path, capsys: Any) -> None:
    cfg = _job(tmp_path, "y ~ x + (1 | a/b)", ROLLUP_TOML)
    assert main(["validate", str(cfg)]) == 0
    assert "columns found: x, a, b, n, y_sum, y_sum_squares" in capsys.readouterr().out
    assert main(["explain", str(cfg)]) == 0
    sql = capsys.readouterr().out
    assert "rollup_stats" in sql and '"y_sum_squares"' in sql
    assert main(["--quiet", "run", str(cfg)]) == 0
    assert main(["run", str(cfg)]) == 0  # never incremental: a full scan, said why
    err = capsys.readouterr().err
    assert "a rollup table is scanned in full" in err and "rollup: 160 rollup rows read" in err
    manifest = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    assert manifest["refresh"]["mode"] == "full"
    assert "rollup" in manifest["refresh"]["reason"]
    want = pooljob.fit("y ~ x + (1 | a/b)", rows())
    assert manifest["objective"] == pytest.approx(want.objective, rel=1e-9)
    got = pl.read_parquet(tmp_path / "out" / "current" / "components.parquet")
    np.testing.assert_allclose(got["variance"], want.components["variance"], rtol=1e-9)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ('rollup = { count = "n", sum = "y_sum" }', "needs sum_squares"),
        ('rollup = { count = "n", sum = "y_sum", sum_squares = "q", x = "y" }', "unknown key"),
        ('rollup = "n"', "must be a table"),
        (ROLLUP_TOML + '\nfamily = "binomial"', r"cbind\(successes, failures\)"),
    ],
)
def test_config_errors_exit_2(tmp_path: Path, capsys: Any, model: str, match: str) -> None:
    cfg = _job(tmp_path, "y ~ 1 + (1 | a)", model)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err)


def test_too_coarse_rollup_exits_2_and_bad_counts_exit_3(tmp_path: Path, capsys: Any) -> None:
    cfg = _job(tmp_path / "coarse", "y ~ gender + (1 | a)", ROLLUP_TOML)
    assert main(["validate", str(cfg)]) == 2
    assert "uses 'gender', not a column of the rollup" in capsys.readouterr().err
    bad = rollup(rows(), "a, day").with_columns(n=-pl.col("n"))
    cfg = _job(tmp_path / "bad", "y ~ 1 + (1 | a)", ROLLUP_TOML, data=bad)
    assert main(["run", str(cfg)]) == 3


def test_poisson_rollup_is_a_count_with_summed_exposure() -> None:
    """A Poisson rate needs no rollup option: sum the events and the exposure per row.

    The per-row log-likelihood constants (log y!) differ, so the objectives
    differ by a constant; the fit's parameters are the same.
    """
    rng = np.random.default_rng(5)
    n = 3000
    a = rng.integers(0, 10, n)
    day = rng.integers(0, 5, n)
    exposure = rng.uniform(0.5, 2.0, n)
    events = rng.poisson(exposure * np.exp(0.2 + rng.normal(0, 0.5, 10)[a]))
    frame = pl.DataFrame({"a": a, "day": day, "events": events, "exposure": exposure})
    con = duckdb.connect()
    con.register("frame", frame.to_arrow())
    roll = con.sql(
        "select a, day, sum(events) as events, sum(exposure) as exposure from frame group by all"
    ).pl()
    formula = "events ~ 1 + offset(log(exposure)) + (1 | a)"
    want = pooljob.fit(formula, frame, family="poisson")
    got = pooljob.fit(formula, roll, family="poisson")
    for name in ("coefficients", "components"):
        a_, b_ = getattr(got, name), getattr(want, name)
        col = "estimate" if name == "coefficients" else "variance"
        np.testing.assert_allclose(a_[col].to_numpy(), b_[col].to_numpy(), rtol=1e-5)
