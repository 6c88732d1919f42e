"""Scoring new cells: ``fit.predict`` and ``[predict]`` (predictions.parquet).

A prediction is a poststratification with weight 1 and every row its own
group: for a seen cell it equals poststratify's estimate of that cell;
an unseen level is predicted at its prior mean 0 and (Gaussian) its
std_error² grows by exactly that grouping's prior variance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from test_gauss_mrp import NESTED, fit_with, nested_rows
from test_mrp import STATES, world

import pooljob
from pooljob.errors import ConfigError, InputError, MissingColumnError

NUMBERS = ["estimate", "std_error", "lower", "upper"]
SCHEMA = {k: pl.String for k in "abc"}


@pytest.fixture(scope="module")
def gauss() -> tuple[pl.DataFrame, pooljob.FitResult]:
    rows = nested_rows()
    return rows, fit_with(NESTED, rows, "auto")


def test_gaussian_predictions_are_poststratify_by_every_key(
    gauss: tuple[pl.DataFrame, pooljob.FitResult],
) -> None:
    rows, fit = gauss
    cells = rows.select("c", "b", "a").unique(maintain_order=True).reverse()
    out = fit.predict(cells)
    assert out.columns == ["a", "b", "c", *NUMBERS, "unseen"]
    assert out.select("a", "b", "c").equals(cells.select("a", "b", "c"))
    assert out["unseen"].null_count() == out.height
    post = pooljob.poststratify(fit, cells.with_columns(n=pl.lit(1.0)), "n", ["a", "b", "c"])
    joined = out.join(post, on=["a", "b", "c"], how="left", maintain_order="left")
    for name in NUMBERS:
        np.testing.assert_allclose(joined[name], joined[f"{name}_right"], rtol=1e-12)
    # the fitted cell mean: the intercept plus the three effects of the cell's path
    e = fit.effects
    beta = float(fit.coefficients["estimate"][0])
    first = out.row(0, named=True)

    def effect(grouping: str, **key: str) -> float:
        sel = e.filter(pl.col("grouping") == grouping)
        for k, v in key.items():
            sel = sel.filter(pl.col(k) == v)
        return float(sel["estimate"][0])

    a, b, c = first["a"], first["b"], first["c"]
    expect = beta + effect("a", a=a) + effect("a:b", a=a, b=b) + effect("a:b:c", a=a, b=b, c=c)
    assert first["estimate"] == pytest.approx(expect, rel=1e-10)


def test_blocked_solver_gives_the_same_predictions(
    gauss: tuple[pl.DataFrame, pooljob.FitResult],
) -> None:
    rows, tree = gauss
    blocked = fit_with(NESTED, rows, "blocked")
    cells = pl.DataFrame(
        {"a": ["A0", "A1", "A9"], "b": ["b0", "b0", "b0"], "c": ["c0", "c0", "c0"]}
    )
    x, y = tree.predict(cells), blocked.predict(cells)
    for name in NUMBERS:
        np.testing.assert_allclose(x[name], y[name], rtol=1e-7)
    assert x["unseen"].to_list() == y["unseen"].to_list()


def test_unseen_levels_add_exactly_their_prior_variance(
    gauss: tuple[pl.DataFrame, pooljob.FitResult],
) -> None:
    rows, fit = gauss
    seen = rows.row(0, named=True)
    a, b = seen["a"], seen["b"]
    cells = pl.DataFrame(
        {
            "a": [a, a, a, "A9"],
            "b": [b, b, "b7", "b7"],
            "c": [seen["c"], "c9", "c9", "c9"],
        }
    )
    out = fit.predict(cells)
    assert out["unseen"].to_list() == [None, "a:b:c", "a:b, a:b:c", "a, a:b, a:b:c"]
    var = {r["grouping"]: r["variance"] for r in fit.components.iter_rows(named=True)}
    pred = fit.predictor
    assert pred is not None
    # row 1: (a, b) seen, c unseen: estimate β̂ + û_a + û_ab (the c group's `parent`)
    group = fit.estimates.filter(
        (pl.col("grouping") == "a:b:c") & (pl.col("a") == a) & (pl.col("b") == b)
    ).filter(pl.col("c") == seen["c"])
    assert out["estimate"][1] == pytest.approx(float(group["parent"][0]), rel=1e-10)
    # its variance: Var(β̂ + û_a + û_ab) from Henderson's inverse, plus τ²_c exactly
    a_random = []
    for d, block in enumerate(pred.design.blocks):
        levels = pred.levels[d].with_row_index("i")
        for col in block.grouping.columns:
            levels = levels.filter(pl.col(col) == seen[col])
        vec = np.zeros((pred.levels[d].height, 1))
        if block.grouping.name != "a:b:c":
            vec[int(levels["i"][0]), 0] = 1.0
        a_random.append(sp.csr_matrix(vec))
    assert pred.variance is not None
    seen_part = float(pred.variance(np.ones((1, 1)), a_random)[0])
    se = out["std_error"].to_numpy()
    assert se[1] ** 2 == pytest.approx(seen_part + var["a:b:c"], rel=1e-10)
    # everything unseen: only β̂ is known, variance Var(β̂) + τ²_a + τ²_ab + τ²_abc
    beta_se = float(fit.coefficients["std_error"][0])
    total = beta_se**2 + var["a"] + var["a:b"] + var["a:b:c"]
    assert se[3] ** 2 == pytest.approx(total, rel=1e-9)
    assert out["estimate"][3] == pytest.approx(float(fit.coefficients["estimate"][0]), rel=1e-12)
    assert se[0] < se[1] < se[2] < se[3]


def test_binomial_predictions_by_draws(tmp_path: Path) -> None:
    pop, poll = world(n=4000)
    fit = pooljob.fit("vote ~ sex + (1 | state) + (1 | age)", poll, family="binomial")
    cells = pop.select("state", "age", "sex").head(30)
    cells = pl.concat(
        [
            cells,
            pl.DataFrame({"state": ["ZZ"], "age": cells["age"][:1]}).join(
                cells.select("sex").head(1), how="cross"
            ),
        ]
    )
    out = fit.predict(cells, draws=300, seed=1)
    assert out.columns == ["state", "age", "sex", *NUMBERS, "unseen"]
    assert out.height == cells.height
    assert out["unseen"].to_list() == [None] * 30 + ["state"]
    est = out["estimate"].to_numpy()
    assert ((est > 0) & (est < 1)).all()
    assert (out["lower"] <= out["upper"]).all() and (out["std_error"] > 0).all()
    # a seen cell's estimate is the fitted probability: poststratify's, for one cell
    one = cells.head(1).with_columns(n=pl.lit(1.0))
    post = pooljob.poststratify(fit, one, "n", [], draws=300, seed=1)
    assert est[0] == pytest.approx(float(post["estimate"][0]), rel=1e-12)
    assert out.equals(fit.predict(cells, draws=300, seed=1))  # seeded
    assert out["std_error"][30] > out["std_error"].head(30).max()


def test_bad_tables_give_one_line_errors(gauss: tuple[pl.DataFrame, pooljob.FitResult]) -> None:
    _, fit = gauss
    with pytest.raises(MissingColumnError) as err:
        fit.predict(pl.DataFrame({"a": ["A0"], "b": ["b0"], "cc": ["c0"]}))
    assert "'c'" in str(err.value) and "available columns: a, b, cc" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="column 'b' has 1 null values"):
        fit.predict(
            pl.DataFrame({"a": ["A0"], "b": [None], "c": ["c0"]}, schema_overrides={"b": pl.String})
        )
    with pytest.raises(InputError, match="has no rows"):
        fit.predict(pl.DataFrame({"a": [], "b": [], "c": []}, schema=SCHEMA))


def test_job_publishes_predictions(tmp_path: Path) -> None:
    from pooljob.job.config import load_config
    from pooljob.job.run import run

    pop, poll = world(n=4000)
    poll.write_parquet(tmp_path / "poll.parquet")
    pop.drop("p").write_parquet(tmp_path / "cells.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "poll.parquet"\n'
        '[model]\nformula = "vote ~ sex + (1 | state) + (1 | age)"\nfamily = "binomial"\n'
        '[output]\npath = "out"\n'
        '[predict]\npath = "cells.parquet"\ndraws = 200\n'
    )
    outcome = run(load_config(tmp_path / "job.toml"))
    table = pl.read_parquet(outcome.run_dir / "predictions.parquet")
    assert table.height == pop.height
    assert table.columns == ["state", "age", "sex", *NUMBERS, "unseen"]
    assert table.select("state", "age", "sex").equals(pop.select("state", "age", "sex"))
    assert set(table["state"]) == set(STATES)
    manifest = json.loads((outcome.run_dir / "manifest.json").read_text())
    assert "predictions.parquet" in manifest["outputs"]


def test_predict_config_problems(tmp_path: Path) -> None:
    from pooljob.job.config import load_config, parse_config
    from pooljob.job.run import run

    raw = {
        "source": {"path": "x.parquet"},
        "model": {"formula": "y ~ 1 + (1 | g)"},
        "output": {"path": "out"},
        "predict": {"draws": 5, "seed": -1, "weight": "n"},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, tmp_path / "c.toml")
    text = str(err.value)
    assert "missing [predict] path" in text
    assert "[predict] draws = 5 must be between 100 and 100000" in text
    assert "[predict] seed = -1 must be >= 0" in text
    assert "weight" in text  # unknown key
    config = parse_config({**raw, "predict": {"path": "cells.parquet"}}, tmp_path / "c.toml")
    assert config.predict is not None
    assert config.predict.path == str(tmp_path / "cells.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "missing-source.parquet"\n'
        '[model]\nformula = "y ~ 1 + (1 | g)"\n[output]\npath = "out"\n'
        '[predict]\npath = "cells.parquet"\n'
    )
    with pytest.raises(InputError, match=r"table to predict .*cells.parquet.* does not exist"):
        run(load_config(tmp_path / "job.toml"))  # before the scan: the source is missing too


def test_cli_predict_publishes_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pooljob.job.cli import main
    from tests.helpers import write_config, write_rows

    write_rows(tmp_path / "data" / "part-0.parquet")
    job = write_config(tmp_path)
    assert main(["predict", str(job)]) == 2  # no [predict] section: a one-line config error
    err = capsys.readouterr().err.strip()
    assert "has no [predict] section" in err and "\n" not in err
    cells = pl.DataFrame({"store": [3, 3, 99], "region": ["west", "east", "north"]})
    cells.write_parquet(tmp_path / "cells.parquet")
    with job.open("a") as f:
        f.write('[predict]\npath = "cells.parquet"\n')
    assert main(["predict", str(job)]) == 0
    out = capsys.readouterr().out
    assert "predictions: 3 cells, 2 with levels the sample never saw" in out
    table = pl.read_parquet(tmp_path / "out" / "current" / "predictions.parquet")
    assert table.columns == ["region", "store", *NUMBERS, "unseen"]
    assert table["store"].to_list() == [3, 3, 99]  # the table's order, the sample's type
    assert table["unseen"].to_list() == [None, "store:region", "region, store:region"]
    current = tmp_path / "out" / "current"
    assert "predictions.parquet" in json.loads((current / "manifest.json").read_text())["outputs"]


def test_poisson_predicts_a_rate_per_unit_of_exposure() -> None:
    rng = np.random.default_rng(5)
    n = 800
    herd = rng.integers(0, 15, n)
    exposure = rng.uniform(1.0, 4.0, n)
    rate = np.exp(-1.0 + rng.normal(0, 0.5, 15))[herd]
    rows = pl.DataFrame({"herd": herd, "exposure": exposure, "cases": rng.poisson(rate * exposure)})
    fit = pooljob.fit("cases ~ 1 + (1 | herd) + offset(log(exposure))", rows, family="poisson")
    cells = pl.DataFrame({"herd": [0, 99]})
    out = fit.predict(cells, draws=400)
    assert out.columns == ["herd", *NUMBERS, "unseen"]
    assert out["unseen"].to_list() == [None, "herd"]
    u0 = float(fit.effects.filter(pl.col("herd") == 0)["estimate"][0])
    beta = float(fit.coefficients["estimate"][0])
    assert out["estimate"].to_list() == pytest.approx([np.exp(beta + u0), np.exp(beta)])


def test_a_key_column_named_unseen_is_published_as_unseen_key() -> None:
    rows = nested_rows().rename({"a": "unseen"})
    fit = pooljob.fit("y ~ 1 + (1 | unseen)", rows)
    out = fit.predict(pl.DataFrame({"unseen": ["A0", "A9"]}))
    assert out.columns == ["unseen_key", *NUMBERS, "unseen"]
    assert out["unseen"].to_list() == [None, "unseen"]
    assert "unseen_key" in fit.estimates.columns
