"""``[model] solver = "iterative"`` against the exact solver on data where both run.

Crossed data (300 × 100 levels, 20,000 rows, a covariate far from 0 so that
the scan centres it): the variance components agree with exact REML to
well within 1% (and within a few Monte Carlo standard errors that the
manifest reports); at the exact solver's components, β̂, its covariance and
the BLUPs agree to the stated tolerance; the lower bounds are bounds; the
manifest says what is approximate; other model classes are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import ConfigError, InputError
from pooljob.job.cli import main
from pooljob.model.crossed_fit import prepare_crossed
from pooljob.model.crossed_iterative import Equations, solve_at
from pooljob.scan.cell_moments import scan_cells
from pooljob.scan.schema import check_schema
from pooljob.scan.source import open_data

FORMULA = "y ~ x + (1 | u) + (1 | i)"


def crossed_data(
    seed: int = 1, n: int = 20_000, users: int = 300, items: int = 100
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    i = rng.zipf(1.5, n) % items  # skewed popularity
    x = rng.normal(size=n)
    y = 1000.0 + 0.5 * x + rng.normal(0, 1.0, users)[u] + rng.normal(0, 0.7, items)[i]
    y = y + rng.normal(0, 1.5, n)
    return pl.DataFrame({"y": y, "x": x + 50.0, "u": u, "i": [f"m{k}" for k in i]})


@pytest.fixture(scope="module")
def data() -> pl.DataFrame:
    return crossed_data()


@pytest.fixture(scope="module")
def fits(data: pl.DataFrame) -> dict[str, Any]:
    return {
        "exact": pooljob.fit(FORMULA, data),
        "iterative": pooljob.fit(FORMULA, data, solver="iterative"),
    }


def _variances(fit: Any) -> dict[str, float]:
    return {r["grouping"]: r["variance"] for r in fit.components.to_dicts()}


def test_components_agree_with_exact_reml_within_their_monte_carlo_error(fits: dict) -> None:
    exact, it = _variances(fits["exact"]), _variances(fits["iterative"])
    mc = {c["grouping"]: c["mc_se"] for c in fits["iterative"].approximation["components"]}
    for name, value in exact.items():
        assert abs(it[name] / value - 1.0) < 0.002, name  # 7e-4, 8e-5, 1e-5 here
        # the exact solver stops at its gradient tolerance (here max |gradient| 0.048
        # on a criterion of 74,000): its components are good to about 1e-4
        assert abs(it[name] - value) < 4.0 * mc[name] + 2e-4 * value, name
    assert fits["iterative"].converged


def test_beta_blups_and_vcov_at_the_exact_components_to_the_stated_tolerance(
    data: pl.DataFrame, fits: dict
) -> None:
    exact = fits["exact"]
    with open_data(data) as source:
        spec = check_schema(source, pooljob.model.formula.parse_formula(FORMULA), "gaussian")
        cells = scan_cells(source, spec.keys, spec.variables)
    prep = prepare_crossed(pooljob.model.formula.parse_formula(FORMULA), cells, spec.numeric)
    v = _variances(exact)
    names = [prep.design.blocks[d].grouping.name for d in prep.order]
    beta, vcov, u, residual, _ = solve_at(
        Equations(prep.crossed), v["Residual"], np.array([v[n] for n in names])
    )
    assert residual < 1e-10
    # centred covariate: the slope is unchanged, the intercept moves by −50·slope − shift
    slope = exact.coefficients.filter(pl.col("term") == "x")
    assert beta[1] == pytest.approx(slope["estimate"][0], rel=1e-8)
    assert np.sqrt(vcov[1, 1]) == pytest.approx(slope["std_error"][0], rel=1e-7)
    for j, name in enumerate(names):
        d = prep.order[j]
        keys = prep.cells.keys.select(prep.design.blocks[d].grouping.columns)
        first = np.zeros(len(u[j]), dtype=np.int64)
        first[prep.codes[d][::-1]] = np.arange(len(prep.codes[d]))[::-1]
        level = keys[first].to_series().cast(pl.String)
        mine = pl.DataFrame({"level": level, "mine": u[j]})
        theirs = exact.effects.filter(pl.col("grouping") == name).join(mine, on="level")
        assert theirs.height == len(u[j])
        scale = float(theirs["estimate"].abs().max())
        assert float((theirs["estimate"] - theirs["mine"]).abs().max()) < 1e-7 * scale


def test_fixed_effects_and_estimates_agree_closely(fits: dict) -> None:
    ex, it = fits["exact"], fits["iterative"]
    a, b = ex.coefficients["estimate"].to_numpy(), it.coefficients["estimate"].to_numpy()
    assert np.allclose(a, b, rtol=1e-6)
    keys = ["grouping", "u", "i"]
    e = ex.estimates.join(it.estimates, on=keys, suffix="_it", nulls_equal=True)
    assert e.height == ex.estimates.height
    assert (e["n"] == e["n_it"]).all() and np.allclose(e["raw_mean"], e["raw_mean_it"])
    assert np.allclose(e["estimate"], e["estimate_it"], rtol=0, atol=1e-3)
    # the lower bounds: σ/√(n + σ²/σ_k²) ≤ the exact conditional sd and prediction error
    assert (e["std_error_it"] <= e["std_error"] * (1 + 1e-6)).all()
    assert (e["std_error_it"] >= 0.99 * e["std_error"]).all()  # 0.997 or more here
    f = ex.effects.join(it.effects, on=["grouping", "level", "term"], suffix="_it")
    assert (f["cond_sd_it"] <= f["cond_sd"] * (1 + 1e-6)).all()


def test_the_result_says_what_is_approximate(fits: dict) -> None:
    it, ex = fits["iterative"], fits["exact"]
    assert ex.approximation is None and ex.summary()["approximation"] is None
    approx = it.summary()["approximation"]
    assert approx["solver"] == "iterative" and approx["probes"] >= 16
    assert approx["solve_residual"] < approx["solve_tolerance"] * 10
    assert {c["grouping"] for c in approx["components"]} == {"Residual", "u", "i"}
    assert "effects.cond_sd" in approx["approximate"]
    assert np.isnan(it.objective)


def test_a_job_publishes_the_approximation_in_the_manifest(tmp_path: Path) -> None:
    from tests.test_schema import validate_manifest

    (tmp_path / "data").mkdir()
    crossed_data(n=3000, users=60, items=30).write_parquet(tmp_path / "data" / "a.parquet")
    cfg = tmp_path / "job.toml"
    cfg.write_text(
        '[source]\npath = "data/*.parquet"\n[model]\n'
        f'formula = "{FORMULA}"\nsolver = "iterative"\n[output]\npath = "out"\n'
    )
    assert main(["validate", str(cfg)]) == 0
    assert main(["explain", str(cfg)]) == 0
    assert main(["--quiet", "run", str(cfg)]) == 0
    manifest = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["approximation"]["solver"] == "iterative"
    assert manifest["objective"] is None and manifest["config"]["model"]["solver"] == "iterative"


@pytest.mark.parametrize(
    ("formula", "kwargs", "match"),
    [
        ("y ~ x + (1 + x | u) + (1 | i)", {}, "random slopes \\(u\\)"),
        ("y ~ i + (1 | u)", {}, "categorical"),
        (FORMULA, {"method": "ml"}, "gaussian REML"),
    ],
)
def test_other_model_classes_are_refused(formula: str, kwargs: dict, match: str) -> None:
    small = crossed_data(n=400, users=20, items=10)
    with pytest.raises((InputError, ConfigError), match=match):
        pooljob.fit(formula, small, solver="iterative", **kwargs)


def test_bad_solver_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="solver = 'fast' is not supported"):
        pooljob.fit(FORMULA, crossed_data(n=100), solver="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="gaussian REML models only"):
        pooljob.fit("y ~ (1 | u)", crossed_data(n=100), family="poisson", solver="iterative")
    cfg = tmp_path / "job.toml"
    cfg.write_text(
        '[source]\npath = "d.parquet"\n[model]\nformula = "y ~ (1 | u)"\nsolver = "iterative"\n'
        '[output]\npath = "out"\n[predict]\npath = "cells.parquet"\n'
    )
    assert main(["validate", str(cfg)]) == 2
    cfg.write_text(
        '[source]\npath = "d.parquet"\n[model]\nformula = "y ~ (x | u)"\nsolver = "iterative"\n'
        '[output]\npath = "out"\n'
    )
    assert main(["validate", str(cfg)]) == 2  # random slopes: refused before any scan


def test_the_exact_solvers_refusal_points_to_the_iterative_solver() -> None:
    n = 52_000
    k = np.arange(n)
    df = pl.DataFrame(
        {"y": np.sin(k * 0.37) + np.cos(k * 0.11), "u": k // 2, "i": (k * 7) // 2 % 25_001}
    )
    with pytest.raises(InputError, match='solver = "iterative"'):
        pooljob.fit("y ~ (1 | u) + (1 | i)", df)


def test_a_component_at_the_boundary_is_zero_as_in_the_exact_fit() -> None:
    # u:i has no variance of its own here: exact REML puts it at 0 (a singular fit)
    small = crossed_data(n=3000, users=60, items=30)
    formula = "y ~ 1 + (1 | u) + (1 | i) + (1 | u:i)"
    exact, it = pooljob.fit(formula, small), pooljob.fit(formula, small, solver="iterative")
    ve, vi = _variances(exact), _variances(it)
    assert ve["u:i"] == 0.0 and vi["u:i"] == 0.0 and it.singular and it.converged
    for name in ("u", "i", "Residual"):
        assert vi[name] == pytest.approx(ve[name], rel=2e-3), name
    assert (it.effects.filter(pl.col("grouping") == "u:i")["estimate"] == 0.0).all()


def test_iterative_refuses_weights_and_prasad_rao() -> None:
    from pooljob.model.formula import parse_formula
    from pooljob.model.options import check_solver

    formula = parse_formula("y ~ x + (1 | u) + (1 | i)")
    (weighted,) = check_solver("iterative", "gaussian", "reml", formula, "w")
    assert "unweighted" in weighted and "'w'" in weighted
    (intervals,) = check_solver("iterative", "gaussian", "reml", formula, None, "prasad-rao")
    assert "prasad-rao" in intervals
    assert check_solver("exact", "gaussian", "reml", formula, "w", "prasad-rao") == []
