"""Area-level (Fay–Herriot) models: metafor references, a dense reference, simulations, errors.

References: ``tests/data/make_fh_reference.R`` (metafor 3.8 ``rma`` and
``blup``; the MSE by sae's ``mseFH`` formulas) on dat.bcg (``yi ~ ablat``,
log risk ratios) and dat.hackshaw1998 (intercept only), REML and ML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

import pooljob
from pooljob.errors import ConfigError, InputError
from pooljob.job.cli import main
from pooljob.model.area import criterion, fit_area

DATA = Path(__file__).resolve().parent / "data"
CASES = {
    "bcg": ("yi ~ ablat + (1 | trial)", "fh_bcg.csv"),
    "hackshaw": ("yi ~ 1 + (1 | study)", "fh_hackshaw.csv"),
}


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_agrees_with_metafor(name: str, method: str) -> None:
    ref = json.loads((DATA / f"fh_{name}_{method}.json").read_text())
    formula, csv = CASES[name]
    fit = pooljob.fit(formula, DATA / csv, method=method, sampling_variance="vi")
    assert fit.converged and not fit.singular
    # pooljob's criterion is never worse than metafor's (−2 logLik)
    assert fit.objective <= -2.0 * ref["loglik"] + 1e-9 * abs(ref["loglik"])
    assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-9)
    comp = fit.components
    assert comp.height == 1 and comp["grouping"][0] != "Residual"
    assert comp["variance"][0] == pytest.approx(ref["tau2"], rel=1e-6)
    coef = fit.coefficients
    assert _rel(coef["estimate"], list(ref["beta"].values())) < 1e-6
    assert _rel(coef["std_error"], list(ref["se"].values())) < 1e-6
    est = fit.estimates  # sorted by area key, as the CSV
    assert est["n"].to_list() == [1] * est.height
    assert _rel(est["raw_mean"], pl.read_csv(DATA / csv)["yi"]) < 1e-12
    assert _rel(est["estimate"], ref["pred"]) < 1e-6
    assert _rel(est["std_error"], ref["pred_se"]) < 1e-6
    assert _rel(est["rmse"], np.sqrt(ref["mse"])) < 1e-6
    assert fit.summary()["sampling_variance"] == "vi"


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_mse_terms_agree_with_mse_fh(method: str) -> None:
    ref = json.loads((DATA / f"fh_bcg_{method}.json").read_text())
    d = pl.read_csv(DATA / "fh_bcg.csv")
    x = np.column_stack([np.ones(d.height), d["ablat"].to_numpy().astype(float)])
    fit = fit_area(d["yi"].to_numpy(), d["vi"].to_numpy(), x, method)
    for term in ("g1", "g2", "g3", "mse"):
        assert _rel(getattr(fit, term), ref[term]) < 1e-6, term


def _dense_criterion(a: float, y: Any, v: Any, x: Any, reml: bool) -> float:
    """−2 log-likelihood from the dense V = diag(A + v) and the projection P."""
    n, p = x.shape
    big_v = np.diag(a + v)
    vi = np.linalg.inv(big_v)
    xtvx = x.T @ vi @ x
    proj = vi - vi @ x @ np.linalg.solve(xtvx, x.T @ vi)
    f = np.linalg.slogdet(big_v)[1] + y @ proj @ y
    if reml:
        return float(
            f
            + (n - p) * np.log(2 * np.pi)
            + np.linalg.slogdet(xtvx)[1]
            - np.linalg.slogdet(x.T @ x)[1]
        )
    return float(f + n * np.log(2 * np.pi))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_dense_reference(seed: int, method: str) -> None:
    rng = np.random.default_rng(seed)
    m = 12 + seed
    x = np.column_stack([np.ones(m), rng.normal(size=m), rng.uniform(size=m)])
    v = rng.uniform(0.2, 2.0, m)
    y = x @ np.array([1.0, -0.5, 2.0]) + rng.normal(0, 1.0, m) + rng.normal(0, np.sqrt(v))
    reml = method == "reml"
    for a in (0.0, 0.3, 1.7):
        f, g = criterion(a, y, v, x, reml)
        assert f == pytest.approx(_dense_criterion(a, y, v, x, reml), rel=1e-12)
        h = 1e-5
        dense = [_dense_criterion(a + k * h, y, v, x, reml) for k in (-1, 0, 1, 2)]
        if a > 0:
            numeric = (dense[2] - dense[0]) / (2 * h)
        else:  # one-sided at the boundary
            numeric = (-3 * dense[1] + 4 * dense[2] - dense[3]) / (2 * h)
        assert g == pytest.approx(numeric, rel=1e-5, abs=1e-6)
    fit = fit_area(y, v, x, method)
    tau2 = fit.tau2
    # the optimum: no A on a fine grid is better
    grid = np.linspace(0, 4 * max(tau2, 0.1), 401)
    assert fit.objective <= min(_dense_criterion(a, y, v, x, reml) for a in grid) + 1e-9
    # GLS, the BLUP and its prediction error from dense matrices at Â
    big_v = np.diag(tau2 + v)
    vi = np.linalg.inv(big_v)
    q = np.linalg.inv(x.T @ vi @ x)
    beta = q @ x.T @ vi @ y
    assert _rel(fit.beta, beta) < 1e-10
    blup = x @ beta + tau2 * vi @ (y - x @ beta)
    assert _rel(fit.eblup, blup) < 1e-10
    # the predictor of area i is l_iᵀy; its error l_iᵀy − x_iᵀβ − u_i has variance
    # l_iᵀVl_i − 2A l_ii + A (Cov(y, u_i) = A e_i): g1 + g2
    lmat = x @ q @ x.T @ vi + tau2 * vi @ (np.eye(m) - x @ q @ x.T @ vi)
    pev = np.einsum("ij,jk,ik->i", lmat, big_v, lmat) - 2 * tau2 * np.diag(lmat) + tau2
    assert _rel(fit.g1 + fit.g2, pev) < 1e-8


def test_zero_variance_is_singular() -> None:
    rng = np.random.default_rng(3)
    m = 30
    v = rng.uniform(1.0, 2.0, m)
    y = 5.0 + 0.1 * rng.normal(size=m)  # far less spread than the sampling variances
    fit = pooljob.fit(
        "y ~ 1 + (1 | area)",
        pl.DataFrame({"area": np.arange(m), "y": y, "v": v}),
        sampling_variance="v",
    )
    assert fit.singular and fit.converged
    assert fit.components["variance"][0] == 0.0
    est = fit.estimates
    assert np.allclose(est["estimate"], est["parent"])
    assert np.allclose(est["shrinkage"], 1.0)
    assert np.allclose(fit.effects["cond_sd"], 0.0)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_simulation_recovers_tau2_and_rmse_intervals_cover(method: str) -> None:
    """1000 areas, τ² = 1, v from 0.3 to 3: τ̂² near 1; the ±1.96 rmse intervals cover θ_i."""
    rng = np.random.default_rng(11)
    tau2, m, reps = 1.0, 1000, 20
    hits, estimates = 0, []
    for _ in range(reps):
        x = np.column_stack([np.ones(m), rng.normal(size=m)])
        v = rng.uniform(0.3, 3.0, m)
        theta = x @ np.array([2.0, 1.0]) + rng.normal(0, np.sqrt(tau2), m)
        y = theta + rng.normal(0, np.sqrt(v))
        fit = fit_area(y, v, x, method)
        estimates.append(fit.tau2)
        hits += int(np.sum(np.abs(fit.eblup - theta) <= 1.959964 * fit.rmse))
    spread = 3 * np.std(estimates) / np.sqrt(reps)  # three standard errors of the mean
    assert abs(np.mean(estimates) - tau2) < spread < 0.1
    assert 0.935 <= hits / (m * reps) <= 0.965


def _frame(v: list[float | None]) -> pl.DataFrame:
    n = len(v)
    return pl.DataFrame(
        {"area": list(range(n)), "y": [float(i % 3) for i in range(n)], "v": v},
        schema={"area": pl.Int64, "y": pl.Float64, "v": pl.Float64},
    )


@pytest.mark.parametrize("bad", [-1.0, 0.0, None, float("nan")])
def test_bad_sampling_variance_is_a_data_error(bad: float | None) -> None:
    v: list[float | None] = [1.0] * 8 + [bad, bad]
    with pytest.raises(InputError, match=r"sampling_variance column 'v'.*: 2 of 10 used rows"):
        pooljob.fit("y ~ 1 + (1 | area)", _frame(v), sampling_variance="v")


def test_each_area_once() -> None:
    frame = pl.concat([_frame([1.0] * 6), _frame([1.0] * 2)])
    with pytest.raises(InputError, match=r"each area once.*4 rows share"):
        pooljob.fit("y ~ 1 + (1 | area)", frame, sampling_variance="v")


@pytest.mark.parametrize(
    "formula",
    ["y ~ 1 + (1 | region/area)", "y ~ 1 + (1 | area) + (1 | region)", "y ~ 1 + (x | area)"],
)
def test_one_random_intercept_per_area(formula: str) -> None:
    with pytest.raises(ConfigError, match="exactly one random term"):
        pooljob.fit(formula, _frame([1.0] * 6), sampling_variance="v")


def test_needs_gaussian_and_numeric_covariates() -> None:
    with pytest.raises(ConfigError, match="needs family = 'gaussian'"):
        pooljob.fit("y ~ 1 + (1 | area)", _frame([1.0] * 6), "binomial", sampling_variance="v")
    frame = _frame([1.0] * 6).with_columns(kind=pl.lit("a"))
    with pytest.raises(InputError, match="categorical"):
        pooljob.fit("y ~ kind + (1 | area)", frame, sampling_variance="v")
    with pytest.raises(InputError, match="'w'"):
        pooljob.fit("y ~ 1 + (1 | area)", frame, sampling_variance="w")


def test_dropped_rows_are_counted() -> None:
    frame = _frame([1.0] * 10).with_columns(
        y=pl.when(pl.col("area") == 0).then(None).otherwise(pl.col("y"))
    )
    fit = pooljob.fit("y ~ 1 + (1 | area)", frame, sampling_variance="v")
    assert fit.rows["read"] == 10 and fit.rows["used"] == 9
    assert fit.rows["dropped"]["null_response"] == 1


def _job(tmp_path: Path, variance: str = "vi", extra: str = "") -> Path:
    job = tmp_path / "fh.toml"
    job.write_text(
        f"""
[source]
path = "{DATA / "fh_bcg.csv"}"
[model]
formula = "yi ~ ablat + (1 | trial)"
sampling_variance = "{variance}"
method = "ml"
{extra}
[output]
path = "{tmp_path / "out"}"
"""
    )
    return job


def test_cli_run_validate_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(tmp_path)
    assert main(["validate", str(job)]) == 0
    assert main(["explain", str(job)]) == 0
    out = capsys.readouterr().out
    assert "area_counts" in out and "n_bad_variance" in out and 'source."vi"' in out
    assert main(["run", str(job)]) == 0
    current = tmp_path / "out" / "current"
    est = pl.read_parquet(current / "estimates.parquet")
    ref = json.loads((DATA / "fh_bcg_ml.json").read_text())
    assert _rel(est["rmse"], np.sqrt(ref["mse"])) < 1e-6
    assert pq.read_schema(current / "estimates.parquet").field("rmse").type == "double"
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["sampling_variance"] == "vi" and manifest["method"] == "ml"


def test_cli_bad_variance_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "bad.csv"
    pl.read_csv(DATA / "fh_bcg.csv").with_columns(vi=pl.col("vi") - 0.1).write_csv(csv)
    job = _job(tmp_path)
    job.write_text(job.read_text().replace(str(DATA / "fh_bcg.csv"), str(csv)))
    assert main(["run", str(job)]) == 3
    err = capsys.readouterr().err
    assert "sampling_variance column 'vi'" in err and "rows have a variance" in err


def test_config_checks_sampling_variance(tmp_path: Path) -> None:
    job = _job(tmp_path, extra='family = "poisson"').read_text().replace('method = "ml"\n', "")
    path = tmp_path / "bad.toml"
    path.write_text(job)
    with pytest.raises(ConfigError, match=r"\[model\] sampling_variance .*family = 'gaussian'"):
        from pooljob.job.config import load_config

        load_config(path)


def test_unit_level_models_publish_a_null_rmse() -> None:
    fit = pooljob.fit("Yield ~ 1 + (1 | Batch)", DATA / "Dyestuff.csv")
    assert fit.estimates["rmse"].null_count() == fit.estimates.height
    assert fit.summary()["sampling_variance"] is None
