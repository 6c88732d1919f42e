"""No name a user's column can have changes a fit (issue 11 §1).

The statistics queries read the source's columns in their first step only,
qualified, and rename them there to names of pooljob's own; every later
step, the results, the statistics store of incremental refresh and the
frames Python joins use only pooljob's names.  These tests rename the model
columns of a data set to names pooljob uses (or used) for its own columns
(``v0``, ``v1``, ``y``, ``t``, ``o``, ``n``, ``drop_code``,
``__pooljob_file``, ``k0`` …), to names with spaces, quotes, backticks and
unicode, to SQL keywords and to a different case, in every role (response,
covariate, offset, grouping, categorical variable), and check that the fit is
the fit with plain names: the nested Gaussian solver, the blocked one, the
count (binomial) path, an incremental refresh, and Spark.  Then the lme4
references: a grouping named ``v1``, and cbpp with ``herd`` renamed ``o``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import pooljob
from pooljob.api import fit_source
from pooljob.job.config import load_config
from pooljob.job.run import run
from pooljob.model.count_design import prepare_counts
from pooljob.model.formula import display_name, parse_formula
from pooljob.model.general import fit_general, prepare
from pooljob.model.glmm_fit import fit_counts
from pooljob.model.nested_fit import fit_nested
from pooljob.outputs.tables import FitResult
from pooljob.scan.cell_counts import scan_counts
from pooljob.scan.cell_moments import file_column, scan_cells
from pooljob.scan.schema import check_schema
from pooljob.scan.source import inline_parameters, open_config_source, open_data
from pooljob.scan.tree import nested_statistics
from tests.conftest import DATA

#: Names pooljob gives (or gave) its own columns and parameters, and names
#: that SQL, R or a file system make awkward.  ``y`` and ``Y`` are far apart
#: in the list: DuckDB cannot hold both in one table (it reads the second
#: as ``y_1``), so no case below has both.
NAMES = [
    "v0",
    "v1",
    "y",
    "t",
    "o",
    "n",
    "drop_code",
    "__pooljob_file",
    "k0",
    "k1",
    "c0",
    "n_rows",
    "n_0",
    "mean_0",
    "source",
    "file",
    "Y",
    "__n",
    "__file_index",
    "__cell",
    "__all",
    "$s0",
    "my col",
    'say "hi"',
    "back`tick",
    "größe 州",
    "select",
    "group",
]

#: The same statistics: equal but for rounding.  Not bits: DuckDB's parallel
#: aggregation (and so the order of the cells) varies from run to run, the
#: same names or not, which moves the fit by ~1e-13.
RTOL = 1e-9
ATOL = 1e-11


@dataclass(frozen=True)
class Model:
    """A model on a data set whose model columns have plain names (the roles)."""

    name: str
    data: pl.DataFrame
    formula: str  # with {role} fields
    family: str
    keys: tuple[str, ...]  # the roles that are key columns (grouping, categorical)

    def text(self, names: dict[str, str]) -> str:
        return self.formula.format(**{role: display_name(c) for role, c in names.items()})

    def frame(self, names: dict[str, str]) -> pl.DataFrame:
        return self.data.rename(names)


def _nested() -> Model:
    data = pl.read_csv(DATA / "Pastes.csv").select(resp="strength", ga="batch", gb="cask")
    return Model("nested", data, "{resp} ~ 1 + (1 | {ga}/{gb})", "gaussian", ("ga", "gb"))


def _blocked() -> Model:
    data = pl.read_csv(DATA / "unequal_widths.csv").select(
        resp="y", covar="x1", shift="x2", ga="v1", gb="v2"
    )
    formula = "{resp} ~ {covar} + offset({shift}) + (1 | {ga}) + (1 | {gb})"
    return Model("blocked", data, formula, "gaussian", ("ga", "gb"))


def _counts() -> Model:
    data = pl.read_csv(
        DATA / "cbpp.csv", schema_overrides={"herd": pl.String, "period": pl.String}
    ).select(
        succ="incidence",
        trials="size",
        cat="period",
        ga="herd",
        shift=pl.col("period").cast(pl.Float64) / 10,  # constant within a cell
    )
    formula = "cbind({succ}, {trials} - {succ}) ~ {cat} + offset({shift}) + (1 | {ga})"
    return Model("counts", data, formula, "binomial", ("cat", "ga"))


MODELS = {m.name: m for m in (_nested(), _blocked(), _counts())}


def case_names(model: Model, k: int) -> dict[str, str]:
    """Case ``k``: the roles named by consecutive entries of NAMES from ``k`` (cyclically).

    Over the cases every name takes every role once.
    """
    roles = model.data.columns
    return {role: NAMES[(k + i) % len(NAMES)] for i, role in enumerate(roles)}


_PLAIN: dict[str, FitResult] = {}


def plain_fit(model: Model) -> FitResult:
    if model.name not in _PLAIN:
        names = {c: c for c in model.data.columns}
        _PLAIN[model.name] = pooljob.fit(model.text(names), model.data, family=model.family)  # type: ignore[arg-type]
    return _PLAIN[model.name]


def relabel(text: str | None, names: dict[str, str]) -> str | None:
    """A label of the plain fit (``gb:ga``, ``cat2``) with the columns renamed as R prints them."""
    if text is None:
        return None
    pattern = r"(?<![\w`])(" + "|".join(map(re.escape, names)) + r")(?![A-Za-z_])"
    return re.sub(pattern, lambda m: display_name(names[m.group(1)]), text)


def renamed(frame: pl.DataFrame, names: dict[str, str]) -> pl.DataFrame:
    """An output table of the plain fit as the renamed fit must give it."""
    labels = [c for c in ("grouping", "term", "term1", "term2") if c in frame.columns]
    frame = frame.with_columns(
        pl.Series(c, [relabel(v, names) for v in frame[c].to_list()], dtype=pl.String)
        for c in labels
    )
    return frame.rename({c: names[c] for c in frame.columns if c in names})


def assert_same_fit(got: FitResult, want: FitResult, names: dict[str, str]) -> None:
    """The same numbers, rows and groups; keys under the new names, with their types."""
    assert got.objective == pytest.approx(want.objective, rel=RTOL)
    assert got.loglik == pytest.approx(want.loglik, rel=RTOL)
    assert got.rows == want.rows
    assert list(got.groups.values()) == list(want.groups.values())
    for table in ("estimates", "effects", "coefficients", "components"):
        assert_frame_equal(
            getattr(got, table), renamed(getattr(want, table), names), rel_tol=RTOL, abs_tol=ATOL
        )


def core_fit(model: Model, names: dict[str, str]) -> tuple[float, np.ndarray, pl.DataFrame]:
    """Objective, (θ, β) and the cells' keys, from the scan and the solver alone.

    For key columns named like an output table's columns (``n``): those
    tables are not this change's (a clash there is reported elsewhere), the
    scan and the fit are.
    """
    formula = parse_formula(model.text(names))
    with open_data(model.frame(names)) as source:
        spec = check_schema(source, formula, model.family)
        if model.family != "gaussian":
            counts = scan_counts(source, formula, model.family, spec)
            prep = prepare_counts(formula, model.family, counts, spec.numeric, spec.categorical)
            fit = fit_counts(prep.model)
            return fit.deviance, np.r_[fit.theta, fit.beta], counts.keys
        cells = scan_cells(source, spec.keys, spec.variables)
    if formula.nested_intercepts:
        gs = nested_statistics(cells, formula, "data")
        nested = fit_nested(gs.stats, "reml")
        return nested.objective, np.r_[nested.theta, nested.intercept], gs.keys
    general = fit_general(prepare(formula, cells, spec.numeric, spec.categorical), True)
    return general.objective, np.r_[general.theta, general.beta], cells.keys


def _output_clash(model: Model, names: dict[str, str]) -> bool:
    """Whether a key column is named like a column of the output tables (``n``)."""
    plain = plain_fit(model)
    outputs = {
        c
        for t in (plain.estimates, plain.effects, plain.coefficients, plain.components)
        for c in t.columns
    } - set(model.keys)
    return any(names[role] in outputs for role in model.keys)


@pytest.mark.parametrize("k", range(len(NAMES)))
@pytest.mark.parametrize("which", list(MODELS))
def test_any_column_name_gives_the_same_fit(which: str, k: int) -> None:
    model = MODELS[which]
    names = case_names(model, k)
    want = plain_fit(model)
    if _output_clash(model, names):
        plain = {c: c for c in model.data.columns}
        objective, estimates, keys = core_fit(model, names)
        want_objective, want_estimates, want_keys = core_fit(model, plain)
        assert objective == pytest.approx(want_objective, rel=RTOL)
        np.testing.assert_allclose(estimates, want_estimates, rtol=RTOL, atol=ATOL)
        want_keys = want_keys.rename({c: names[c] for c in want_keys.columns})
        assert_frame_equal(keys.sort(keys.columns), want_keys.sort(want_keys.columns))
        return
    got = pooljob.fit(model.text(names), model.frame(names), family=model.family)  # type: ignore[arg-type]
    assert_same_fit(got, want, names)


def test_keys_come_back_with_their_names_and_types() -> None:
    """Integer, date and boolean keys named like pooljob's columns keep name and type."""
    rng = np.random.default_rng(7)
    n = 400
    frame = pl.DataFrame(
        {
            "k1": rng.integers(0, 6, n),
            "v0": pl.date_range(pl.date(2024, 1, 1), pl.date(2024, 1, 5), eager=True).sample(
                n, with_replacement=True, seed=1
            ),
            "k0": rng.integers(0, 2, n) == 1,
            "y": rng.normal(0, 1, n),
        }
    )
    formula = parse_formula("y ~ factor(k0) + (1 | k1) + (1 | v0)")
    with open_data(frame) as source:
        spec = check_schema(source, formula)
        cells = scan_cells(source, spec.keys, spec.variables)
    assert cells.keys.schema == pl.Schema({"k1": pl.Int64, "v0": pl.Date, "k0": pl.Boolean})
    expected = frame.group_by(["k1", "v0", "k0"]).len().sort(["k1", "v0", "k0"])
    order = cells.keys.with_row_index("i").sort(["k1", "v0", "k0"])
    assert_frame_equal(order.drop("i"), expected.drop("len"))
    np.testing.assert_array_equal(cells.n[order["i"].to_numpy()], expected["len"].to_numpy())


# --- the statistics SQL names user columns in its first step only ------------------


_INTERNAL = re.compile(r"^(k\d+|v\d+|c\d+|m\d+|y|t|o|w|s|q|ys|yq|d|file|drop_code)$")


def _check_names(sql: str, dialect: str = "duckdb") -> None:
    """Source columns are read qualified, in the first CTE only; all else is pooljob's."""
    sqlglot = pytest.importorskip("sqlglot")
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read=dialect)
    first = tree.find(exp.CTE)
    assert first is not None and first.alias == "model_rows"
    for column in tree.find_all(exp.Column):
        if column.find_ancestor(exp.CTE) is first:
            assert column.table == "source", column.sql()
        else:
            assert not column.table and _INTERNAL.match(column.name), column.sql()


def test_statistics_sql_reads_user_columns_only_in_its_first_step() -> None:
    from pooljob.pipeline import count_sql
    from pooljob.scan.cell_counts import count_stats_sql, covariate_indices
    from pooljob.scan.cell_moments import cell_stats_sql

    columns = {
        "my col": "DOUBLE",
        "select": "VARCHAR",
        'say "hi"': "VARCHAR",
        "v1": "VARCHAR",
        "o": "DOUBLE",
        "y": "DOUBLE",
        "t": "DOUBLE",
    }
    formula = parse_formula('`my col` ~ o + (1 | `select`) + (1 | `say "hi"`/v1)')
    spec = check_schema(_Schema(columns), formula)
    for finite_only in (False, True):
        _check_names(cell_stats_sql(spec.keys, spec.variables, finite_only, True))
        by = file_column(columns)
        _check_names(cell_stats_sql(spec.keys, spec.variables, finite_only, True, by=by))
    counts = parse_formula("cbind(y, t - y) ~ `select` + offset(o) + (1 | v1)")
    _check_names(count_sql(counts, "binomial", check_schema(_Schema(columns), counts, "binomial")))
    from pooljob.model.options import Rollup
    from pooljob.scan.rollup import check_rollup_schema, rollup_stats_sql

    roll = Rollup("y", "t", 'say "hi"')
    rollup_columns = {**columns, 'say "hi"': "DOUBLE"}
    rollup_formula = parse_formula("`my col` ~ o + `select` + (1 | v1)")
    spec = check_rollup_schema(_Schema(rollup_columns), rollup_formula, "gaussian", roll)
    _check_names(rollup_stats_sql(spec.keys, spec.variables, roll))
    # the per-file count query of incremental refresh, with a covariate c0, and on Spark
    poisson = parse_formula("y ~ `my col` + offset(log(t)) + (1 | `select`)")
    spec = check_schema(_Schema(columns), poisson, "poisson")
    covariates = [spec.variables[k] for k in covariate_indices(spec)]
    by = file_column(columns)
    per_file = count_stats_sql(poisson, "poisson", spec.keys, covariates, by=by)
    assert "c0" in per_file and "file_count_stats" in per_file
    _check_names(per_file)
    pytest.importorskip("sqlglot")
    from pooljob.scan.spark_sql import spark_sql

    spec = check_schema(_Schema(columns), counts, "binomial")
    _check_names(spark_sql(count_sql(counts, "binomial", spec)), dialect="spark")
    # covariates that may vary within cells, and a binomial offset, are part of the
    # cell: grouped by as c<k> and o, whatever the user's columns are called (here
    # "c0" and "o" themselves), in one scan, per file, as the bounded scan runs it
    # (with its limit) and on Spark
    rows_formula = parse_formula("y ~ `my col` + c0 + offset(o) + (1 | `select`)")
    rows_columns = {**columns, "c0": "DOUBLE"}
    spec = check_schema(_Schema(rows_columns), rows_formula, "binomial")
    covariates = [spec.variables[k] for k in covariate_indices(spec)]
    one = count_stats_sql(rows_formula, "binomial", spec.keys, covariates)
    assert "group by k0, c0, c1, o" in one
    _check_names(one)
    _check_names(f"{one}\nlimit 20000001")
    per_file = count_stats_sql(rows_formula, "binomial", spec.keys, covariates, by=by)
    assert "group by file, k0, c0, c1, o" in per_file
    _check_names(per_file)
    _check_names(spark_sql(f"{one}\nlimit 20000001"), dialect="spark")


@dataclass
class _Schema:
    """A source's schema alone, for building queries without data."""

    columns: dict[str, str]
    description: str = "schema"

    def require(self, names: tuple[str, ...]) -> None:
        assert all(n in self.columns for n in names)

    def arrow(self, sql: str, params: dict[str, float] | None = None) -> Any:
        raise AssertionError("no scan")


def test_the_file_column_is_named_apart_from_every_source_column() -> None:
    assert file_column(["a", "b"]) == "__pooljob_file"
    assert file_column(["__pooljob_file"]) == "__pooljob_file_1"
    assert file_column(["__POOLJOB_FILE", "__pooljob_file_1"]) == "__pooljob_file_2"


def test_parameters_are_inlined_as_tokens_only() -> None:
    sql = "select \"a$s0\" - $s0, $s1, $s10, '$s1' -- it's $s0\n, $s1 as v"
    got = inline_parameters(sql, {"s0": 1.5, "s1": 2.0, "s10": 3.0})
    assert got == (
        "select \"a$s0\" - cast('1.5' as double), cast('2.0' as double), "
        "cast('3.0' as double), '$s1' -- it's $s0\n, cast('2.0' as double) as v"
    )


def test_duckdb_relation_with_parameter_like_names() -> None:
    """A relation source inlines the centring shifts: a column named ``$s0`` stays a column."""
    frame = pl.read_csv(DATA / "unequal_widths.csv").select(
        (pl.col("y") * 1e6 + 1e12).alias("a$s0"),  # far from 0: the shifts are bound
        pl.col("x1").alias("$s1"),
        pl.col("v1").alias("g"),
    )
    formula = "`a$s0` ~ `$s1` + (1 | g)"
    want = pooljob.fit(formula, frame)
    con = duckdb.connect()
    try:
        con.register("frame", frame)
        got = pooljob.fit(formula, con.sql("select * from frame"))
    finally:
        con.close()
    assert got.objective == pytest.approx(want.objective, rel=RTOL)
    assert_frame_equal(got.coefficients, want.coefficients, rel_tol=RTOL, abs_tol=ATOL)


# --- incremental refresh ---------------------------------------------------------


_REFRESH_NAMES = [
    {"resp": "n", "covar": "__mean_0", "ga": "__pooljob_file", "gb": "file"},
    {"resp": "y", "covar": "v0", "ga": "__file_index", "gb": "k0"},
    {"resp": "my col", "covar": "select", "ga": 'say "hi"', "gb": "größe 州"},
    {"resp": "Y", "covar": "__n", "ga": "back`tick", "gb": "__cell"},
]
_REFRESH = "{resp} ~ {covar} + (1 | {ga}) + (1 | {gb})"


def _refresh_rows(seed: int, n: int = 150) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ga, gb, covar = rng.integers(0, 8, n), rng.integers(0, 5, n), rng.normal(0, 1, n)
    effects_a = np.random.default_rng(1).normal(0, 2, 8)
    effects_b = np.random.default_rng(2).normal(0, 1, 5)
    resp = 5 + 2 * covar + effects_a[ga] + effects_b[gb] + rng.normal(0, 1, n)
    return pl.DataFrame({"resp": resp, "covar": covar, "ga": [f"a{v}" for v in ga], "gb": gb})


def _formula(names: dict[str, str]) -> str:
    return _REFRESH.format(**{role: display_name(c) for role, c in names.items()})


def _refresh_job(folder: Path, names: dict[str, str]) -> Path:
    formula = _formula(names)
    (folder / "data").mkdir(parents=True)
    cfg = folder / "job.toml"
    cfg.write_text(
        f'[source]\npath = "data/*.parquet"\n[model]\nformula = {json.dumps(formula)}\n'
        '[output]\npath = "out"\nkeep_runs = 2\n'
    )
    return cfg


@pytest.mark.parametrize("names", _REFRESH_NAMES, ids=lambda n: n["ga"])
def test_incremental_refresh_with_any_column_names(names: dict[str, str], tmp_path: Path) -> None:
    plain_names = {c: c for c in names}
    jobs = {
        "plain": (_refresh_job(tmp_path / "plain", plain_names), plain_names),
        "renamed": (_refresh_job(tmp_path / "renamed", names), names),
    }
    outcomes: dict[str, list[Any]] = {"plain": [], "renamed": []}
    for day in range(3):
        for label, (cfg, mapping) in jobs.items():
            _refresh_rows(day).rename(mapping).write_parquet(cfg.parent / "data" / f"{day}.parquet")
            if day == 0:
                continue  # two files before the first run, then one more
            outcomes[label].append(run(load_config(cfg)))
    first, second = outcomes["renamed"]
    assert first.manifest["refresh"]["mode"] == "full"
    assert second.manifest["refresh"]["mode"] == "incremental", second.manifest["refresh"]
    assert second.manifest["refresh"]["files_scanned"] == 1
    for got, want in zip(outcomes["renamed"], outcomes["plain"], strict=True):
        assert_same_fit(got.result, want.result, names)
    # the store's tables name no user column: the keys are k0, k1
    cfg = jobs["renamed"][0]
    record = json.loads((cfg.parent / "out" / "state" / "store.json").read_text())
    cells = pl.read_parquet(cfg.parent / "out" / "state" / record["tables"]["cells"]["file"])
    assert cells.columns[:3] == ["__file_index", "k0", "k1"]
    assert all(c.startswith("__") for c in cells.columns[3:])
    # and the refreshed fit is the fit of one scan of every file
    with open_config_source(path=str(cfg.parent / "data" / "*.parquet")) as source:
        once = fit_source(parse_formula(_formula(names)), source, "gaussian", "reml", 0.95)
    assert second.result.objective == pytest.approx(once.objective, rel=1e-10)


_COUNT_REFRESH_NAMES = [
    {"succ": "y", "trials": "t", "cat": "file", "covar": "c0", "ga": "__pooljob_file"},
    {"succ": "o", "trials": "n_used", "cat": "k0", "covar": "drop_code", "ga": "__min_0"},
    {"succ": "my col", "trials": "select", "cat": 'say "hi"', "covar": "größe 州", "ga": "b`t"},
]
_COUNT_REFRESH = "cbind({succ}, {trials} - {succ}) ~ {cat} + {covar} + (1 | {ga})"


def _count_refresh_rows(seed: int, n: int = 150) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ga, cat = rng.integers(0, 8, n), rng.integers(0, 3, n)
    covar = np.random.default_rng(5).uniform(0, 2, 8)[ga]  # constant within a group
    eta = -0.5 + 0.3 * cat + 0.4 * covar + np.random.default_rng(6).normal(0, 0.8, 8)[ga]
    trials = rng.integers(1, 25, n)
    succ = rng.binomial(trials, 1 / (1 + np.exp(-eta)))
    return pl.DataFrame(
        {"succ": succ, "trials": trials, "cat": [str(v) for v in cat], "covar": covar, "ga": ga}
    )


@pytest.mark.parametrize("names", _COUNT_REFRESH_NAMES, ids=lambda n: n["ga"])
def test_incremental_count_refresh_with_any_column_names(
    names: dict[str, str], tmp_path: Path
) -> None:
    plain_names = {c: c for c in names}
    outcomes: dict[str, list[Any]] = {"plain": [], "renamed": []}
    for label, mapping in (("plain", plain_names), ("renamed", names)):
        folder = tmp_path / label
        (folder / "data").mkdir(parents=True)
        formula = _COUNT_REFRESH.format(**{r: display_name(c) for r, c in mapping.items()})
        cfg = folder / "job.toml"
        cfg.write_text(
            f'[source]\npath = "data/*.parquet"\n[model]\nformula = {json.dumps(formula)}\n'
            'family = "binomial"\n[output]\npath = "out"\nkeep_runs = 2\n'
        )
        for day in range(3):
            _count_refresh_rows(day).rename(mapping).write_parquet(
                folder / "data" / f"{day}.parquet"
            )
            if day:
                outcomes[label].append(run(load_config(cfg)))
        record = json.loads((folder / "out" / "state" / "store.json").read_text())
        cells = pl.read_parquet(folder / "out" / "state" / record["tables"]["cells"]["file"])
        assert cells.columns[:3] == ["__file_index", "k0", "k1"]  # no user column named
        assert all(c.startswith("__") for c in cells.columns[3:])
    first, second = outcomes["renamed"]
    assert first.manifest["refresh"]["mode"] == "full"
    assert second.manifest["refresh"]["mode"] == "incremental", second.manifest["refresh"]
    assert second.manifest["refresh"]["files_scanned"] == 1
    for got, want in zip(outcomes["renamed"], outcomes["plain"], strict=True):
        assert_same_fit(got.result, want.result, names)


# --- Spark -----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
@pytest.mark.parametrize("which", ["nested", "blocked", "counts"])
def test_spark_with_any_column_names(spark: Any, which: str, tmp_path: Path) -> None:
    from pooljob.scan.spark import open_spark_source

    model = MODELS[which]
    roles = model.data.columns
    # Spark's Parquet reader takes any name; its analyser matches names ignoring case
    picked = ["v1", "select", "back`tick", 'say "hi"', "größe 州", "source", "o"]
    if which == "counts":  # the count query's own names: y, t, o, c<k>, drop_code
        picked = ["t", "y", "back`tick", "o", "drop_code"]
    names = dict(zip(roles, picked, strict=False))
    path = tmp_path / "data.parquet"
    model.frame(names).write_parquet(path)
    formula = parse_formula(model.text(names))
    method = "reml" if model.family == "gaussian" else "laplace"
    with open_spark_source(path=str(path)) as source:
        got = fit_source(formula, source, model.family, method, 0.95)
    want = plain_fit(model)
    assert got.objective == pytest.approx(want.objective, rel=1e-9)
    for table in ("estimates", "effects", "coefficients", "components"):
        assert_frame_equal(getattr(got, table), renamed(getattr(want, table), names), rel_tol=1e-9)


# --- lme4 ------------------------------------------------------------------------


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-3)


def test_grouping_named_v1_matches_lme4() -> None:
    ref = json.loads((DATA / "grouping_v1_reml.json").read_text())
    result = pooljob.fit(ref["formula"], DATA / "unequal_widths.csv")
    assert result.nobs == ref["nobs"]
    assert _close(result.objective, ref["objective"], 1e-6)
    coef = {r["term"]: r for r in result.coefficients.iter_rows(named=True)}
    for row in ref["fixef"]:
        assert _close(coef[row["term"]]["estimate"], row["estimate"], 1e-4), row
        assert _close(coef[row["term"]]["std_error"], row["std_error"], 1e-4), row
    comp = {r["grouping"]: r["variance"] for r in result.components.iter_rows(named=True)}
    assert set(comp) == {"v1", "Residual"}
    for row in ref["varcomp"]:
        assert _close(comp[row["grouping"]], row["variance_or_cov"], 1e-4), row
    effects = {r["level"]: r["estimate"] for r in result.effects.iter_rows(named=True)}
    for row in ref["ranef"]:
        assert abs(effects[row["level"]] - row["estimate"]) <= 1e-4 * (1 + abs(row["estimate"]))


def test_cbpp_with_herd_named_o_matches_glmer() -> None:
    ref = json.loads((DATA / "cbpp_binomial_tight.json").read_text())
    data = pl.read_csv(
        DATA / "cbpp.csv", schema_overrides={"herd": pl.String, "period": pl.String}
    ).rename({"herd": "o"})
    formula = ref["formula"].replace("(1 | herd)", "(1 | o)")
    result = pooljob.fit(formula, data, family="binomial")
    assert result.nobs == ref["nobs"]
    assert abs(result.loglik - ref["loglik"]) <= 1e-8 * abs(ref["loglik"])
    assert -2 * result.loglik == pytest.approx(184.0525637, abs=1e-6)
    coef = {r["term"]: r["estimate"] for r in result.coefficients.iter_rows(named=True)}
    for row in ref["fixef"]:
        assert _close(coef[row["term"]], row["estimate"], 1e-4), row
    (component,) = result.components.iter_rows(named=True)
    assert component["grouping"] == "o"
    assert _close(component["variance"], ref["varcomp"][0]["variance_or_cov"], 1e-4)
    assert result.estimates["o"].dtype == pl.String


@pytest.mark.parametrize(
    "names",
    [
        {"ga": "__row", "cat": "__level", "weight": "__group"},
        {"ga": "row", "cat": "k1", "weight": "new"},
        {"ga": "k0", "cat": "group", "weight": "level"},
    ],
    ids=lambda n: n["ga"],
)
def test_poststratification_with_any_column_names(names: dict[str, str]) -> None:
    """The population's cells are matched to the fit's levels whatever the columns are called."""
    model = MODELS["counts"]
    data = model.data.drop("shift")
    formula = "cbind({succ}, {trials} - {succ}) ~ {cat} + (1 | {ga})"
    population = pl.concat(
        [
            data.group_by("ga", "cat").agg(weight=pl.col("trials").sum()),
            pl.DataFrame({"ga": ["99"], "cat": ["2"], "weight": [40]}),  # a herd never seen
        ],
        how="vertical_relaxed",
    ).sort("ga", "cat")

    def weighted(mapping: dict[str, str]) -> pl.DataFrame:
        full = {c: mapping.get(c, c) for c in (*data.columns, "weight")}
        text = formula.format(**{role: display_name(c) for role, c in full.items()})
        fit = pooljob.fit(text, data.rename(full, strict=False), family="binomial")
        return pooljob.poststratify(
            fit, population.rename(full, strict=False), full["weight"], by=[full["ga"]], draws=50
        )

    want = weighted({})
    got = weighted(names)
    assert_frame_equal(got, want.rename({"ga": names["ga"]}), rel_tol=RTOL, abs_tol=ATOL)
