"""Models without random terms are plain least squares (R's lm)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob


def test_no_key_column_is_ordinary_least_squares() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    df = pl.DataFrame({"x": x, "y": 1 + 2 * x + rng.normal(size=60)})
    fit = pooljob.fit("y ~ x", df)
    design = np.column_stack([np.ones(60), x])
    beta, rss, *_ = np.linalg.lstsq(design, df["y"].to_numpy(), rcond=None)
    sigma2 = float(rss[0]) / (60 - 2)
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
    np.testing.assert_allclose(fit.coefficients["estimate"], beta, rtol=1e-10)
    np.testing.assert_allclose(fit.coefficients["std_error"], se, rtol=1e-10)
    assert fit.components["variance"][0] == pytest.approx(sigma2, rel=1e-10)
    assert fit.estimates.height == 0


def test_no_pooling_model_gives_the_group_means() -> None:
    df = pl.DataFrame({"state": ["DC", "MD", "MD", "VA", "VA", "VA"], "y": [9.0, 1, 3, 4, 5, 9]})
    fit = pooljob.fit("y ~ state - 1", df)
    assert fit.coefficients["term"].to_list() == ["stateDC", "stateMD", "stateVA"]
    np.testing.assert_allclose(fit.coefficients["estimate"], [9.0, 2.0, 6.0], rtol=1e-12)
