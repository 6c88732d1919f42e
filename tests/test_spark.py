"""The Spark engine against the DuckDB engine on the same files.

Spark runs in local mode (``local[2]``), one session for the module.  The
statistics query is the DuckDB one transpiled by sqlglot; the fits on the
driver must then equal DuckDB's to 1e-9 relative: a nested model (with null
keys, null, NaN and infinite responses, and a response near 1e9, so the
rescans for non-finite values and for centring run on Spark too) and a crossed
model with a covariate far from 0 and a categorical fixed effect.  Tests that
need Spark are skipped, with the reason, where Java or pyspark is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pooljob.errors import ConfigError, InputError
from pooljob.job.config import load_config
from pooljob.model.formula import parse_formula
from pooljob.outputs.tables import FitResult
from pooljob.pipeline import fit_source
from pooljob.scan.source import open_config_source

RTOL = 1e-9

pytestmark = pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas:FutureWarning"
)


def _missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None or importlib.util.find_spec("sqlglot") is None:
        return "pyspark or sqlglot is not installed (pip install 'pooljob[spark]')"
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and Path(java_home, "bin", "java").exists()):
        return "no Java runtime (java not on PATH, no JAVA_HOME): Spark needs one"
    return None


# --- data ---------------------------------------------------------------------------


def nested_rows(seed: int = 3) -> pl.DataFrame:
    """Three levels, uneven groups, response near 1e9, and rows lme4 would drop."""
    rng = np.random.default_rng(seed)
    n = 3000
    state = rng.choice(["DC", "MD", "VA", "WV", "PA"], n, p=[0.02, 0.3, 0.3, 0.18, 0.2])
    county = rng.integers(0, 9, n)
    zipc = rng.integers(0, 7, n)
    s_eff = {s: e for s, e in zip(["DC", "MD", "VA", "WV", "PA"], rng.normal(0, 3, 5), strict=True)}
    c_eff = rng.normal(0, 2, (5, 9))
    z_eff = rng.normal(0, 1, (5, 9, 7))
    si = np.searchsorted(np.array(["DC", "MD", "PA", "VA", "WV"]), state)
    y = (
        1e9
        + np.array([s_eff[s] for s in state])
        + c_eff[si, county]
        + z_eff[si, county, zipc]
        + rng.normal(0, 4, n)
    )
    frame = pl.DataFrame({"state": state, "county": county, "zip": zipc, "y": y})
    dirty = pl.DataFrame(
        {
            "state": ["MD", "VA", "VA", "PA", "WV"],
            "county": [None, 1, 2, 3, 4],
            "zip": [1, 1, 2, 3, 4],
            "y": [1e9, None, float("nan"), float("inf"), float("-inf")],
        },
        schema=frame.schema,
    )
    return pl.concat([frame, dirty])


def crossed_rows(seed: int = 4) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = 2500
    a = rng.integers(0, 25, n)
    b = rng.integers(0, 15, n)
    x = 1e6 + rng.normal(0, 1, n)  # far from 0: read again centred
    urban = rng.choice(["N", "Y"], n)
    y = (
        3.0
        + 2.0 * (x - 1e6)
        + np.where(urban == "Y", 1.5, 0.0)
        + rng.normal(0, 1.5, 25)[a]
        + rng.normal(0, 0.7, 15)[b]
        + rng.normal(0, 2, n)
    )
    return pl.DataFrame(
        {"a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b], "x": x, "urban": urban, "y": y}
    )


def count_rows(seed: int = 6) -> pl.DataFrame:
    """Binomial and Poisson columns: per-row counts, 0/1 and boolean, exposure, dirty rows."""
    rng = np.random.default_rng(seed)
    n = 2000
    herd = rng.integers(0, 30, n)
    period = rng.integers(1, 5, n)
    urban = rng.random(n) < 0.4
    eta = -1.0 + 0.3 * period + np.where(urban, 0.5, 0.0) + rng.normal(0, 0.8, 30)[herd]
    size = rng.integers(1, 60, n)
    incidence = rng.binomial(size, 1 / (1 + np.exp(-eta)))
    vote = rng.random(n) < 1 / (1 + np.exp(-eta))
    exposure = rng.uniform(0.2, 30.0, n)  # varies within cells: a Poisson offset may
    claims = rng.poisson(exposure * np.exp(eta - 1.0))
    frame = pl.DataFrame(
        {
            "region": [f"r{h % 3}" for h in herd],
            "herd": [f"h{h}" for h in herd],
            "period": period,
            "urban": urban,
            "size": size,
            "incidence": incidence,
            "vote": vote,
            "exposure": exposure,
            "claims": claims,
        }
    )
    dirty = pl.DataFrame(
        {
            "region": ["r0", "r1", "r2"],
            "herd": [None, "h1", "h2"],
            "period": [1, 2, 3],
            "urban": [True, None, False],
            "size": [5, 4, None],
            "incidence": [1, 2, 3],
            "vote": [True, False, None],
            "exposure": [1.0, -1.0, 2.0],
            "claims": [1, 2, None],
        },
        schema=frame.schema,
    )
    return pl.concat([frame, dirty])


def write_hive(frame: pl.DataFrame, root: Path, by: str) -> None:
    for (value,), part in frame.group_by(by):
        folder = root / f"{by}={value}"
        folder.mkdir(parents=True)
        part.drop(by).write_parquet(folder / "part-0.parquet")


# --- comparison ---------------------------------------------------------------------


def assert_same_fit(
    duck: FitResult, spark_fit: FitResult, loose: frozenset[str] = frozenset()
) -> None:
    """Same rows, groups and keys; every number within RTOL (relative), ``loose`` within 1e-6."""
    assert spark_fit.rows == duck.rows
    assert spark_fit.groups == duck.groups
    assert spark_fit.nobs == duck.nobs
    assert spark_fit.objective == pytest.approx(duck.objective, rel=RTOL)
    assert spark_fit.loglik == pytest.approx(duck.loglik, rel=RTOL)
    for name in ("components", "coefficients", "estimates", "effects"):
        a, b = getattr(duck, name), getattr(spark_fit, name)
        assert a.columns == b.columns, name
        numbers = [c for c, t in a.schema.items() if t == pl.Float64]
        keys = [c for c in a.columns if c not in numbers]
        a, b = a.sort(keys, nulls_last=True), b.sort(keys, nulls_last=True)
        assert_frame_equal(a.select(keys), b.select(keys))
        for column in numbers:
            want, got = a[column].to_numpy(), b[column].to_numpy()
            scale = float(np.nanmax(np.abs(want))) if len(want) else 0.0
            rtol = 1e-6 if f"{name}.{column}" in loose else RTOL
            np.testing.assert_allclose(
                got, want, rtol=rtol, atol=1e-12 * scale, err_msg=f"{name}.{column}"
            )


def fit_both(
    pattern: str, formula: str, family: str = "gaussian"
) -> tuple[FitResult, FitResult, list[str]]:
    from pooljob.scan.spark import SparkSource, open_spark_source

    parsed = parse_formula(formula)
    method = "reml" if family == "gaussian" else "laplace"
    with open_config_source(path=pattern) as source:
        duck = fit_source(parsed, source, family, method, 0.95)
    queries: list[str] = []
    original = SparkSource.arrow

    def spy(self: SparkSource, sql: str, params: dict[str, float] | None = None) -> Any:
        queries.append(sql)
        return original(self, sql, params)

    SparkSource.arrow = spy  # type: ignore[method-assign]
    try:
        with open_spark_source(path=pattern) as source:
            spark_fit = fit_source(parsed, source, family, method, 0.95)
    finally:
        SparkSource.arrow = original  # type: ignore[method-assign]
    return duck, spark_fit, queries


# --- tests with Spark ---------------------------------------------------------------


def test_nested_model_equals_duckdb(spark: Any, tmp_path: Path) -> None:
    write_hive(nested_rows(), tmp_path / "data", "state")
    duck, spark_fit, queries = fit_both(
        str(tmp_path / "data" / "**" / "*.parquet"), "y ~ 1 + (1 | state/county/zip)"
    )
    assert spark_fit.nested and duck.nested
    assert duck.rows["dropped"] == {
        "null_group_key": 1,
        "null_response": 1,
        "nonfinite_response": 3,
        "unusable_covariate": 0,
    }
    assert len(queries) == 3  # first scan, finite rows only, centred at ~1e9
    assert_same_fit(duck, spark_fit)


def test_crossed_model_with_covariate_equals_duckdb(spark: Any, tmp_path: Path) -> None:
    path = tmp_path / "crossed.csv"
    crossed_rows().write_csv(path)
    duck, spark_fit, queries = fit_both(str(path), "y ~ x + urban + (1 | a) + (1 | b)")
    assert not spark_fit.nested
    assert len(queries) == 2  # the covariate near 1e6 is read again centred
    assert set(spark_fit.coefficients["term"]) == {"(Intercept)", "x", "urbanY"}
    assert_same_fit(duck, spark_fit)


COUNT_MODELS = [
    ("cbind(incidence, size - incidence) ~ factor(period) + (1 | herd)", "binomial"),
    ("vote ~ urban + factor(period) + (1 | herd) + (1 | region)", "binomial"),
    ("claims ~ factor(period) + offset(log(exposure)) + (1 | herd)", "poisson"),
]


@pytest.mark.parametrize(("formula", "family"), COUNT_MODELS)
def test_count_model_equals_duckdb(spark: Any, tmp_path: Path, formula: str, family: str) -> None:
    write_hive(count_rows(), tmp_path / "data", "region")
    duck, spark_fit, queries = fit_both(
        str(tmp_path / "data" / "**" / "*.parquet"), formula, family
    )
    assert len(queries) == 1  # one count scan
    assert sum(duck.rows["dropped"].values()) > 0
    # Estimates and loglik (its constants included) to 1e-9.  A Poisson exposure sums
    # exp(offset), rounded differently by DuckDB's fsum and Spark's sum (1e-16); the
    # coefficients' standard errors come from a Hessian by differences of the gradient,
    # which turns that into ~1e-8 (docs/rates.md: they are good to ~1e-6).
    loose = frozenset({"coefficients.std_error"} if family == "poisson" else ())
    assert_same_fit(duck, spark_fit, loose)


def test_lgamma_on_spark_is_exact_to_rounding(spark: Any) -> None:
    import math

    from pooljob.scan.spark_sql import lgamma_sql

    # every integer where the series' shift matters, then a spread up to 1e12
    xs = np.concatenate([np.arange(1.0, 301.0), np.round(np.logspace(2.5, 12, 300))])
    xs = np.concatenate([xs, [999_999.0, 1e6, 1e6 + 1, 2.5, 10.5]])
    frame = spark.createDataFrame([(float(x),) for x in xs], "x double")
    frame.createOrReplaceTempView("lgamma_values")
    rows = spark.sql(f"select x, {lgamma_sql('x')} as g from lgamma_values").collect()
    got = np.array([r["g"] for r in rows])
    want = np.array([math.lgamma(r["x"]) for r in rows])
    assert np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))) < 4e-15


def _job(folder: Path, name: str, engine: str = "") -> Path:
    cfg = folder / f"{name}.toml"
    cfg.write_text(
        '[source]\npath = "data/**/*.parquet"\nwhere = "zip <> 3"\n'
        '[model]\nformula = "y ~ 1 + (1 | state/county)"\n'
        f'[output]\npath = "out-{name}"\n' + engine
    )
    return cfg


def test_job_with_spark_engine_publishes_what_duckdb_does(spark: Any, tmp_path: Path) -> None:
    from pooljob.job.run import run

    write_hive(nested_rows(5), tmp_path / "data", "state")
    duck_cfg = _job(tmp_path, "duckdb")
    spark_cfg = _job(
        tmp_path,
        "spark",
        '[engine]\nkind = "spark"\nmaster = "local[2]"\n'
        "[engine.conf]\nspark.sql.shuffle.partitions = 4\n",
    )
    duck = run(load_config(duck_cfg))
    on_spark = run(load_config(spark_cfg))
    assert spark.sparkContext._jsc is not None  # the module's session was used, not stopped
    assert_same_fit(duck.result, on_spark.result)
    manifest = json.loads((on_spark.run_dir / "manifest.json").read_text())
    assert manifest["config"]["engine"]["kind"] == "spark"
    assert manifest["rows"]["read"] < nested_rows(5).height  # the where filter ran on Spark
    published = pl.read_parquet(tmp_path / "out-spark" / "current" / "estimates.parquet")
    assert published.height == on_spark.result.estimates.height


def test_count_job_with_spark_engine_publishes_what_duckdb_does(
    spark: Any, tmp_path: Path, capsys: Any
) -> None:
    from pooljob.job.cli import main
    from pooljob.job.run import run

    write_hive(count_rows(7), tmp_path / "data", "region")
    configs = {}
    for name, engine in (("duckdb", ""), ("spark", '[engine]\nkind = "spark"\n')):
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(
            '[source]\npath = "data/**/*.parquet"\n'
            '[model]\nformula = "claims ~ urban + offset(log(exposure)) + (1 | herd)"\n'
            f'family = "poisson"\n[output]\npath = "out-{name}"\n' + engine
        )
    duck = run(load_config(configs["duckdb"]))
    on_spark = run(load_config(configs["spark"]))
    assert_same_fit(duck.result, on_spark.result, frozenset({"coefficients.std_error"}))
    manifest = json.loads((on_spark.run_dir / "manifest.json").read_text())
    assert manifest["config"]["engine"]["kind"] == "spark"
    assert manifest["refresh"]["mode"] == "full"
    assert main(["explain", str(configs["spark"])]) == 0
    text = capsys.readouterr().out
    assert "-- engine: spark" in text and "count_stats.sql" in text
    query = text[text.index("WITH") :]
    assert "LGAMMA" not in query and "FSUM" not in query and "LN(" in query


def test_explain_and_validate_on_spark(spark: Any, tmp_path: Path, capsys: Any) -> None:
    from pooljob.job.cli import main

    write_hive(nested_rows(), tmp_path / "data", "state")
    cfg = _job(tmp_path, "spark", '[engine]\nkind = "spark"\n')
    assert main(["explain", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "-- engine: spark" in text and "zip <> 3" in text
    assert "VAR_POP(v0)" in text and ":s0" in text and "`county`" in text and "$" not in text
    assert main(["validate", str(cfg)]) == 0
    assert "is valid" in capsys.readouterr().out
    assert not (tmp_path / "out-spark").exists()


def test_bad_where_is_one_line_input_error(spark: Any, tmp_path: Path) -> None:
    from pooljob.scan.spark import open_spark_source

    write_hive(nested_rows(), tmp_path / "data", "state")
    pattern = str(tmp_path / "data" / "**" / "*.parquet")
    with (
        pytest.raises(InputError, match=r"not a valid Spark SQL filter") as info,
        open_spark_source(path=pattern, where="no_such_column > 1"),
    ):
        pass
    assert "\n" not in str(info.value)
    with (
        pytest.raises(InputError, match="matches no file"),
        open_spark_source(path=str(tmp_path / "nothing" / "*.parquet")),
    ):
        pass


# --- without Spark: the transpiled SQL and the config -------------------------------


def test_statistics_sql_transpiles_to_spark_with_parameters() -> None:
    pytest.importorskip("sqlglot")
    from pooljob.model.cells import NumericVariable
    from pooljob.scan.cell_moments import cell_stats_sql
    from pooljob.scan.spark_sql import duckdb_type, spark_sql

    duck = cell_stats_sql(
        ("state", 'odd"na`me'), (NumericVariable(("y",)), NumericVariable(("x", "z"))), True, True
    )
    text = spark_sql(duck)
    assert '`odd"na``me`' in text  # quoted for Spark, the backtick doubled
    assert ":s0" in text and ":s1" in text and "$" not in text
    assert "isfinite" not in text.lower() and "ISNAN(v0)" in text
    assert "VAR_POP(v0)" in text and "COVAR_POP(v0, v1)" in text
    no_keys = spark_sql(cell_stats_sql((), (NumericVariable(("y",)),), False))
    assert "GROUP BY" not in no_keys
    assert duckdb_type("bigint") == "BIGINT" and duckdb_type("decimal(10,2)") == "DECIMAL(10,2)"
    assert duckdb_type("array<string>") == "VARCHAR[]"


def _config(tmp_path: Path, source: str, engine: str) -> Path:
    cfg = tmp_path / "job.toml"
    cfg.write_text(
        f'[source]\n{source}\n[model]\nformula = "y ~ 1 + (1 | g)"\n'
        f'[output]\npath = "out"\n[engine]\n{engine}\n'
    )
    return cfg


@pytest.mark.parametrize(
    ("source", "engine", "message"),
    [
        ('database = "w.duckdb"\ntable = "t"', 'kind = "spark"', r"database cannot be read by"),
        ('query = "select 1"', 'kind = "spark"', r"query cannot be read by"),
        ('path = "d/*.parquet"', 'kind = "spark"\nthreads = 2', r"threads set DuckDB"),
        ('path = "d/*.parquet"', 'master = "local[2]"', r"master: Spark settings"),
        ('path = "d/*.parquet"', 'kind = "flink"', r"kind = 'flink' is not supported"),
        ('path = "d/*.parquet"', 'kind = "spark"\nconf = { a = [1] }', r"conf a = \[1\]"),
    ],
)
def test_engine_config_errors(tmp_path: Path, source: str, engine: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(_config(tmp_path, source, engine))
    assert "\n" not in str(info.value)


def test_spark_conf_tables_are_joined_with_dots(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        'path = "d/*.parquet"',
        'kind = "spark"\nmaster = "yarn"\n[engine.conf]\n"spark.executor.memory" = "8g"\n'
        "spark.sql.shuffle.partitions = 400\nspark.sql.adaptive.enabled = true",
    )
    engine = load_config(cfg).engine
    assert engine.kind == "spark" and engine.master == "yarn"
    assert engine.conf == {
        "spark.executor.memory": "8g",
        "spark.sql.shuffle.partitions": "400",
        "spark.sql.adaptive.enabled": "true",
    }
