"""The fast tree solver against dense matrices on small random nested designs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.model.formula import parse_formula
from pooljob.model.nested import objective
from pooljob.scan.source import open_data
from pooljob.scan.tree import compute
from tests import dense


def nested_data(seed: int, depth: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(int(rng.integers(2, 5))):
        ea = rng.normal(0, 1.5)
        for b in range(int(rng.integers(1, 4))):
            eb = rng.normal(0, 1.0)
            for c in range(int(rng.integers(1, 4)) if depth == 3 else 1):
                ec = rng.normal(0, 0.7) if depth == 3 else 0.0
                for _ in range(int(rng.integers(1, 6))):
                    rows.append((f"a{a}", f"b{b}", c, 10 + ea + eb + ec + rng.normal()))
    return pl.DataFrame(rows, schema=["a", "b", "c", "y"], orient="row")


FORMULAS = {2: "y ~ 1 + (1 | a/b)", 3: "y ~ 1 + (1 | a/b/c)"}


def design(df: pl.DataFrame, fit: pooljob.FitResult) -> list[np.ndarray]:
    zs = []
    for g in fit.hierarchy:
        codes = df.select(pl.struct(list(g.columns)).rank("dense")).to_series().to_numpy() - 1
        zs.append(dense.indicators(codes.astype(int)))
    return zs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_criterion_equals_dense_at_any_theta(seed: int, depth: int, method: str) -> None:
    df = nested_data(seed, depth)
    formula = parse_formula(FORMULAS[depth])
    with open_data(df) as src:
        gs = compute(src, formula)
    y = df["y"].to_numpy() - gs.shift
    fit = pooljob.fit(FORMULAS[depth], df, method=method)
    zs = design(df, fit)
    rng = np.random.default_rng(seed + 100)
    for theta in [np.zeros(depth), np.ones(depth), rng.uniform(0, 3, depth)]:
        fast = objective(gs.stats, theta, method == "reml")
        slow = dense.criterion(y, zs, theta**2, method == "reml")
        assert fast == pytest.approx(slow, rel=1e-10)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("depth", [2, 3])
def test_fit_equals_dense_henderson(seed: int, depth: int) -> None:
    df = nested_data(seed, depth)
    fit = pooljob.fit(FORMULAS[depth], df)
    zs = design(df, fit)
    y = df["y"].to_numpy()
    comp = {r["grouping"]: r["variance"] for r in fit.components.to_dicts()}
    sigma2 = comp["Residual"]
    r = np.array([comp[g.name] / sigma2 for g in fit.hierarchy])
    if np.any(r < 1e-8):
        pytest.skip("boundary fit: Henderson's equations need every variance > 0")
    beta, b, cinv = dense.henderson(y, zs, r, sigma2)
    assert fit.coefficients["estimate"][0] == pytest.approx(beta, rel=1e-8)
    assert fit.coefficients["std_error"][0] == pytest.approx(np.sqrt(cinv[0, 0]), rel=1e-7)
    cv = dense.cond_var(zs, r, sigma2, len(y))
    offsets = np.cumsum([0] + [z.shape[1] for z in zs])
    index = []  # per level: key tuple -> column of Z
    for g in fit.hierarchy:
        codes = df.select(pl.struct(list(g.columns)).rank("dense")).to_series().to_numpy() - 1
        keys = df.select(list(g.columns)).rows()
        index.append({k: int(c) for k, c in zip(keys, codes, strict=True)})
    for k, g in enumerate(fit.hierarchy):
        for row in fit.effects.filter(pl.col("grouping") == g.name).iter_rows(named=True):
            j = offsets[k] + index[k][tuple(row[c] for c in g.columns)]
            assert row["estimate"] == pytest.approx(b[j], rel=1e-7, abs=1e-9)
            assert row["cond_sd"] == pytest.approx(np.sqrt(cv[j, j]), rel=1e-7)
        # a group's estimate is the mean of its rows' fitted values a'(β, b), a the
        # mean of its rows of [1 Z]; its prediction error variance a' C⁻¹ a; its
        # parent a'(β, b) without its own level's and the finer levels' effects
        z_all = np.hstack(zs)
        for row in fit.estimates.filter(pl.col("grouping") == g.name).iter_rows(named=True):
            rows = np.all([df[c].to_numpy() == row[c] for c in g.columns], axis=0)
            a = np.concatenate([[1.0], z_all[rows].mean(axis=0)])
            assert row["estimate"] == pytest.approx(a[0] * beta + a[1:] @ b, rel=1e-8)
            assert row["std_error"] == pytest.approx(np.sqrt(a @ cinv @ a), rel=1e-7)
            a[1 + offsets[k] :] = 0.0
            assert row["parent"] == pytest.approx(a[0] * beta + a[1:] @ b, rel=1e-8)
