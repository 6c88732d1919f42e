"""glmer's prior weights for binomial and Poisson models (issue 12 §1).

Each row's log-likelihood is multiplied by its weight, so the per-cell sums are
``Σ w y``, ``Σ w t`` (``Σ w e^o``) and ``Σ w · const`` and the Laplace solver runs
unchanged.  References: glmer with ``weights = w`` and tight settings
(``tolPwrss = 1e-13``, bobyqa ``rhoend = 1e-10``, nAGQ = 1), made by
``tests/data/make_glmer_weights.R``: a 0/1 response with integer weights, a
``cbind`` response and a Poisson rate with non-integer weights.  Then the
invariances: integer weights are exactly rows repeated (the likelihood is the
same product), weights all 1 are exactly the unweighted fit, weight 0 drops the row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.job.cli import main
from tests.conftest import DATA, reference

CASES = [
    ("wbin01", "y ~ x + (1 | g)", "binomial"),
    ("wcbind", "cbind(s, f) ~ x + (1 | g)", "binomial"),
    ("wpois", "n ~ x + offset(log(e)) + (1 | g)", "poisson"),
]


@pytest.mark.parametrize(("name", "formula", "family"), CASES)
def test_agrees_with_glmer(name: str, formula: str, family: str) -> None:
    ref = reference(f"{name}_tight")
    fit = pooljob.fit(formula, DATA / f"{name}.csv", family=family, weights="w")  # type: ignore[arg-type]
    assert fit.nobs == ref["nobs"] and fit.weights == "w"
    assert abs(fit.loglik - ref["loglik"]) < 1e-9 * abs(ref["loglik"])
    fixef = {r["term"]: r for r in ref["fixef"]}
    for row in fit.coefficients.iter_rows(named=True):
        want = fixef[row["term"]]
        assert abs(row["estimate"] - want["estimate"]) < 1e-5 * want["std_error"], row
        assert abs(row["std_error"] - want["std_error"]) < 2e-5 * want["std_error"], row
    var = ref["varcomp"][0]["variance_or_cov"]
    assert abs(fit.components["variance"][0] - var) < 1e-5 * var
    effects = {r["level"]: r for r in ref["ranef"]}
    sd = ref["varcomp"][0]["sd_or_cor"]
    for row in fit.effects.iter_rows(named=True):
        want = effects[row["level"]]
        assert abs(row["estimate"] - want["estimate"]) < 1e-5 * sd, row
        assert abs(row["cond_sd"] - want["cond_sd"]) < 1e-5 * want["cond_sd"], row
    means = {r["level"]: r for r in ref["group_means"]}
    for row in fit.estimates.iter_rows(named=True):
        want = means[row["g"]]
        assert row["n"] == want["n"]
        assert abs(row["raw_mean"] - want["raw_mean"]) < 1e-12 * max(1.0, want["raw_mean"])
        assert abs(row["estimate"] - want["fitted_mean"]) < 1e-6 * want["fitted_mean"], row


@pytest.mark.parametrize(("name", "formula", "family"), [CASES[0], CASES[2]])
def test_integer_weights_are_repeated_rows(name: str, formula: str, family: str) -> None:
    rows = pl.read_csv(DATA / f"{name}.csv")
    if family == "poisson":
        rows = rows.head(300).with_columns(w=(pl.col("w").round(0) + 1).cast(pl.Int64))
    repeated = rows.select(pl.all().repeat_by(pl.col("w")).explode())
    fit = pooljob.fit(formula, rows, family=family, weights="w")  # type: ignore[arg-type]
    plain = pooljob.fit(formula, repeated, family=family)  # type: ignore[arg-type]
    assert fit.loglik == pytest.approx(plain.loglik, rel=1e-10)
    for table in ("coefficients", "components", "effects", "estimates"):
        a, b = getattr(fit, table), getattr(plain, table)
        for col in ("estimate", "variance", "std_error", "cond_sd"):
            if col in a.columns:
                np.testing.assert_allclose(a[col], b[col], rtol=1e-6, atol=1e-9, err_msg=table)
    assert fit.rows["used"] == rows.height and plain.rows["used"] == repeated.height


def test_ones_and_zeros(tmp_path: Path) -> None:
    rows = pl.read_csv(DATA / "wpois.csv").head(300)
    formula = "n ~ x + offset(log(e)) + (1 | g)"
    plain = pooljob.fit(formula, rows, family="poisson")
    ones = pooljob.fit(formula, rows.with_columns(w=pl.lit(1.0)), family="poisson", weights="w")
    assert ones.loglik == plain.loglik and ones.estimates.equals(plain.estimates)
    extra = rows.head(20).with_columns(w=pl.lit(0.0), n=pl.col("n") + 50)
    zero = pooljob.fit(formula, pl.concat([rows, extra]), family="poisson", weights="w")
    weighted = pooljob.fit(formula, rows, family="poisson", weights="w")
    assert zero.loglik == pytest.approx(weighted.loglik, rel=1e-12)
    assert zero.rows["dropped"]["zero_weight"] == 20 and zero.rows["read"] == 320
    # a job, refreshed incrementally: the store keeps the weighted counts
    data = tmp_path / "data"
    data.mkdir()
    rows.head(150).write_parquet(data / "a.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "data/*.parquet"\n[model]\n'
        f'formula = "{formula}"\nfamily = "poisson"\nweights = "w"\n[output]\npath = "out"\n'
    )
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 0
    pl.concat([rows.tail(150), extra]).write_parquet(data / "b.parquet")
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 0
    import json

    manifest = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    assert manifest["refresh"]["mode"] == "incremental"
    assert manifest["loglik"] == pytest.approx(zero.loglik, rel=1e-12)
    assert manifest["rows"] == zero.rows
