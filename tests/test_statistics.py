"""DuckDB statistics against a naive polars group_by, and the invariances."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.model.formula import parse_formula
from pooljob.model.nested import objective, objective_and_gradient
from pooljob.scan.source import open_data
from pooljob.scan.tree import compute


def random_rows(seed: int = 0, n: int = 3000, groups: int = 40) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    state = np.array(["MD", "VA", "DC", "PA"])[g % 4]
    effect = rng.normal(0, 2, groups)[g]
    return pl.DataFrame({"state": state, "county": g, "y": 50 + effect + rng.normal(0, 3, n)})


def test_duckdb_statistics_equal_naive_group_by() -> None:
    df = random_rows()
    formula = parse_formula("y ~ 1 + (1 | state/county)")
    with open_data(df) as src:
        gs = compute(src, formula)
    naive = (
        df.group_by("state", "county")
        .agg(
            pl.len().alias("n"),
            pl.col("y").mean().alias("mean"),
            ((pl.col("y") - pl.col("y").mean()) ** 2).sum().alias("ss"),
        )
        .sort("state", "county")
    )
    mine = gs.keys.with_columns(
        n=gs.stats.n, mean=gs.stats.mean + gs.shift, ss=gs.stats.within_ss
    ).sort("state", "county")
    assert mine.height == naive.height
    assert (mine["n"] == naive["n"].cast(pl.Float64)).all()
    np.testing.assert_allclose(mine["mean"], naive["mean"], rtol=1e-13)
    np.testing.assert_allclose(mine["ss"], naive["ss"], rtol=1e-10)


def test_gradient_equals_finite_differences() -> None:
    df = random_rows(1)
    with open_data(df) as src:
        gs = compute(src, parse_formula("y ~ 1 + (1 | state/county)"))
    for reml in (True, False):
        for theta in (np.array([0.3, 1.7]), np.array([2.0, 0.05])):
            _, grad = objective_and_gradient(gs.stats, theta, reml)
            h = 1e-6
            fd = [
                (
                    objective(gs.stats, theta + h * e, reml)
                    - objective(gs.stats, theta - h * e, reml)
                )
                / (2 * h)
                for e in np.eye(2)
            ]
            np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


def _fit(data, formula="y ~ 1 + (1 | state/county)"):
    return pooljob.fit(formula, data)


def _components(fit: pooljob.FitResult) -> np.ndarray:
    return fit.components["variance"].to_numpy()


def test_shifting_the_response_by_1e9_changes_nothing() -> None:
    df = random_rows(2)
    base = _fit(df)
    shifted = _fit(df.with_columns(pl.col("y") + 1e9))
    np.testing.assert_allclose(_components(shifted), _components(base), rtol=1e-8)
    # y + 1e9 is itself rounded to ~1e-7, which moves the criterion by ~1e-10 relative
    assert shifted.objective == pytest.approx(base.objective, rel=1e-9)
    np.testing.assert_allclose(
        shifted.estimates["estimate"] - 1e9, base.estimates["estimate"], rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        shifted.effects["estimate"], base.effects["estimate"], rtol=1e-6, atol=1e-9
    )


def test_row_order_does_not_matter() -> None:
    df = random_rows(3)
    base = _fit(df)
    shuffled = _fit(df.sample(fraction=1.0, shuffle=True, seed=9))
    np.testing.assert_allclose(_components(shuffled), _components(base), rtol=1e-8)
    keys = ["grouping", "state", "county", "n"]
    assert shuffled.estimates.select(keys).equals(base.estimates.select(keys))
    np.testing.assert_allclose(
        shuffled.estimates["raw_mean"], base.estimates["raw_mean"], rtol=1e-13
    )
    np.testing.assert_allclose(
        shuffled.estimates["estimate"], base.estimates["estimate"], rtol=1e-10
    )


def test_splitting_the_input_over_files_does_not_matter(tmp_path) -> None:
    df = random_rows(4)
    single = tmp_path / "one.parquet"
    df.write_parquet(single)
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, chunk in enumerate(df.sample(fraction=1.0, shuffle=True, seed=1).iter_slices(700)):
        chunk.write_parquet(parts / f"part-{i}.parquet")
    a = _fit(single)
    b = _fit(str(parts / "*.parquet"))
    # the sums differ only in rounding (summation order); the optimizer's end
    # point moves by far less than its tolerance
    np.testing.assert_allclose(_components(b), _components(a), rtol=1e-8)
    np.testing.assert_allclose(b.estimates["estimate"], a.estimates["estimate"], rtol=1e-10)
    assert b.objective == pytest.approx(a.objective, rel=1e-12)


def test_hive_partitions_give_the_grouping_column(tmp_path) -> None:
    df = random_rows(5)
    for state, part in df.group_by("state"):
        folder = tmp_path / f"state={state[0]}"
        folder.mkdir()
        part.drop("state").write_parquet(folder / "data.parquet")
    a = _fit(df)
    b = _fit(str(tmp_path / "**" / "*.parquet"))
    np.testing.assert_allclose(_components(b), _components(a), rtol=1e-8)


def test_all_input_kinds_agree(tmp_path) -> None:
    import duckdb

    df = random_rows(6, n=500)
    csv = tmp_path / "rows.csv"
    df.write_csv(csv)
    ref = _fit(df)
    con = duckdb.connect()
    con.register("df_view", df.to_arrow())
    for data in (df.to_pandas(), df.to_arrow(), csv, str(csv), con.sql("select * from df_view")):
        fit = _fit(data)
        np.testing.assert_allclose(_components(fit), _components(ref), rtol=1e-8)


def _count_scans(monkeypatch) -> list[str]:
    from pooljob.scan.source import Source

    calls: list[str] = []
    original = Source.arrow

    def spy(self, sql, params=None):
        calls.append(sql)
        return original(self, sql, params)

    monkeypatch.setattr(Source, "arrow", spy)
    return calls


def test_clean_data_is_scanned_once(monkeypatch) -> None:
    calls = _count_scans(monkeypatch)
    _fit(random_rows(7))
    assert len(calls) == 1


def test_dirty_and_far_from_zero_data_is_rescanned_and_exact(monkeypatch) -> None:
    df = random_rows(8)
    clean = _fit(df)
    dirty = pl.concat(
        [
            df.with_columns(pl.col("y") + 1e9),
            pl.DataFrame(
                {"state": ["MD", "VA"], "county": [1, 2], "y": [float("nan"), float("inf")]}
            ),
        ]
    )
    calls = _count_scans(monkeypatch)
    fit = _fit(dirty)
    assert len(calls) == 3  # all rows; finite rows; finite rows centred
    assert fit.rows["dropped"]["nonfinite_response"] == 2
    np.testing.assert_allclose(_components(fit), _components(clean), rtol=1e-8)
