"""Simulations: known variance components are recovered, and the intervals cover."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob

TRUE_SD = {"state": 3.0, "county:state": 2.0, "zip:(county:state)": 1.5, "Residual": 5.0}


def simulate(seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_state, n_county, n_zip = 200, 5, 4
    s = rng.normal(0, TRUE_SD["state"], n_state)
    c = rng.normal(0, TRUE_SD["county:state"], (n_state, n_county))
    z = rng.normal(0, TRUE_SD["zip:(county:state)"], (n_state, n_county, n_zip))
    truth = 40.0 + s[:, None, None] + c[:, :, None] + z
    sizes = rng.integers(1, 10, truth.shape)  # uneven groups, many of size 1-3
    idx = np.repeat(np.arange(truth.size), sizes.ravel())
    si, ci, zi = np.unravel_index(idx, truth.shape)
    y = truth.ravel()[idx] + rng.normal(0, TRUE_SD["Residual"], len(idx))
    df = pl.DataFrame({"state": si, "county": ci, "zip": zi, "y": y})
    return df, truth


@pytest.mark.parametrize("seed", [1, 2])
def test_variance_components_are_recovered(seed: int) -> None:
    df, _ = simulate(seed)
    fit = pooljob.fit("y ~ 1 + (1 | state/county/zip)", df)
    assert fit.converged and not fit.singular
    sd = dict(fit.components.select("grouping", "sd").rows())
    for name, true in TRUE_SD.items():
        assert sd[name] == pytest.approx(true, rel=0.2), name


def test_intervals_cover_the_true_group_means() -> None:
    df, truth = simulate(3)
    fit = pooljob.fit("y ~ 1 + (1 | state/county/zip)", df)
    leaf = fit.estimates.filter(pl.col("grouping") == "zip:(county:state)")
    true_mean = truth[leaf["state"].to_numpy(), leaf["county"].to_numpy(), leaf["zip"].to_numpy()]
    covered = (leaf["lower"].to_numpy() <= true_mean) & (true_mean <= leaf["upper"].to_numpy())
    assert 0.93 <= covered.mean() <= 0.97
    # partial pooling beats the raw means, most of all for small groups
    err_pooled = np.mean((leaf["estimate"].to_numpy() - true_mean) ** 2)
    err_raw = np.mean((leaf["raw_mean"].to_numpy() - true_mean) ** 2)
    assert err_pooled < 0.7 * err_raw


def test_leaf_estimate_is_the_blend_of_parent_and_raw_mean() -> None:
    """A leaf's BLUP: w · parent + (1 − w) · raw_mean with w = σ²/(σ² + n τ²).

    ``parent`` is the published column (μ̂ plus the ancestors' effects); the
    published ``shrinkage`` is lme4's condVar over τ², which also carries the
    parent's own uncertainty, so it is at least ``w``.
    """
    df, _ = simulate(4)
    fit = pooljob.fit("y ~ 1 + (1 | state/county/zip)", df)
    leaf = fit.estimates.filter(pl.col("grouping") == "zip:(county:state)")
    comp = dict(fit.components.select("grouping", "variance").rows())
    w = comp["Residual"] / (comp["Residual"] + leaf["n"] * comp["zip:(county:state)"])
    blend = w * leaf["parent"] + (1 - w) * leaf["raw_mean"]
    np.testing.assert_allclose(leaf["estimate"], blend, rtol=1e-12)
    assert (leaf["shrinkage"] >= w - 1e-12).all()
    effects = fit.effects.filter(pl.col("grouping") == "zip:(county:state)")
    joined = leaf.join(
        effects.select("state", "county", "zip", "cond_sd"), on=["state", "county", "zip"]
    )
    np.testing.assert_allclose(
        joined["shrinkage"], joined["cond_sd"] ** 2 / comp["zip:(county:state)"], rtol=1e-10
    )
