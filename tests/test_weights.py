"""Observation weights (issue 12 §1): lme4's precision weights, residual variance σ²/w.

Goldens: lme4 fits with ``weights = w`` made by ``tests/data/make_lme4_weights.R``
(tight optimizer tolerances): a one-way model with covariates and a random slope
crossed with an intercept (blocked solver), and a three-level nested model (tree
solver, and the blocked solver on the same data).  Criterion, θ, fixed effects and
their standard errors, variance components, conditional modes and cond_sd, and the
published estimates (weighted group means of ``fitted(m)``) with Henderson's
standard errors.  Then a dense reference (V = σ²(W⁻¹ + Z G Zᵀ) built with numpy),
and the invariances: all weights 1, integer weights against duplicated rows at a
fixed θ, weights scaled by c, zero weights, bad weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import ConfigError, InputError
from pooljob.job.cli import main
from pooljob.model.general import prepare
from pooljob.model.lmm import objective, solve
from pooljob.model.options import DEFAULT_CONTROL
from pooljob.pipeline import fit_source
from pooljob.scan.cell_moments import scan_cells
from pooljob.scan.schema import check_schema
from pooljob.scan.source import open_data
from pooljob.scan.weights import scan_weighted_cells
from tests.conftest import DATA, reference

CASES = [
    ("weights_oneway", "y ~ x1 + cat + (1 | g)"),
    ("weights_nested", "y ~ 1 + (1 | a/b/c)"),
    ("weights_slope", "y ~ x + (x | g) + (1 | h)"),
]
#: lme4 stops at ~1e-8 in θ with the tight settings; pooljob at its own optimum.
REL = 2e-6


def _fit(data: Any, formula: str, method: str = "reml", solver: str = "auto", **kw: Any) -> Any:
    with open_data(data) as source:
        return fit_source(
            pooljob.model.formula.parse_formula(formula),
            source,
            "gaussian",
            method,
            0.95,
            solver=solver,
            control=DEFAULT_CONTROL,
            **kw,
        )


def _close(a: float, b: float, scale: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(abs(b), scale)


def _levels(fit: Any) -> dict[tuple[str, tuple[Any, ...]], str]:
    """(grouping, key values) → lme4's level name, from the effects table."""
    keys = list(fit.key_columns.values())
    out = {}
    for row in fit.effects.iter_rows(named=True):
        out[(row["grouping"], tuple(row[k] for k in keys))] = row["level"]
    return out


@pytest.mark.parametrize("solver", ["auto", "blocked"])
@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize(("name", "formula"), CASES)
def test_agrees_with_lme4(name: str, formula: str, method: str, solver: str) -> None:
    if solver == "blocked" and name != "weights_nested":
        pytest.skip("the other models go to the blocked solver anyway")
    ref = reference(f"{name}_{method}")
    fit = _fit(DATA / f"{name}.csv", formula, method, solver, weights="w")
    assert fit.nested == (name == "weights_nested" and solver == "auto")
    assert fit.weights == "w" and fit.nobs == ref["nobs"]
    assert abs(fit.objective - ref["objective"]) < 1e-9 * abs(ref["objective"])
    assert fit.objective <= ref["objective"] + 1e-9 * abs(ref["objective"])
    assert abs(fit.loglik - ref["loglik"]) < 1e-9 * abs(ref["loglik"])
    assert _close(fit.sigma, ref["sigma"], 0.0)
    fixef = {r["term"]: r for r in ref["fixef"]}
    for row in fit.coefficients.iter_rows(named=True):
        want = fixef[row["term"]]
        assert _close(row["estimate"], want["estimate"], want["std_error"]), row
        assert _close(row["std_error"], want["std_error"], 0.0), row
    comps = {(r["grouping"], r["term1"], r["term2"]): r["variance_or_cov"] for r in ref["varcomp"]}
    for row in fit.components.iter_rows(named=True):
        want = comps[(row["grouping"], row["term1"], row["term2"])]
        assert _close(row["variance"], want, 1e-3 * fit.sigma**2), row
    sd = {r["grouping"]: r["sd_or_cor"] for r in ref["varcomp"] if r["term2"] is None}
    effects = {(r["grouping"], r["level"], r["term"]): r for r in ref["ranef"]}
    assert fit.effects.height == len(effects)
    for row in fit.effects.iter_rows(named=True):
        want = effects[(row["grouping"], row["level"], row["term"])]
        scale = sd[row["grouping"]]
        assert _close(row["estimate"], want["estimate"], scale), row
        assert _close(row["cond_sd"], want["cond_sd"], 0.0), row
    levels = _levels(fit)
    keys = list(fit.key_columns.values())
    means = {(r["grouping"], r["level"]): r for r in ref["group_means"]}
    assert fit.estimates.height == len(means)
    for row in fit.estimates.iter_rows(named=True):
        key = (row["grouping"], tuple(row[k] for k in keys))
        want = means[(row["grouping"], levels[key])]
        assert row["n"] == want["n"]  # n stays the number of rows
        assert abs(row["raw_mean"] - want["raw_mean"]) < 1e-9 * abs(want["raw_mean"])
        assert _close(row["estimate"], want["estimate"], want["std_error"]), row
        assert _close(row["std_error"], want["std_error"], 0.0), row


def _nested_rows() -> pl.DataFrame:
    return pl.read_csv(DATA / "weights_nested.csv")


def test_weights_all_one_give_exactly_the_unweighted_fit() -> None:
    rows = _nested_rows().with_columns(w=pl.lit(1.0))
    for formula in ("y ~ 1 + (1 | a/b/c)", "y ~ 1 + (1 | a) + (1 | c)"):
        plain = pooljob.fit(formula, rows)
        ones = pooljob.fit(formula, rows, weights="w")
        assert ones.objective == plain.objective
        for table in ("estimates", "effects", "coefficients", "components"):
            assert getattr(ones, table).equals(getattr(plain, table)), table
        assert ones.rows["dropped"]["zero_weight"] == 0


def test_integer_weights_against_duplicated_rows_at_a_fixed_theta() -> None:
    """Precision weights w are not frequency weights: at a fixed θ the rows with weight w
    and the rows repeated w times give the same β̂, b̂ and penalised residual sum of
    squares q (every cross-product is the same), but the weighted model has N rows where
    the repeated one has Σ w: σ̂² = q/N against q/Σw (ML), and the criteria differ by
    N(1 + log 2πq/N) − Σw(1 + log 2πq/Σw) − Σ log w.  So θ̂, and what follows from it,
    differ; this is lme4's meaning of `weights`."""
    rows = pl.read_csv(DATA / "weights_oneway.csv").with_columns(
        w=(pl.col("w").round(0) + 1).cast(pl.Int64)
    )
    repeated = rows.select(pl.all().repeat_by(pl.col("w")).explode()).with_columns(w=pl.lit(1))
    formula = pooljob.model.formula.parse_formula("y ~ x1 + cat + (1 | g)")
    preps = []
    for data, weights in ((rows, "w"), (repeated, None)):
        with open_data(data) as source:
            spec = check_schema(source, formula)
            cells = (
                scan_cells(source, spec.keys, spec.variables)
                if weights is None
                else scan_weighted_cells(source, spec.keys, spec.variables, weights)
            )
            preps.append(prepare(formula, cells, spec.numeric, spec.categorical))
    weighted, dup = preps
    n, total = float(rows.height), float(rows["w"].sum())
    assert weighted.blocks.n == n and dup.blocks.n == total
    for theta in (np.array([0.3]), np.array([0.8])):
        sw, sd = solve(weighted.blocks, theta, False), solve(dup.blocks, theta, False)
        np.testing.assert_allclose(sw.beta, sd.beta, rtol=1e-10)
        np.testing.assert_allclose(sw.b[0], sd.b[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(sw.sigma2 * n, sd.sigma2 * total, rtol=1e-10)
        q = sw.sigma2 * n
        gap = n * (1 + np.log(2 * np.pi * q / n)) - total * (1 + np.log(2 * np.pi * q / total))
        fw, fd = objective(weighted.blocks, theta, False), objective(dup.blocks, theta, False)
        log_w = float(np.log(rows["w"].to_numpy()).sum())
        assert abs((fw - log_w) - fd - (gap - log_w)) < 1e-8 * abs(fd)


@pytest.mark.parametrize("formula", ["y ~ 1 + (1 | a/b/c)", "y ~ 1 + (1 | a) + (1 | c)"])
def test_scaling_the_weights_scales_sigma2_and_nothing_else(formula: str) -> None:
    rows = _nested_rows()
    base = pooljob.fit(formula, rows, weights="w")
    scaled = pooljob.fit(formula, rows.with_columns(w=pl.col("w") * 7.5), weights="w")
    # the same distribution of y: the same likelihood, σ² × 7.5, every other number kept
    assert abs(scaled.objective - base.objective) < 1e-9 * abs(base.objective)
    assert abs(scaled.sigma**2 / base.sigma**2 - 7.5) < 1e-6
    comp = base.components.join(scaled.components, on=["grouping", "term1"], how="left")
    for row in comp.filter(pl.col("grouping") != "Residual").iter_rows(named=True):
        assert abs(row["variance_right"] - row["variance"]) < 1e-5 * row["variance"]
    for table in ("estimates", "coefficients", "effects"):
        a, b = getattr(base, table), getattr(scaled, table)
        for col in ("estimate", "std_error", "cond_sd", "shrinkage"):
            if col in a.columns:
                np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=2e-5)


def test_zero_weights_drop_their_rows(tmp_path: Path) -> None:
    rows = _nested_rows()
    extra = rows.head(25).with_columns(w=pl.lit(0.0), y=pl.col("y") * 1000 + 12345)
    with_zero = pl.concat([rows, extra])
    kept = pooljob.fit("y ~ 1 + (1 | a/b/c)", rows, weights="w")
    fit = pooljob.fit("y ~ 1 + (1 | a/b/c)", with_zero, weights="w")
    assert fit.objective == pytest.approx(kept.objective, rel=1e-12)
    assert fit.estimates["n"].equals(kept.estimates["n"])
    for col in ("raw_mean", "estimate", "std_error", "shrinkage"):
        np.testing.assert_allclose(fit.estimates[col], kept.estimates[col], rtol=1e-9)
    assert fit.rows["read"] == rows.height + 25 and fit.rows["used"] == rows.height
    assert fit.rows["dropped"]["zero_weight"] == 25
    # through a job: the manifest says so
    with_zero.write_parquet(tmp_path / "rows.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "rows.parquet"\n[model]\nformula = "y ~ 1 + (1 | a/b/c)"\n'
        'weights = "w"\n[output]\npath = "out"\n'
    )
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 0
    import json

    manifest = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    assert manifest["weights"] == "w"
    assert manifest["rows"]["dropped"]["zero_weight"] == 25
    from tests.test_schema import validate_manifest

    validate_manifest(manifest)
    assert manifest["rows"]["read"] == rows.height + 25
    assert manifest["objective"] == pytest.approx(kept.objective, rel=1e-12)
    assert manifest["refresh"]["mode"] == "full"
    assert (tmp_path / "out" / "state").exists()  # the store keeps the weighted sums


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (pl.when(pl.col("row") < 3).then(None).otherwise(pl.col("w")), "3 rows with a null weight"),
        (pl.when(pl.col("row") < 2).then(-1.0).otherwise(pl.col("w")), "2 rows with a negative"),
        (
            pl.when(pl.col("row") < 1).then(float("nan")).otherwise(pl.col("w")),
            "1 row with a negative, NaN",
        ),
    ],
)
def test_bad_weights_are_a_data_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: pl.Expr, words: str
) -> None:
    rows = _nested_rows().with_row_index("row").with_columns(w=bad).drop("row")
    with pytest.raises(InputError, match=words):
        pooljob.fit("y ~ 1 + (1 | a/b/c)", rows, weights="w")
    rows.write_parquet(tmp_path / "rows.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "rows.parquet"\n[model]\nformula = "y ~ 1 + (1 | a/b/c)"\n'
        'weights = "w"\n[output]\npath = "out"\n'
    )
    capsys.readouterr()
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 3
    err = capsys.readouterr().err.strip()
    assert "weights column 'w'" in err and words in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "current").exists()


def test_weight_column_checks(tmp_path: Path) -> None:
    rows = _nested_rows().with_columns(label=pl.lit("x"))
    with pytest.raises(InputError, match="not in"):
        pooljob.fit("y ~ 1 + (1 | a)", rows, weights="nope")
    with pytest.raises(InputError, match="weights column 'label' has type VARCHAR"):
        pooljob.fit("y ~ 1 + (1 | a)", rows, weights="label")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('sampling_variance = "w"', "weights with sampling_variance"),
        ('rollup = { count = "n", sum = "s", sum_squares = "q" }', "weights with rollup"),
    ],
)
def test_weights_refused_where_not_fitted(tmp_path: Path, extra: str, words: str) -> None:
    from pooljob.job.config import load_config

    (tmp_path / "job.toml").write_text(
        f'[source]\npath = "x.parquet"\n[model]\nformula = "y ~ 1 + (1 | a)"\nweights = "w"\n'
        f'{extra}\n[output]\npath = "out"\n'
    )
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        load_config(tmp_path / "job.toml")
    with pytest.raises(ConfigError, match="weights with sampling_variance"):
        pooljob.fit(
            "y ~ 1 + (1 | a)", DATA / "weights_nested.csv", sampling_variance="w", weights="w"
        )


@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
def test_spark_engine_fits_the_same_weighted_sums(spark: Any, tmp_path: Path) -> None:
    """The weighted queries transpiled to Spark SQL: the same fit as DuckDB's (1e-9)."""
    from pooljob.scan.spark import open_spark_source
    from tests.test_spark import assert_same_fit

    rows = _nested_rows().with_columns(
        w=pl.when(pl.int_range(pl.len()) % 50 == 0).then(0.0).otherwise(pl.col("w"))
    )
    rows.write_parquet(tmp_path / "rows.parquet")
    formula = "y ~ 1 + (1 | a) + (1 | c)"
    duck = _fit(tmp_path / "rows.parquet", formula, weights="w")
    with open_spark_source(path=str(tmp_path / "rows.parquet")) as source:
        on_spark = fit_source(
            pooljob.model.formula.parse_formula(formula),
            source,
            "gaussian",
            "reml",
            0.95,
            weights="w",
        )
    assert on_spark.rows["dropped"]["zero_weight"] == 12
    assert_same_fit(duck, on_spark)


def test_validate_and_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(DATA / "weights_oneway.csv", tmp_path / "rows.csv")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "rows.csv"\n[model]\nformula = "y ~ x1 + (1 | g)"\n'
        'weights = "w"\n[output]\npath = "out"\n'
    )
    assert main(["validate", str(tmp_path / "job.toml")]) == 0
    assert "columns found: y, x1, g, w" in capsys.readouterr().out
    assert main(["explain", str(tmp_path / "job.toml")]) == 0
    sql = capsys.readouterr().out
    assert 'cast(source."w" as double)' in sql and "sum(w * v0 * v1)" in sql
    assert "where w > 0" in sql
    # the explained SQL runs as it is (from the config's folder: the view reads rows.csv)
    import os

    import duckdb

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        con = duckdb.connect()
        *setup, check, cells = [st.query for st in duckdb.extract_statements(sql)]
        for st in setup:
            con.execute(st)
        assert con.sql(check).fetchall() == [(0, 0, 0, 400)]
        assert (
            len(con.sql(cells).fetchall())
            == pl.read_csv(DATA / "weights_oneway.csv")["g"].n_unique()
        )
    finally:
        os.chdir(here)


def _job(folder: Path, formula: str, incremental: bool = True) -> Path:
    text = (
        f'[source]\npath = "data/*.parquet"\n[model]\nformula = "{formula}"\nweights = "w"\n'
        f'[output]\npath = "out"\nincremental = {"true" if incremental else "false"}\n'
    )
    (folder / "job.toml").write_text(text)
    return folder / "job.toml"


def _manifest(folder: Path) -> dict[str, Any]:
    import json

    return dict(json.loads((folder / "out" / "current" / "manifest.json").read_text()))


@pytest.mark.parametrize("formula", ["y ~ 1 + (1 | a/b/c)", "y ~ 1 + (1 | a) + (1 | c)"])
def test_incremental_refresh_keeps_the_weighted_sums(tmp_path: Path, formula: str) -> None:
    """Files added, changed (weights too) and deleted: every refresh equals a full scan."""
    rows = _nested_rows().with_row_index("i")
    data = tmp_path / "data"
    data.mkdir()
    parts = [rows.filter(pl.col("i") % 4 == k).drop("i") for k in range(4)]
    parts[1] = parts[1].with_columns(
        w=pl.when(pl.int_range(pl.len()) < 5).then(0.0).otherwise(pl.col("w"))
    )
    parts[2] = parts[2].with_columns(w=pl.lit(1.0))  # a file of weights all 1
    for k in range(3):
        parts[k].write_parquet(data / f"part-{k}.parquet")
    job = _job(tmp_path, formula)
    steps = [
        lambda: parts[3].write_parquet(data / "part-3.parquet"),  # new
        lambda: (
            parts[0].with_columns(w=pl.col("w") * 2.0).write_parquet(data / "part-0.parquet")
        ),  # changed weights
        lambda: (data / "part-2.parquet").unlink(),  # deleted
    ]
    for step in [None, *steps]:
        if step is not None:
            step()
        assert main(["--quiet", "run", str(job)]) == 0
        got = _manifest(tmp_path)
        assert got["refresh"]["mode"] == ("full" if step is None else "incremental")
        current = pl.concat([pl.read_parquet(f) for f in sorted(data.glob("*.parquet"))])
        want = pooljob.fit(formula, current, weights="w")
        assert abs(got["objective"] - want.objective) < 1e-9 * abs(want.objective)
        assert got["rows"] == want.rows
        published = pl.read_parquet(tmp_path / "out" / "current" / "estimates.parquet")
        for col in ("estimate", "std_error", "raw_mean"):
            np.testing.assert_allclose(published[col], want.estimates[col], rtol=1e-7)
        assert published["n"].equals(want.estimates["n"])
        scanned = {None: 3, steps[0]: 1, steps[1]: 1, steps[2]: 0}[step]
        assert got["refresh"]["files_scanned"] == scanned
    assert got["rows"]["dropped"]["zero_weight"] == 5  # part-1's, merged from the store


def test_a_store_without_weights_does_not_serve_a_weighted_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _nested_rows().write_parquet(data / "part-0.parquet")
    job = _job(tmp_path, "y ~ 1 + (1 | a/b/c)")
    job.write_text(job.read_text().replace('weights = "w"\n', ""))
    assert main(["--quiet", "run", str(job)]) == 0
    assert _manifest(tmp_path)["weights"] is None
    _job(tmp_path, "y ~ 1 + (1 | a/b/c)")
    assert main(["--quiet", "run", str(job)]) == 0
    refresh = _manifest(tmp_path)["refresh"]
    assert refresh["mode"] == "full" and "[model] weights" in refresh["reason"]
    assert main(["--quiet", "run", str(job)]) == 0
    assert _manifest(tmp_path)["refresh"]["mode"] == "incremental"


def test_shifted_response_and_covariate_change_nothing() -> None:
    """The weighted sums are raw sums: a weighted scan centres at 100 spreads."""
    rows = pl.read_csv(DATA / "weights_oneway.csv")
    formula = "y ~ x1 + cat + (1 | g)"
    base = pooljob.fit(formula, rows, weights="w")
    moved = pooljob.fit(
        formula, rows.with_columns(y=pl.col("y") + 1e4, x1=pl.col("x1") + 1e3), weights="w"
    )
    assert abs(moved.objective - base.objective) < 1e-11 * abs(base.objective)
    se = base.estimates["std_error"].to_numpy()
    diff = moved.estimates["estimate"].to_numpy() - 1e4 - base.estimates["estimate"].to_numpy()
    assert np.abs(diff / se).max() < 1e-8
    np.testing.assert_allclose(moved.estimates["std_error"], se, rtol=1e-8)
