"""One meaning for every number of ``estimates.parquet``, whichever solver fitted it.

The nested tree solver and the blocked solver must publish identical tables for
every model both can fit; both must match a dense reference of the four
definitions (docs/outputs.md) and lme4's own numbers (``Pastes_contract_reml``:
group means of ``fitted(m)`` and their prediction errors from Henderson's
equations, made in R by ``tests/data/make_lme4_contract.R``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pooljob.model.formula import parse_formula
from pooljob.outputs.tables import FitResult
from pooljob.pipeline import fit_source
from pooljob.scan.source import open_data
from tests.dense_contract import reference

DATA = Path(__file__).parent / "data"
NUMBERS = ["n", "raw_mean", "estimate", "parent", "std_error", "lower", "upper", "shrinkage"]


def fit_with(formula: str, data: Any, solver: str, method: str = "reml") -> FitResult:
    with open_data(data) as source:
        return fit_source(parse_formula(formula), source, "gaussian", method, 0.95, solver=solver)


def nested_rows(seed: int = 3) -> pl.DataFrame:
    """An uneven three-level tree: some parents with one child, groups of one row."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(5):
        ea = rng.normal(0, 2.0)
        for b in range(int(rng.integers(1, 4))):
            eb = rng.normal(0, 1.0)
            for c in range(int(rng.integers(1, 4))):
                ec = rng.normal(0, 0.7)
                for _ in range(int(rng.integers(1, 6))):
                    x = float(rng.normal())
                    y = 10 + 0.5 * x + ea + eb + ec + rng.normal(0, 1.0)
                    rows.append({"a": f"A{a}", "b": f"b{b}", "c": f"c{c}", "x": x, "y": y})
    return pl.DataFrame(rows)


def crossed_rows(seed: int = 5) -> pl.DataFrame:
    """Two crossed groupings with real effects, uneven cells, a covariate."""
    rng = np.random.default_rng(seed)
    e1, e2 = rng.normal(0, 1.5, 7), rng.normal(0, 1.0, 5)
    rows = []
    for _ in range(90):
        i, j = int(rng.integers(7)), int(rng.integers(5))
        x = float(rng.normal())
        y = 3 + 0.8 * x + e1[i] + e2[j] + rng.normal(0, 1.0)
        rows.append({"a": f"a{i}", "c": f"c{j}", "x": x, "y": y})
    return pl.DataFrame(rows)


TREE_MODELS = [
    ("strength ~ 1 + (1 | batch/cask)", DATA / "Pastes.csv"),
    ("Yield ~ 1 + (1 | Batch)", DATA / "Dyestuff.csv"),
    ("Yield ~ 1 + (1 | Batch)", DATA / "Dyestuff2.csv"),  # singular: θ = 0
    ("income ~ 1 + (1 | state/county/zip)", DATA / "income3.csv"),
    ("y ~ 1 + (1 | a/b/c)", "nested"),
]


def _sorted(frame: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return frame.sort(by, nulls_last=True)


def assert_frames_close(left: pl.DataFrame, right: pl.DataFrame, numbers: list[str]) -> None:
    assert left.columns == right.columns
    assert left.schema == right.schema
    for name in left.columns:
        if name in numbers:
            a = left[name].to_numpy().astype(float)
            b = right[name].to_numpy().astype(float)
            assert np.array_equal(np.isnan(a), np.isnan(b)), name
            scale = max(1.0, float(np.nanmax(np.abs(b))) if len(b) else 1.0)
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8 * scale, err_msg=name)
        else:
            assert left[name].to_list() == right[name].to_list(), name


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize(("formula", "data"), TREE_MODELS)
def test_tree_and_blocked_solvers_publish_the_same_tables(
    formula: str, data: Any, method: str
) -> None:
    if data == "nested":
        data = nested_rows()
    tree = fit_with(formula, data, "auto", method)
    blocked = fit_with(formula, data, "blocked", method)
    assert tree.nested and not blocked.nested
    keys = [c for c in tree.estimates.columns if c not in ["grouping", *NUMBERS]]
    assert_frames_close(
        _sorted(tree.estimates, ["grouping", *keys]),
        _sorted(blocked.estimates, ["grouping", *keys]),
        NUMBERS,
    )
    assert_frames_close(
        _sorted(tree.effects, ["grouping", "level", "term"]),
        _sorted(blocked.effects, ["grouping", "level", "term"]),
        ["estimate", "cond_sd"],
    )
    assert_frames_close(tree.coefficients, blocked.coefficients, ["estimate", "std_error"])
    assert_frames_close(
        _sorted(tree.components, ["grouping", "term1"]),
        _sorted(blocked.components, ["grouping", "term1"]),
        ["variance", "sd"],
    )
    assert tree.objective == pytest.approx(blocked.objective, rel=1e-10)


@pytest.mark.parametrize("solver", ["auto", "blocked"])
def test_pastes_group_means_match_lme4(solver: str) -> None:
    golden = json.loads((DATA / "Pastes_contract_reml.json").read_text())
    fit = fit_with(golden["formula"], DATA / "Pastes.csv", solver)
    est = fit.estimates.with_columns(
        pl.when(pl.col("grouping") == "batch")
        .then(pl.col("batch"))
        .otherwise(pl.concat_str(["cask", "batch"], separator=":"))
        .alias("level")
    )
    for row in golden["group_means"]:
        got = est.filter(
            (pl.col("grouping") == row["grouping"]) & (pl.col("level") == row["level"])
        )
        assert got.height == 1
        assert got["n"][0] == row["n"]
        assert got["raw_mean"][0] == pytest.approx(row["raw_mean"], rel=1e-12)
        assert got["estimate"][0] == pytest.approx(row["estimate"], rel=1e-7)
        assert got["std_error"][0] == pytest.approx(row["std_error"], rel=1e-5)


def _check_against_dense(fit: FitResult, df: pl.DataFrame, covariates: list[str]) -> None:
    comps = {r["grouping"]: r["variance"] for r in fit.components.iter_rows(named=True)}
    hierarchy = [(g.name, g.columns) for g in fit.hierarchy]
    ref = reference(
        df,
        "y",
        covariates,
        [(name, cols, comps[name]) for name, cols in hierarchy],
        comps["Residual"],
    )
    seen = 0
    for row in fit.estimates.iter_rows(named=True):
        cols = dict(hierarchy)[row["grouping"]]
        want = ref[(row["grouping"], tuple(row[c] for c in cols))]
        for name in ["n", "raw_mean", "estimate", "parent", "std_error", "shrinkage"]:
            assert row[name] == pytest.approx(want[name], rel=1e-8, abs=1e-10), name
        seen += 1
    assert seen == len(ref)


@pytest.mark.parametrize(
    ("formula", "covariates", "rows"),
    [
        ("y ~ 1 + (1 | a/b/c)", [], nested_rows),  # the tree solver
        ("y ~ x + (1 | a/b)", ["x"], nested_rows),  # the blocked solver, nested
        ("y ~ x + (1 | a) + (1 | c)", ["x"], crossed_rows),  # the blocked solver, crossed
    ],
)
def test_estimates_match_a_dense_reference(formula: str, covariates: list[str], rows: Any) -> None:
    df = rows(seed=11)
    fit = fit_with(formula, df, "auto")
    assert not fit.singular
    _check_against_dense(fit, df, covariates)


def test_shrinkage_is_null_without_a_random_intercept() -> None:
    fit = fit_with("Reaction ~ Days + (0 + Days | Subject)", DATA / "sleepstudy.csv", "auto")
    assert fit.estimates["shrinkage"].null_count() == fit.estimates.height
    assert fit.estimates["shrinkage"].is_nan().sum() == 0


def test_one_way_shrinkage_is_the_textbook_weight() -> None:
    fit = fit_with("Yield ~ 1 + (1 | Batch)", DATA / "Dyestuff.csv", "auto")
    comps = {r["grouping"]: r["variance"] for r in fit.components.iter_rows(named=True)}
    s2, t2 = comps["Residual"], comps["Batch"]
    n = fit.estimates["n"].to_numpy()
    np.testing.assert_allclose(
        fit.estimates["shrinkage"].to_numpy(), s2 / (s2 + n * t2), rtol=1e-12
    )
    # and the estimate is the blend of the raw mean and the parent (the intercept)
    e = fit.estimates
    blend = e["shrinkage"] * e["parent"] + (1 - e["shrinkage"]) * e["raw_mean"]
    np.testing.assert_allclose(e["estimate"].to_numpy(), blend.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("solver", ["auto", "blocked"])
def test_key_columns_named_like_table_columns(solver: str) -> None:
    """Any grouping column name works: a clash is published with ``_key`` appended."""
    plain = pl.read_csv(DATA / "Pastes.csv")
    clashing = plain.rename({"batch": "level", "cask": "N"})
    base = fit_with("strength ~ 1 + (1 | batch/cask)", plain, solver)
    fit = fit_with("strength ~ 1 + (1 | level/N)", clashing, solver)
    assert fit.key_columns == {"level": "level_key", "N": "N_key"}
    assert fit.estimates.columns[:3] == ["grouping", "level_key", "N_key"]
    assert fit.effects.columns[:4] == ["grouping", "level", "level_key", "N_key"]
    renamed = base.estimates.rename({"batch": "level_key", "cask": "N_key"})
    assert_frames_close(fit.estimates.drop("grouping"), renamed.drop("grouping"), NUMBERS)
    assert fit.objective == pytest.approx(base.objective, rel=1e-12)


def test_key_columns_clash_in_a_count_model() -> None:
    cbpp = pl.read_csv(DATA / "cbpp.csv").rename({"herd": "estimate"})
    with open_data(cbpp) as source:
        fit = fit_source(
            parse_formula("cbind(incidence, size - incidence) ~ factor(period) + (1 | estimate)"),
            source,
            "binomial",
            "laplace",
            0.95,
        )
    assert fit.key_columns == {"estimate": "estimate_key"}
    assert fit.estimates["estimate_key"].n_unique() == 15
    assert fit.estimates["estimate"].is_between(0, 1).all()
