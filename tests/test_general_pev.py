"""std_error of the general solver's estimates against Henderson's equations, dense."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob


def _data(seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = 160
    g = rng.integers(0, 9, n)
    h = rng.integers(0, 5, n)
    x = rng.normal(0, 1, n)
    y = (
        2.0
        + 0.5 * x
        + rng.normal(0, 1.0, 9)[g]
        + rng.normal(0, 0.5, 9)[g] * x
        + rng.normal(0, 0.8, 5)[h]
        + rng.normal(0, 1.0, n)
    )
    return pl.DataFrame({"g": [f"g{i}" for i in g], "h": [f"h{i}" for i in h], "x": x, "y": y})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimates_and_std_errors_equal_dense_henderson(seed: int) -> None:
    df = _data(seed)
    fit = pooljob.fit("y ~ x + (1 + x | g) + (1 | h)", df)
    comp = {
        (r["grouping"], r["term1"], r["term2"]): r["variance"] for r in fit.components.to_dicts()
    }
    s2 = comp[("Residual", None, None)]
    cov_g = np.array(
        [
            [comp[("g", "(Intercept)", None)], comp[("g", "(Intercept)", "x")]],
            [comp[("g", "(Intercept)", "x")], comp[("g", "x", None)]],
        ]
    )
    var_h = comp[("h", "(Intercept)", None)]
    g_levels = sorted(df["g"].unique())
    h_levels = sorted(df["h"].unique())
    n = df.height
    x = df["x"].to_numpy()
    gi = np.array([g_levels.index(v) for v in df["g"]])
    hi = np.array([h_levels.index(v) for v in df["h"]])
    big_x = np.column_stack([np.ones(n), x])
    z = np.zeros((n, 2 * len(g_levels) + len(h_levels)))
    z[np.arange(n), 2 * gi] = 1.0
    z[np.arange(n), 2 * gi + 1] = x
    z[np.arange(n), 2 * len(g_levels) + hi] = 1.0
    g_cov = np.zeros((z.shape[1], z.shape[1]))
    for k in range(len(g_levels)):
        g_cov[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = cov_g
    for k in range(len(h_levels)):
        j = 2 * len(g_levels) + k
        g_cov[j, j] = var_h
    # Henderson: C = [[X'X, X'Z], [Z'X, Z'Z + σ² G⁻¹]]; PEV(a) = σ² a' C⁻¹ a
    c = np.block(
        [[big_x.T @ big_x, big_x.T @ z], [z.T @ big_x, z.T @ z + s2 * np.linalg.inv(g_cov)]]
    )
    rhs = np.concatenate([big_x.T @ df["y"].to_numpy(), z.T @ df["y"].to_numpy()])
    sol = np.linalg.solve(c, rhs)
    cinv = np.linalg.inv(c)
    design = np.hstack([big_x, z])
    fitted = design @ sol
    for name, codes, levels in (("g", gi, g_levels), ("h", hi, h_levels)):
        est = fit.estimates.filter(pl.col("grouping") == name)
        for row in est.iter_rows(named=True):
            mask = codes == levels.index(row[name])
            a = design[mask].mean(axis=0)
            assert row["n"] == mask.sum()
            assert row["estimate"] == pytest.approx(fitted[mask].mean(), rel=1e-6)
            assert row["std_error"] == pytest.approx(np.sqrt(s2 * a @ cinv @ a), rel=1e-6)
